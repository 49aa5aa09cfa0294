"""RFC 9162 §2.1 Merkle trees: hashes, compact ranges, inclusion and consistency proofs.

Leaves are ``SHA-256(0x00 ‖ data)`` and interior nodes ``SHA-256(0x01 ‖ left ‖ right)``; the
tree of ``n`` leaves splits at ``k``, the largest power of two below ``n``.

Storage model: a *perfect node* ``(level, index)`` is the root of the perfect subtree over
leaves ``[index·2^level, (index+1)·2^level)``. A log that stores every perfect node as it
completes (about two per leaf) can hash any range that the RFC's recursion produces from
O(log n) of them, so roots and proofs for any size, checkpointed or not, cost O(log n) node
reads, never a rescan. :class:`CompactRange` is the streaming form: the perfect nodes covering
``[0, n)``, largest first, enough to compute the root and to keep appending.

Proof generation asks a :class:`NodeReader` for all the perfect nodes it needs in one call.
Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2, with the edge cases of the reference
implementation (transparency-dev/merkle): a consistency proof from size 0 or to a smaller
size is refused, and from a size to itself it holds only when the proof is empty and the two
roots are equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index)


class ProofError(ValueError):
    """A proof, a range or a hash does not verify; the message says which check failed."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# --- Perfect nodes and ranges -------------------------------------------------------------------


def range_nodes(start: int, end: int) -> list[Node]:
    """The perfect nodes covering leaves ``[start, end)``, left to right, each as large as the
    alignment of its start allows. For the ranges of the RFC's recursion (and for ``[0, n)``)
    they shrink from left to right, and the range's hash is their right fold."""
    if not 0 <= start <= end:
        raise ValueError(f"bad leaf range [{start}, {end})")
    nodes = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length()
        while (1 << level) > end - start:
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def compact_nodes(size: int) -> list[Node]:
    """The perfect nodes of the compact range of a tree of ``size`` leaves, largest first."""
    return range_nodes(0, size)


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root of consecutive perfect subtrees that shrink from left to right."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


class NodeReader(Protocol):
    """Where proof generation reads perfect nodes from (a database, a list of leaves)."""

    def nodes(self, wanted: Iterable[Node]) -> dict[Node, bytes]:
        """The hash of every wanted perfect node; a missing node is an error of the store."""
        ...


def _hash_ranges(reader: NodeReader, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    per_range = [range_nodes(a, b) for a, b in ranges]
    found = reader.nodes({node for nodes in per_range for node in nodes})
    return [fold([found[node] for node in nodes]) for nodes in per_range]


def root(reader: NodeReader, size: int) -> bytes:
    """The root of the tree's first ``size`` leaves."""
    return _hash_ranges(reader, [(0, size)])[0]


def _path_ranges(index: int, start: int, end: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    while end - start > 1:  # RFC 9162 §2.1.3.1 PATH, unrolled top-down, reversed at the end
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    return ranges[::-1]


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, second, first, True
    while True:  # RFC 9162 §2.1.4.1 SUBPROOF, unrolled top-down, reversed at the end
        n = end - start
        if m == n:
            if not whole:
                ranges.append((start, end))
            break
        k = _split(n)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, whole = start + k, m - k, False
    return ranges[::-1]


def inclusion_proof(reader: NodeReader, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves, bottom up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _hash_ranges(reader, _path_ranges(index, 0, size))


def consistency_proof(reader: NodeReader, first: int, second: int) -> list[bytes]:
    """The proof that the tree of ``first`` leaves is a prefix of the tree of ``second``."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first == second:
        return []
    return _hash_ranges(reader, _consistency_ranges(first, second))


# --- Streaming -----------------------------------------------------------------------------------


class CompactRange:
    """The perfect nodes covering ``[0, size)``: append leaves (or aligned subtrees), get roots.

    Memory is O(log size): the node levels are the set bits of ``size``, so only the hashes
    are kept. ``append`` returns the perfect nodes it completed, so a log can store them.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or size.bit_count() != len(hashes):
            raise ProofError(
                f"a compact range of size {size} has {max(size, 0).bit_count()} hashes, "
                f"not {len(hashes)}"
            )
        for h in hashes:
            _check_hash(h, "a compact range hash")
        self.size = size
        self._hashes = list(hashes)

    @property
    def hashes(self) -> list[bytes]:
        return list(self._hashes)

    def root(self) -> bytes:
        return fold(self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; the perfect nodes completed, as (level, index, hash), lowest first."""
        return self.append_node(0, leaf)

    def append_node(self, level: int, digest: bytes) -> list[tuple[int, int, bytes]]:
        """Add the root of a perfect subtree of ``2**level`` leaves starting at ``size``."""
        size = self.size
        if size & ((1 << level) - 1):
            raise ProofError(f"a subtree of level {level} cannot start at leaf {size}")
        index = size >> level
        done = [(level, index, digest)]
        hashes = self._hashes
        # Adding 2**level to the size carries through its set bits; each carry is a merge.
        while index & 1:
            digest = node_hash(hashes.pop(), digest)
            level += 1
            index >>= 1
            done.append((level, index, digest))
        hashes.append(digest)
        self.size = size + (1 << done[0][0])
        return done

    def append_leaf(self, leaf: bytes) -> None:
        """Add a leaf hash without reporting completed nodes (the verifier's hot loop)."""
        hashes = self._hashes
        size = self.size
        self.size = size + 1
        while size & 1:
            leaf = node_hash(hashes.pop(), leaf)
            size >>= 1
        hashes.append(leaf)

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._hashes)


# --- Verification --------------------------------------------------------------------------------


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_BYTES:
        raise ProofError(f"{what} must be {HASH_BYTES} bytes, not {len(value)}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that the audit path of leaf ``index`` leads to (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    _check_hash(leaf, "the leaf hash")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        _check_hash(p, "a proof hash")
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], expected_root: bytes
) -> None:
    """Check that leaf ``index`` with hash ``leaf`` is in the tree of ``size`` with that root."""
    if root_from_inclusion_proof(index, size, leaf, proof) != expected_root:
        raise ProofError("the inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``first`` leaves is a prefix of the tree of ``second`` leaves."""
    if first > second:
        raise ProofError(f"size {first} cannot be a prefix of the smaller size {second}")
    if first == 0:
        raise ProofError("there is no consistency proof from the empty tree")
    if first == second:
        if proof:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    _check_hash(first_root, "the first root")
    _check_hash(second_root, "the second root")
    for p in proof:
        _check_hash(p, "a proof hash")
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first root is a node of the proof
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than needed")
    if fr != first_root:
        raise ProofError("the consistency proof does not lead to the first root")
    if sr != second_root:
        raise ProofError("the consistency proof does not lead to the second root")
