"""Journal tables: records waiting for their place, the chain, the tree's nodes, checkpoints, keys.

A change writes its record to ``audit_pending`` inside its own transaction; the sequencer moves
committed pending records into ``audit_records`` with their ``seq`` and ``prev``, stores the
Merkle tree's completed perfect nodes in ``audit_tree_nodes``, and advances the single
``audit_head`` row. Records, nodes and checkpoints are append-only: database triggers refuse
UPDATE and DELETE, as for ledger entries.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, table, utcnow
from marketplace.ledger.models import BigId

KIND_CHARS_MAX = 48
HEAD_ID = 1
ZERO_HASH_HEX = "0" * 64


class AuditPending(SQLModel, table=True):
    """A committed change's record that has no ``seq`` yet (the sequencer's queue)."""

    __tablename__ = "audit_pending"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    kind: str = Field(max_length=KIND_CHARS_MAX)
    # Set for ledger transactions, so that `jishi ledger check` can find each one's record.
    ledger_transaction_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, nullable=True)
    )
    # The record's canonical JSON without ``seq`` and ``prev``.
    body: str = Field(sa_column=sa.Column(sa.Text, nullable=False))


class AuditRecord(SQLModel, table=True):
    """One link of the chain: the exact canonical bytes that are the Merkle tree's leaf."""

    __tablename__ = "audit_records"

    seq: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(max_length=KIND_CHARS_MAX)
    ledger_transaction_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, nullable=True, unique=True)
    )
    record: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


class AuditTreeNode(SQLModel, table=True):
    """A perfect subtree's root: leaves [index·2^level, (index+1)·2^level) of the tree."""

    __tablename__ = "audit_tree_nodes"

    level: int = Field(sa_column=sa.Column(sa.SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


class AuditHead(SQLModel, table=True):
    """The sequencer's state, one row: the tree size, the last record's hash, the compact range.

    Only the sequencer locks it, so changes never wait for one another here.
    """

    __tablename__ = "audit_head"

    id: int = Field(default=HEAD_ID, primary_key=True)
    size: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    last_sha256: str = Field(default=ZERO_HASH_HEX, max_length=64)
    # The compact range's hashes (32 bytes each, largest subtree first).
    compact: bytes = Field(default=b"", sa_column=sa.Column(sa.LargeBinary, nullable=False))
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class AuditCheckpoint(SQLModel, table=True):
    """A signed checkpoint (C2SP signed note) of the tree at ``size``."""

    __tablename__ = "audit_checkpoints"

    size: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    note: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    key_hash: str = Field(max_length=8)
    created_at: dt.datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True
    )


class AuditKey(SQLModel, table=True):
    """A journal signing key's public half, published for as long as the journal exists."""

    __tablename__ = "audit_keys"
    __table_args__ = (sa.UniqueConstraint("name", "key_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=255)
    key_hash: str = Field(max_length=8)
    public_key: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    valid_from: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    valid_to: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


# Core handles of the tables, for the journal's bulk statements.
records_t = table(AuditRecord)
nodes_t = table(AuditTreeNode)
pending_t = table(AuditPending)
head_t = table(AuditHead)
checkpoints_t = table(AuditCheckpoint)
keys_t = table(AuditKey)
