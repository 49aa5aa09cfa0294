"""Appending to the journal, and the sequencer that gives records their place in the chain.

**Appending** (:func:`append`, :func:`append_many`) inserts the change's record into
``audit_pending`` in the caller's own database transaction, so the record commits or rolls back
with the change it describes, and a change can never commit without it. Nothing is locked
beyond the new row: appending costs each writer one insert and never makes two writers wait
for each other (:func:`install` hooks every ledger transaction in this way).

**Sequencing** (:func:`sequence`) then gives committed records their ``seq`` (0, 1, 2, … with
no gaps), their ``prev`` (the SHA-256 of the previous record's bytes; 64 zeros for seq 0) and
their place in the Merkle tree, in the order they became visible, which is their commit order
up to the sequencer's batches. Only the sequencer locks the single ``audit_head`` row, so the
chain is one line (no fork) whatever the number of writers or nodes, and writers never queue
behind one another's commits, as Trillian's sequencer separates queueing from integration.
The record bytes are the RFC 8785 canonical JSON of::

    {"seq", "kind", "at", "actor": {"organization_id", "client_id", "via"},
     "subject": {...ids...}, "money": {"currency", "amount_minor", ...} | null, "prev"}

A committed change waits for its ``seq`` at most one sequencer interval
(``MARKETPLACE_AUDIT_SEQUENCE_INTERVAL_S``, run on every node) plus the time to sequence the
records committed before it; exports, proofs and checkpoints cover sequenced records only.

**The actor** is known where requests and commands are handled, not in services: the OAuth
layer, the CLI and the pages set it with :func:`set_actor` (a context variable), and every
record appended in that context carries it. Work nobody asked for (settlement on a timer) is
recorded with ``{"organization_id": null, "client_id": null, "via": "system"}``.

No record holds a secret: subject keys naming secrets, passwords or tokens are refused here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from marketplace.audit import merkle
from marketplace.audit.actor import (
    SYSTEM,
    Actor,
    acting_as,
    current_actor,
    reset_actor,
    set_actor,
)
from marketplace.audit.models import HEAD_ID, KIND_CHARS_MAX
from marketplace.audit.models import head_t as _head_t
from marketplace.audit.models import nodes_t as _nodes_t
from marketplace.audit.models import pending_t as _pending_t
from marketplace.audit.models import records_t as _records_t
from marketplace.canonical import canonical_json
from marketplace.db import utcnow
from marketplace.ledger import bulk
from marketplace.ledger import services as ledger

__all__ = [  # the actor lives in its own light module; it is part of this API too
    "SYSTEM",
    "Actor",
    "Entry",
    "Money",
    "acting_as",
    "append",
    "append_many",
    "current_actor",
    "install",
    "reset_actor",
    "sequence",
    "set_actor",
    "uninstall",
]

SEQUENCE_BATCH_MAX = 5000  # records per sequencer transaction

_PENDING_COLUMNS = ("kind", "ledger_transaction_id", "body")
_insert_pending = sa.insert(_pending_t)

_KIND = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+")
# Subject keys that would name a secret: refused outright, so none can slip into a record.
_SECRET_WORDS = re.compile(r"secret|password|passwd|token|private|credential", re.IGNORECASE)


# --- Appending --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Money:
    """The money a record is about: integer minor units of one currency, and the legs if any."""

    currency: str
    amount_minor: int
    legs: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"currency": self.currency, "amount_minor": self.amount_minor}
        if self.legs:
            out["legs"] = [dict(leg) for leg in self.legs]
        out.update(self.extra)
        return out


def format_at(moment: dt.datetime) -> str:
    """A UTC timestamp as records write it: ``2026-11-30T11:23:38.123456Z``."""
    if moment.tzinfo is None:
        raise ValueError("journal times must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_approved_keys: set[str] = set()  # keys already checked (a small vocabulary; bounded below)
_APPROVED_KEYS_MAX = 10_000


def _check_keys(value: Any, where: str) -> None:
    """Refuse keys that name secrets, and ``seq``/``prev`` below the top level (the offline
    verifier reads a record's own ``seq`` and ``prev`` as their only occurrence)."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if key not in _approved_keys:
                if type(key) is str and _SECRET_WORDS.search(key):
                    raise ValueError(f"{where}.{key}: journal records never hold secrets or tokens")
                if key in ("seq", "prev"):
                    raise ValueError(f"{where}.{key}: 'seq' and 'prev' are the record's own fields")
                if type(key) is str and len(_approved_keys) < _APPROVED_KEYS_MAX:
                    _approved_keys.add(key)
            if type(item) in (dict, list, tuple):
                _check_keys(item, f"{where}.{key}")
    elif kind is list or kind is tuple:
        for index, item in enumerate(value):
            if type(item) in (dict, list, tuple):
                _check_keys(item, f"{where}[{index}]")


def record_body(
    *,
    kind: str,
    subject: Mapping[str, Any],
    money: Money | None = None,
    at: dt.datetime | None = None,
    actor: Actor | None = None,
) -> str:
    """The canonical JSON of a record without its ``seq`` and ``prev`` (what is queued)."""
    if len(kind) > KIND_CHARS_MAX or not _KIND.fullmatch(kind):
        raise ValueError(f"{kind!r} is not a record kind (such as 'offer.created')")
    body = {
        "kind": kind,
        "at": format_at(at or utcnow()),
        "actor": (actor or current_actor()).as_record(),
        "subject": dict(subject),
        "money": None if money is None else money.as_record(),
    }
    _check_keys(body["subject"], "subject")
    _check_keys(body["money"], "money")
    return canonical_json(body).decode("utf-8")


@dataclass(frozen=True)
class Entry:
    """One record to append: what :func:`append_many` takes."""

    kind: str
    subject: Mapping[str, Any]
    money: Money | None = None
    at: dt.datetime | None = None
    ledger_transaction_id: int | None = None


def append_many(session: Session, entries: Sequence[Entry]) -> None:
    """Append records in the caller's transaction (one insert; COPY for large batches)."""
    if not entries:
        return
    actor = current_actor()
    rows = [
        (
            e.kind,
            e.ledger_transaction_id,
            record_body(kind=e.kind, subject=e.subject, money=e.money, at=e.at, actor=actor),
        )
        for e in entries
    ]
    if bulk.use_copy(session, len(rows)):
        bulk.insert_rows(session, _pending_t, _PENDING_COLUMNS, rows)
    else:
        # One cached statement: a change's record costs its writer no statement building.
        session.execute(
            _insert_pending, [dict(zip(_PENDING_COLUMNS, r, strict=True)) for r in rows]
        )


def append(
    session: Session,
    *,
    kind: str,
    subject: Mapping[str, Any],
    money: Money | None = None,
    at: dt.datetime | None = None,
    ledger_transaction_id: int | None = None,
) -> None:
    """Append one record for a change, inside the caller's database transaction.

    ``kind`` is dotted lower case (``offer.created``); ``subject`` holds the ids of what
    changed (and small facts such as a terms hash), never a secret; ``money`` the amount and
    currency when money moves. The actor comes from :func:`set_actor`. The record gets its
    ``seq`` once the transaction has committed (see the module docstring).
    """
    append_many(
        session,
        [Entry(kind, subject, money, at, ledger_transaction_id)],
    )


# --- Every ledger transaction --------------------------------------------------------------------


def ledger_entry(tx: ledger.PostedTransaction) -> Entry:
    """The record of a ledger transaction: its ids, kind, memo and every leg."""
    debits = sum(leg.amount for leg in tx.legs if leg.side == "debit")
    return Entry(
        kind="ledger.transaction",
        subject={
            "ledger_transaction_id": tx.id,
            "transaction_kind": tx.kind,
            "idempotency_key": tx.idempotency_key,
            "pending": tx.pending,
            "resolves_id": tx.resolves_id,
            "reverses_id": tx.reverses_id,
            "memo": tx.memo,
        },
        money=Money(
            currency=tx.currency,
            amount_minor=debits,
            legs=tuple(
                {"account_id": leg.account_id, "side": leg.side, "amount_minor": leg.amount}
                for leg in tx.legs
            ),
        ),
        at=tx.created_at,
        ledger_transaction_id=tx.id,
    )


def _ledger_hook(session: Session, transactions: Sequence[ledger.PostedTransaction]) -> None:
    append_many(session, [ledger_entry(tx) for tx in transactions])


def install() -> None:
    """Record every ledger transaction from now on (idempotent; done by the app factory)."""
    ledger.register_transaction_hook(_ledger_hook)


def uninstall() -> None:
    """Stop recording ledger transactions (for the benchmark's journal-off baseline)."""
    ledger.unregister_transaction_hook(_ledger_hook)


# --- Sequencing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """The sequenced tree: its size, the last record's hash and its compact range."""

    size: int
    last_sha256: str
    compact: tuple[bytes, ...]

    def root(self) -> bytes:
        return merkle.fold(self.compact)


def _split_compact(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw[i : i + merkle.HASH_BYTES] for i in range(0, len(raw), merkle.HASH_BYTES))


def read_head(session: Session, *, lock: bool = False, skip_locked: bool = False) -> Head | None:
    """The sequenced tree's head; with ``lock``, locked for this transaction (None if
    ``skip_locked`` and another sequencer holds it)."""
    query = sa.select(_head_t).where(_head_t.c.id == HEAD_ID)
    if lock:
        query = query.with_for_update(skip_locked=skip_locked)
    row = session.execute(query).mappings().first()
    if row is None:
        if lock and skip_locked:
            return None
        raise RuntimeError("the journal's head row is missing; is the database migrated?")
    return Head(int(row["size"]), row["last_sha256"], _split_compact(bytes(row["compact"])))


def _sequence_batch(session: Session, batch_max: int, wait: bool) -> int | None:
    head = read_head(session, lock=True, skip_locked=not wait)
    if head is None:
        return None
    pending = session.execute(
        sa.select(
            _pending_t.c.id,
            _pending_t.c.kind,
            _pending_t.c.ledger_transaction_id,
            _pending_t.c.body,
        )
        .order_by(_pending_t.c.id)
        .limit(batch_max)
    ).all()
    if not pending:
        return 0
    compact = merkle.CompactRange(head.size, head.compact)
    prev = head.last_sha256
    seq = head.size
    records = []
    nodes: list[tuple[int, int, bytes]] = []
    for _id, kind, ledger_transaction_id, body in pending:
        record = json.loads(body)
        record["seq"] = seq
        record["prev"] = prev
        data = canonical_json(record)
        prev = hashlib.sha256(data).hexdigest()
        nodes.extend(compact.append(merkle.leaf_hash(data)))
        records.append((seq, kind, ledger_transaction_id, data))
        seq += 1
    bulk.insert_rows(
        session, _records_t, ("seq", "kind", "ledger_transaction_id", "record"), records
    )
    bulk.insert_rows(session, _nodes_t, ("level", "idx", "hash"), nodes)
    session.execute(
        sa.delete(_pending_t).where(bulk.in_list(session, _pending_t.c.id, [p[0] for p in pending]))
    )
    session.execute(
        sa.update(_head_t)
        .where(_head_t.c.id == HEAD_ID)
        .values(size=seq, last_sha256=prev, compact=b"".join(compact.hashes), updated_at=utcnow())
    )
    return len(pending)


def sequence(session: Session, *, batch_max: int = SEQUENCE_BATCH_MAX, wait: bool = True) -> int:
    """Give every committed pending record its place; the number of records sequenced.

    Each batch is one transaction holding the head row's lock. With ``wait=False`` a run that
    finds another sequencer at work returns at once (that one will take these records too);
    with ``wait=True`` it waits its turn, so that on return everything committed before the
    call is sequenced.
    """
    # A read first: with nothing queued, no write transaction is opened (on SQLite that would
    # take the database's write lock every interval for nothing).
    if session.in_transaction():
        session.commit()
    queued = session.execute(sa.select(_pending_t.c.id).limit(1)).first()
    session.commit()
    if queued is None:
        return 0
    total = 0
    while True:
        done = ledger.run_in_transaction(session, lambda s: _sequence_batch(s, batch_max, wait))
        if done is None:
            return total
        total += done
        if done < batch_max:
            return total


def pending_count(session: Session) -> int:
    """Committed records still waiting for their ``seq``."""
    return int(session.execute(sa.select(sa.func.count()).select_from(_pending_t)).scalar_one())
