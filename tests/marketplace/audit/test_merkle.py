"""The Merkle tree against RFC 9162 reference vectors, and against the RFC's recursion beyond them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from marketplace.audit import merkle
from marketplace.audit.merkle import CompactRange, ProofError

VECTORS = Path(__file__).parent / "rfc9162"


def load(name):
    return json.loads((VECTORS / name).read_text())


def h(hex_text):
    return bytes.fromhex(hex_text)


class LeafReader:
    """Perfect nodes computed from a list of leaf hashes (what the database stores)."""

    def __init__(self, leaves):
        self.levels = [list(leaves)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append(
                [merkle.node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )
        self.reads = 0

    def nodes(self, wanted):
        wanted = set(wanted)
        self.reads += len(wanted)
        return {(level, index): self.levels[level][index] for level, index in wanted}


# --- A direct transcription of RFC 9162 §2.1 (recursive), the reference for larger trees ----------


def mth(leaves):
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return merkle.node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m, leaves, whole):
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


# --- Vectors -------------------------------------------------------------------------------------

LEAVES = [h(leaf["input"]) for leaf in load("leaves.json")]
LEAF_HASHES = [h(leaf["leaf_hash"]) for leaf in load("leaves.json")]
ROOTS = {int(size): h(root) for size, root in load("roots.json").items()}


def test_leaf_node_and_empty_hashes():
    hashes = load("hashes.json")
    assert h(hashes["empty_tree_root"]) == merkle.EMPTY_ROOT
    for leaf in hashes["leaf"]:
        assert merkle.leaf_hash(h(leaf["input"])) == h(leaf["hash"])
    for node in hashes["node"]:
        assert merkle.node_hash(h(node["left"]), h(node["right"])) == h(node["hash"])
    assert [merkle.leaf_hash(data) for data in LEAVES] == LEAF_HASHES


def test_compact_ranges_and_roots_of_every_size():
    nodes = load("nodes.json")
    compact = CompactRange()
    assert compact.root() == ROOTS[0]
    completed = []
    for size, leaf in enumerate(LEAF_HASHES, start=1):
        completed.extend(compact.append(leaf))
        assert compact.root() == ROOTS[size]
        assert [c.hex() for c in compact.hashes] == nodes["compact_ranges"][str(size)]
        assert CompactRange(size, compact.hashes).root() == ROOTS[size]
    # Every perfect node was reported once, with the vector's hash.
    assert sorted((level, index) for level, index, _ in completed) == sorted(
        (level, index) for level, row in enumerate(nodes["levels"]) for index in range(len(row))
    )
    for level, index, digest in completed:
        assert digest.hex() == nodes["levels"][level][index]
    reader = LeafReader(LEAF_HASHES)
    for size in range(9):
        assert merkle.root(reader, size) == ROOTS[size]


def test_inclusion_vectors_are_generated_and_verified():
    reader = LeafReader(LEAF_HASHES)
    for vector in load("inclusion.json"):
        index, size = vector["leaf_index"], vector["tree_size"]
        proof = merkle.inclusion_proof(reader, index, size)
        assert [p.hex() for p in proof] == vector["audit_path"]
        merkle.verify_inclusion(index, size, h(vector["leaf_hash"]), proof, h(vector["root"]))


def test_consistency_vectors_are_generated_and_verified():
    reader = LeafReader(LEAF_HASHES)
    for vector in load("consistency.json"):
        first, second = vector["first"], vector["second"]
        proof = merkle.consistency_proof(reader, first, second)
        assert [p.hex() for p in proof] == vector["proof"]
        merkle.verify_consistency(
            first, second, h(vector["first_root"]), h(vector["second_root"]), proof
        )


@pytest.mark.parametrize("probe", load("inclusion_probes.json"), ids=lambda p: p["desc"])
def test_inclusion_probes(probe):
    def check():
        merkle.verify_inclusion(
            probe["leaf_index"],
            probe["tree_size"],
            h(probe["leaf_hash"]),
            [h(p) for p in probe["audit_path"]],
            h(probe["root"]),
        )

    if probe["valid"]:
        check()
    else:
        with pytest.raises(ProofError):
            check()


@pytest.mark.parametrize("probe", load("consistency_probes.json"), ids=lambda p: p["desc"])
def test_consistency_probes(probe):
    def check():
        merkle.verify_consistency(
            probe["first"],
            probe["second"],
            h(probe["first_root"]),
            h(probe["second_root"]),
            [h(p) for p in probe["proof"]],
        )

    if probe["valid"]:
        check()
    else:
        with pytest.raises(ProofError):
            check()


# --- Beyond the vectors: every size up to 40 against the recursive definition ----------------------


def test_every_proof_up_to_40_leaves_matches_the_rfc_recursion_and_verifies():
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
    reader = LeafReader(leaves)
    for size in range(1, 41):
        expected_root = mth(leaves[:size])
        assert merkle.root(reader, size) == expected_root
        for index in range(size):
            proof = merkle.inclusion_proof(reader, index, size)
            assert proof == path(index, leaves[:size])
            merkle.verify_inclusion(index, size, leaves[index], proof, expected_root)
            with pytest.raises(ProofError):
                merkle.verify_inclusion(index, size, leaves[(index + 1) % 40], proof, expected_root)
        for first in range(1, size + 1):
            proof = merkle.consistency_proof(reader, first, size)
            assert proof == subproof(first, leaves[:size], True)
            first_root = mth(leaves[:first])
            merkle.verify_consistency(first, size, first_root, expected_root, proof)
            if first < size:
                # The shift step of §2.1.4.2 (e.g. 5 -> 6) and every other path must bite.
                with pytest.raises(ProofError):
                    merkle.verify_consistency(first, size, expected_root, expected_root, proof)
                for i in range(len(proof)):
                    bad = list(proof)
                    bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(first, size, first_root, expected_root, bad)


def test_proofs_read_logarithmically_many_nodes():
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(1000)]
    reader = LeafReader(leaves)
    merkle.inclusion_proof(reader, 517, 999)
    merkle.consistency_proof(reader, 333, 999)
    merkle.root(reader, 999)
    # log2(1000) ~ 10: a handful of reads per level, never a scan of the leaves.
    assert reader.reads <= 60


def test_compact_range_appends_aligned_subtrees_and_refuses_misaligned_ones():
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(13)]
    reader = LeafReader(leaves)
    compact = CompactRange(5, [reader.levels[2][0], reader.levels[0][4]])
    compact.append(leaves[5])
    compact.append_node(1, reader.levels[1][3])
    compact.append_node(2, reader.levels[2][2])
    compact.append(leaves[12])
    assert compact.root() == mth(leaves)
    with pytest.raises(ProofError, match="cannot start"):
        compact.append_node(1, leaves[0])
    with pytest.raises(ProofError, match="has 2 hashes"):
        CompactRange(5, [leaves[0]])
    fast = CompactRange()
    for leaf in leaves:
        fast.append_leaf(leaf)
    assert fast.root() == mth(leaves) and fast.size == 13


def test_range_nodes_cover_ranges_with_aligned_perfect_nodes():
    assert merkle.range_nodes(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert merkle.range_nodes(5, 13) == [(0, 5), (1, 3), (2, 2), (0, 12)]
    assert merkle.range_nodes(7, 7) == []
