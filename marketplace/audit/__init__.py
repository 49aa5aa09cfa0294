"""The audit journal: hash-chained records, a Merkle tree, signed checkpoints, exports."""
