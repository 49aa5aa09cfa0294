"""Query and response shapes of the auditor API."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from marketplace.api import CurrencyCode, RequestModel, UtcTime
from marketplace.ledger.schemas import TransactionHeader

# --- Queries -------------------------------------------------------------------------------------


class RecordsQuery(RequestModel):
    from_seq: int = Field(default=0, description="First seq (inclusive)")
    to_seq: int | None = Field(default=None, description="Last seq (inclusive); default: the last")
    page_size: int = Field(default=100, ge=1)


class CheckpointQuery(RequestModel):
    size: int = Field(description="Tree size; any size up to the sequenced tree")


class InclusionQuery(RequestModel):
    seq: int
    size: int | None = Field(default=None, description="Tree size; default: the sequenced tree")


class ConsistencyQuery(RequestModel):
    from_: int = Field(alias="from", description="The earlier tree size (at least 1)")
    to: int | None = Field(default=None, description="The later size; default: the tree's")


class ExportQuery(RequestModel):
    from_seq: int | None = Field(default=None, description="First record; default 0")
    to_size: int | None = Field(default=None, description="Tree size to end at; default: all")
    format: Literal["jsonl", "csv"] = "jsonl"


class LedgerQuery(RequestModel):
    organization_id: int | None = Field(default=None, ge=1, le=2**62)
    kind: str | None = Field(default=None, max_length=32)
    currency: CurrencyCode | None = None
    from_: UtcTime | None = Field(default=None, alias="from")
    to: UtcTime | None = None
    after_id: int = Field(default=0, ge=0, le=2**62, description="Transactions after this id")
    page_size: int = Field(default=50, ge=1)


class RevenueQuery(RequestModel):
    currency: CurrencyCode | None = None
    period: Literal["day", "month", "year"] = "month"
    from_: UtcTime | None = Field(default=None, alias="from")
    to: UtcTime | None = None


# --- Responses -----------------------------------------------------------------------------------


class TreeStatus(BaseModel):
    origin: str
    size: int = Field(description="Sequenced records (the tree's size)")
    root_hash: str
    pending: int = Field(description="Committed records still waiting for their seq")
    latest_checkpoint_size: int | None
    latest_checkpoint_at: dt.datetime | None


class RecordItem(BaseModel):
    seq: int
    record: dict[str, Any] = Field(description="The record; its RFC 8785 form is its exact bytes")
    sha256: str = Field(description="SHA-256 of the record's bytes (the next record's prev)")
    leaf_hash: str = Field(description="SHA-256(0x00 || record): its Merkle leaf")


class RecordPage(BaseModel):
    tree_size: int
    items: list[RecordItem]
    next_from_seq: int | None


class InclusionProof(BaseModel):
    seq: int
    size: int
    leaf_hash: str
    root_hash: str
    proof: list[str] = Field(description="RFC 9162 audit path, hex, bottom up")


class ConsistencyProof(BaseModel):
    from_: int = Field(alias="from")
    to: int
    from_root: str
    to_root: str
    proof: list[str] = Field(description="RFC 9162 consistency proof, hex")


class PublicKeyItem(BaseModel):
    name: str
    key_hash: str
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: str = Field(description="Base64 of the 32-byte Ed25519 public key")
    verifier_key: str = Field(description="name+hash+base64(0x01||key): give it to the verifier")
    valid_from: dt.datetime | None
    valid_to: dt.datetime | None
    current: bool


class PublicKeyList(BaseModel):
    origin: str
    items: list[PublicKeyItem]


class CheckpointCreated(BaseModel):
    size: int
    root_hash: str
    note: str
    created_at: dt.datetime | None


class LedgerEntryItem(BaseModel):
    id: int
    account_id: int
    organization_id: int | None
    account_code: str
    side: str
    amount_minor: int
    pending: bool


class LedgerTransactionItem(TransactionHeader):
    entries: list[LedgerEntryItem]


class AccountCodeTotal(BaseModel):
    account_code: str
    currency: str
    debits_minor: int
    credits_minor: int
    net_minor: int = Field(description="credits - debits")
    entries: int


class PlatformLedger(BaseModel):
    items: list[LedgerTransactionItem]
    totals: list[AccountCodeTotal] = Field(
        description="Over every matching posted entry, not one page: held amounts count once "
        "posted, as in the balances"
    )
    next_after_id: int | None


class RevenuePeriod(BaseModel):
    period: str
    currency: str
    fees_minor: int = Field(description="Platform fees credited")
    refunded_minor: int = Field(description="Platform fees given back (refunds)")
    net_minor: int


class RevenueReport(BaseModel):
    period: str
    items: list[RevenuePeriod]
    totals: list[RevenuePeriod] = Field(description="Per currency over the whole range")
