"""The journal's read side and its housekeeping: records, proofs, checkpoints, checks. No Flask.

Everything here covers sequenced records only (the tree's size is the head's size), so a
record that has committed but not yet been sequenced is simply not there yet. Proofs and roots
read O(log n) stored perfect nodes for any size, checkpointed or not.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from marketplace.audit import journal, merkle
from marketplace.audit.errors import CheckpointNotFound, RangeInvalid
from marketplace.audit.keys import AuditKeyStore
from marketplace.audit.models import ZERO_HASH_HEX
from marketplace.audit.models import checkpoints_t as _checkpoints_t
from marketplace.audit.models import nodes_t as _nodes_t
from marketplace.audit.models import pending_t as _pending_t
from marketplace.audit.models import records_t as _records_t
from marketplace.audit.tlog import Checkpoint
from marketplace.db import as_utc, utcnow
from marketplace.ledger import services as ledger
from marketplace.ledger.services.records import transactions_t as _transactions_t

NODE_QUERY_CHUNK = 500  # (level, idx) pairs per query


class DatabaseNodes:
    """Perfect nodes read from ``audit_tree_nodes`` (a :class:`merkle.NodeReader`)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def nodes(self, wanted: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
        wanted = sorted(set(wanted))
        found: dict[merkle.Node, bytes] = {}
        for start in range(0, len(wanted), NODE_QUERY_CHUNK):
            chunk = wanted[start : start + NODE_QUERY_CHUNK]
            rows = self.session.execute(
                sa.select(_nodes_t.c.level, _nodes_t.c.idx, _nodes_t.c.hash).where(
                    sa.tuple_(_nodes_t.c.level, _nodes_t.c.idx).in_(chunk)
                )
            )
            found.update({(level, idx): bytes(digest) for level, idx, digest in rows})
        missing = [node for node in wanted if node not in found]
        if missing:
            raise RuntimeError(f"the journal's tree is missing nodes {missing[:3]}")
        return found


def tree_size(session: Session) -> int:
    """The number of sequenced records."""
    head = journal.read_head(session)
    assert head is not None
    return head.size


def _check_int(name: str, value: int) -> None:
    if value < 0:
        raise RangeInvalid(f"{name} must not be negative.", code="range_negative")


def _check_within(name: str, value: int, tree: int, *, inclusive: bool = False) -> None:
    """422 ``range_beyond_tree`` when ``value`` (a size or an end, or with ``inclusive`` a last
    seq) is past the sequenced tree."""
    if value > (tree - 1 if inclusive else tree):
        raise RangeInvalid(
            f"{name} ({value}) is past the journal, which has {tree} sequenced records.",
            code="range_beyond_tree",
            extra={"tree_size": tree},
        )


def check_range(
    *, start: int, end: int, size: int, start_name: str, end_name: str, inclusive: bool = False
) -> None:
    """422 for a negative, reversed or past-the-tree range (``end`` exclusive unless told)."""
    _check_int(start_name, start)
    _check_int(end_name, end)
    if start > end:
        raise RangeInvalid(
            f"{start_name} ({start}) is after {end_name} ({end}).", code="range_reversed"
        )
    _check_within(end_name, end, size, inclusive=inclusive)


# --- Records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordView:
    seq: int
    record: dict[str, Any]
    sha256: str
    leaf_hash: str


def records(
    session: Session, *, from_seq: int, to_seq: int | None, limit: int
) -> tuple[int, list[RecordView]]:
    """Sequenced records ``from_seq..to_seq`` (inclusive), at most ``limit``; and the tree size."""
    size = tree_size(session)
    if to_seq is None:
        _check_int("from_seq", from_seq)
        if size == 0 or from_seq >= size:
            _check_within("from_seq", from_seq, size)
            return size, []
        to_seq = size - 1
    check_range(
        start=from_seq,
        end=to_seq,
        size=size,
        start_name="from_seq",
        end_name="to_seq",
        inclusive=True,
    )
    rows = session.execute(
        sa.select(_records_t.c.seq, _records_t.c.record)
        .where(_records_t.c.seq >= from_seq, _records_t.c.seq <= to_seq)
        .order_by(_records_t.c.seq)
        .limit(limit)
    ).all()
    out = []
    for seq, raw in rows:
        data = bytes(raw)
        out.append(
            RecordView(
                seq=int(seq),
                record=json.loads(data),
                sha256=hashlib.sha256(data).hexdigest(),
                leaf_hash=merkle.leaf_hash(data).hex(),
            )
        )
    return size, out


# --- Proofs -----------------------------------------------------------------------------------------


def root_at(session: Session, size: int) -> bytes:
    return merkle.root(DatabaseNodes(session), size)


def inclusion(session: Session, *, seq: int, size: int | None) -> dict[str, Any]:
    """The audit path of record ``seq`` in the tree of ``size`` (default: all sequenced)."""
    tree = tree_size(session)
    size = tree if size is None else size
    _check_int("seq", seq)
    _check_int("size", size)
    _check_within("size", size, tree)
    if seq >= size:
        raise RangeInvalid(f"seq ({seq}) is not below size ({size}).", code="range_reversed")
    reader = DatabaseNodes(session)
    proof = merkle.inclusion_proof(reader, seq, size)
    return {
        "seq": seq,
        "size": size,
        "leaf_hash": reader.nodes([(0, seq)])[(0, seq)].hex(),
        "root_hash": merkle.root(reader, size).hex(),
        "proof": [p.hex() for p in proof],
    }


def consistency(session: Session, *, first: int, second: int | None) -> dict[str, Any]:
    """The proof that the tree of ``first`` records is a prefix of the tree of ``second``."""
    tree = tree_size(session)
    second = tree if second is None else second
    _check_int("from", first)
    _check_int("to", second)
    if first > second:
        raise RangeInvalid(f"from ({first}) is after to ({second}).", code="range_reversed")
    _check_within("to", second, tree)
    if first == 0:
        raise RangeInvalid(
            "There is no consistency proof from the empty tree; every tree extends it.",
            code="range_empty",
        )
    reader = DatabaseNodes(session)
    return {
        "from": first,
        "to": second,
        "from_root": merkle.root(reader, first).hex(),
        "to_root": merkle.root(reader, second).hex(),
        "proof": [p.hex() for p in merkle.consistency_proof(reader, first, second)],
    }


# --- Checkpoints -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointView:
    size: int
    root: bytes
    note: str
    created_at: dt.datetime | None  # None: signed on request, not stored


def stored_checkpoint(session: Session, size: int) -> CheckpointView | None:
    row = (
        session.execute(sa.select(_checkpoints_t).where(_checkpoints_t.c.size == size))
        .mappings()
        .first()
    )
    if row is None:
        return None
    return CheckpointView(
        int(row["size"]), bytes(row["root"]), row["note"], as_utc(row["created_at"])
    )


def latest_checkpoint(session: Session) -> CheckpointView:
    """The newest stored checkpoint; 404 before the first one."""
    size = session.execute(sa.select(sa.func.max(_checkpoints_t.c.size))).scalar()
    found = None if size is None else stored_checkpoint(session, int(size))
    if found is None:
        raise CheckpointNotFound("No checkpoint has been made yet.")
    return found


def checkpoint_at(session: Session, keys: AuditKeyStore, size: int) -> CheckpointView:
    """The signed checkpoint of the tree at ``size``: the stored one, or one signed now.

    Every size of the one tree is consistent with every other, so signing a past size never
    contradicts an earlier checkpoint.
    """
    tree = tree_size(session)
    _check_int("size", size)
    _check_within("size", size, tree)
    stored = stored_checkpoint(session, size)
    if stored is not None:
        return stored
    root = root_at(session, size)
    note = keys.sign_note(Checkpoint(keys.origin, size, root).text())
    return CheckpointView(size, root, note, None)


def create_checkpoint(session: Session, keys: AuditKeyStore) -> CheckpointView:
    """Store a signed checkpoint of the whole sequenced tree (safe on several nodes at once)."""

    def work(s: Session) -> CheckpointView:
        head = journal.read_head(s)
        assert head is not None
        stored = stored_checkpoint(s, head.size)
        if stored is not None:
            return stored
        root = head.root()
        keys.register_current(s)
        note = keys.sign_note(Checkpoint(keys.origin, head.size, root).text())
        now = utcnow()
        try:
            with s.begin_nested():
                s.execute(
                    sa.insert(_checkpoints_t).values(
                        size=head.size,
                        root=root,
                        note=note,
                        key_hash=keys.verifier().key_hash_hex,
                        created_at=now,
                    )
                )
        except IntegrityError:
            # Another node checkpointed the same size first; its note is as good as ours.
            stored = stored_checkpoint(s, head.size)
            assert stored is not None
            return stored
        return CheckpointView(head.size, root, note, now)

    return ledger.run_in_transaction(session, work)


def checkpoint_due(
    session: Session, *, interval_records: int, interval_s: float, now: dt.datetime | None = None
) -> bool:
    """Whether new records call for a checkpoint: ``interval_records`` of them, or any new
    record and ``interval_s`` since the last checkpoint."""
    size = tree_size(session)
    last = session.execute(
        sa.select(_checkpoints_t.c.size, _checkpoints_t.c.created_at)
        .order_by(_checkpoints_t.c.size.desc())
        .limit(1)
    ).first()
    session.rollback()
    if last is None:
        return size > 0 or interval_records == 0
    last_size, last_at = int(last[0]), as_utc(last[1])
    if size <= last_size:
        return False
    if interval_records and size - last_size >= interval_records:
        return True
    return (now or utcnow()) - last_at >= dt.timedelta(seconds=interval_s)


# --- Checks ------------------------------------------------------------------------------------------


def ledger_transactions_without_record(session: Session, limit: int = 20) -> list[int]:
    """Ids of ledger transactions that have no journal record, sequenced or pending."""
    recorded = sa.select(_records_t.c.ledger_transaction_id).where(
        _records_t.c.ledger_transaction_id == _transactions_t.c.id
    )
    pending = sa.select(_pending_t.c.ledger_transaction_id).where(
        _pending_t.c.ledger_transaction_id == _transactions_t.c.id
    )
    rows = session.execute(
        sa.select(_transactions_t.c.id)
        .where(~sa.exists(recorded), ~sa.exists(pending))
        .order_by(_transactions_t.c.id)
        .limit(limit)
    ).scalars()
    return [int(r) for r in rows]


def check_journal(session: Session, *, chunk_rows: int = 10_000) -> list[str]:
    """Every problem found by replaying the chain; an empty list means the journal is sound.

    Re-derives every ``seq`` and ``prev`` link, every leaf and stored tree node, the head's
    compact range, and the root of every stored checkpoint.
    """
    problems: list[str] = []
    missing = ledger_transactions_without_record(session)
    if missing:
        problems.append(f"ledger transactions without a journal record: {missing}")
    head = journal.read_head(session)
    assert head is not None
    compact = merkle.CompactRange()
    prev = ZERO_HASH_HEX
    expected = 0
    roots: dict[int, bytes] = {}
    wanted = {
        int(size): bytes(root)
        for size, root in session.execute(sa.select(_checkpoints_t.c.size, _checkpoints_t.c.root))
    }
    if 0 in wanted:
        roots[0] = compact.root()
    while True:
        rows = session.execute(
            sa.select(_records_t.c.seq, _records_t.c.record)
            .where(_records_t.c.seq >= expected)
            .order_by(_records_t.c.seq)
            .limit(chunk_rows)
        ).all()
        if not rows:
            break
        stored_nodes = {
            (int(level), int(idx)): bytes(digest)
            for level, idx, digest in session.execute(
                sa.select(_nodes_t.c.level, _nodes_t.c.idx, _nodes_t.c.hash).where(
                    _nodes_t.c.level == 0,
                    _nodes_t.c.idx >= expected,
                    _nodes_t.c.idx < expected + len(rows),
                )
            )
        }
        for seq, raw in rows:
            data = bytes(raw)
            if seq != expected:
                problems.append(f"seq {expected}: missing (the next record is seq {seq})")
                return problems
            record = json.loads(data)
            if record.get("seq") != seq or record.get("prev") != prev:
                problems.append(f"seq {seq}: its seq or prev field does not fit the chain")
                return problems
            leaf = merkle.leaf_hash(data)
            if stored_nodes.get((0, seq)) != leaf:
                problems.append(f"seq {seq}: the stored leaf hash is not the record's")
                return problems
            compact.append(leaf)
            prev = hashlib.sha256(data).hexdigest()
            expected += 1
            if expected in wanted:
                roots[expected] = compact.root()
    if expected != head.size:
        problems.append(f"the head says {head.size} records, the chain has {expected}")
    elif compact.hashes != list(head.compact) or prev != head.last_sha256:
        problems.append("the head's compact range or last hash is not the chain's")
    else:
        reader = DatabaseNodes(session)
        if merkle.root(reader, head.size) != compact.root():
            problems.append("the stored tree nodes do not give the chain's root")
    for size, root in sorted(wanted.items()):
        if size not in roots:
            problems.append(f"checkpoint at size {size}: beyond the chain")
        elif roots[size] != root:
            problems.append(f"checkpoint at size {size}: its root is not the chain's")
    return problems
