"""Money in and out through a payment provider: top-ups, payouts, withdrawals, provider refunds,
the outbox that drives every provider call, and the webhook events already applied."""

from __future__ import annotations

import datetime as dt
import secrets

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.db import UTCDateTime, table, utcnow

# Top-ups: pending (recorded; the provider's payment is being created) -> requires_payment (the
# payer must pay) -> succeeded (the wallet is credited). A declined attempt makes it failed, from
# where the payer may still pay (-> succeeded); canceled and succeeded are final.
TOP_UP_PENDING = "pending"
TOP_UP_REQUIRES_PAYMENT = "requires_payment"
TOP_UP_SUCCEEDED = "succeeded"
TOP_UP_FAILED = "failed"
TOP_UP_CANCELED = "canceled"

# Payouts: pending (the vendor's payable is held; the transfer is in the outbox) -> paid (the
# hold is posted) or failed (the hold is voided and the money is payable again).
PAYOUT_PENDING = "pending"
PAYOUT_PAID = "paid"
PAYOUT_FAILED = "failed"

# Provider refunds and withdrawals: pending -> succeeded | failed (the wallet gets it back).
REFUND_PENDING = "pending"
REFUND_SUCCEEDED = "succeeded"
REFUND_FAILED = "failed"
WITHDRAWAL_PARTIAL = "partial"  # some of its refunds succeeded, the others failed

# Outbox: pending -> done (the provider answered, and the answer is recorded) or failed (gave
# up after transient errors; an administrator's retry makes it pending again).
OUTBOX_PENDING = "pending"
OUTBOX_DONE = "done"
OUTBOX_FAILED = "failed"

OUTBOX_TOP_UP = "top_up"
OUTBOX_TRANSFER = "transfer"
OUTBOX_REFUND = "refund"
OUTBOX_TOP_UP_CANCEL = "top_up_cancel"

REFUND_FOR_WITHDRAWAL = "withdrawal"
REFUND_FOR_ORDER = "order_refund"


def new_reference() -> str:
    """A random per-row nonce that goes into provider idempotency keys and metadata.

    Our ids alone would repeat across databases sharing one provider account (a staging copy, a
    restored backup, test runs); with the nonce two rows never share a key.
    """
    return secrets.token_hex(8)


class ProviderTransferColumns(SQLModel):
    """What a row that sends money out through a ledger hold and one provider call records.

    ``reference`` goes into the call's idempotency key and metadata; the hold is posted
    (``resolve_transaction_id``) when the provider confirms and voided when it refuses.
    """

    provider: str = Field(max_length=16)
    reference: str = Field(default_factory=new_reference, max_length=32)
    provider_ref: str | None = Field(default=None, max_length=255, index=True)
    hold_transaction_id: int | None = Field(
        default=None, foreign_key="ledger_transactions.id", sa_type=sa.BigInteger
    )
    resolve_transaction_id: int | None = Field(
        default=None, foreign_key="ledger_transactions.id", sa_type=sa.BigInteger
    )
    failure_code: str | None = Field(default=None, max_length=64)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    completed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class TopUp(SQLModel, table=True):
    __tablename__ = "top_ups"
    __table_args__ = (sa.UniqueConstraint("organization_id", "idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    amount_minor: int = Field(sa_type=sa.BigInteger, nullable=False)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    status: str = Field(default=TOP_UP_PENDING, max_length=16)
    provider: str = Field(max_length=16)
    # True when no real money moved (the offline gateway); shown on every record and page.
    simulated: bool
    # The provider's payment (a Stripe PaymentIntent id).
    provider_ref: str | None = Field(default=None, max_length=255, index=True)
    reference: str | None = Field(default=None, max_length=32)
    idempotency_key: str = Field(max_length=128)
    request_hash: str = Field(max_length=64)
    ledger_transaction_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger, sa.ForeignKey("ledger_transactions.id"), nullable=True),
    )
    # Sent back to the payer so far (withdrawals and order refunds), failed refunds excluded.
    refunded_minor: int = Field(default=0, sa_type=sa.BigInteger, nullable=False)
    failure_code: str | None = Field(default=None, max_length=64)
    # When reconciliation last asked the provider about it (the least recent are asked first).
    checked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    completed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class PaymentOutbox(SQLModel, table=True):
    """One call to the payment provider, written with the ledger change it belongs to."""

    __tablename__ = "payment_outbox"
    __table_args__ = (sa.Index("ix_payment_outbox_status_next", "status", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=16)  # top_up | top_up_cancel | transfer | refund
    subject_id: int  # the top-up, payout or provider refund it acts for
    # Sent as the provider's idempotency key on every attempt.
    idempotency_key: str = Field(max_length=255, sa_column_kwargs={"unique": True}, nullable=False)
    status: str = Field(default=OUTBOX_PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: dt.datetime = Field(
        default_factory=utcnow, sa_type=UTCDateTime, nullable=False
    )
    # A worker that claims the row owns it until the lease expires (a crashed worker's row is
    # claimed again after that, and the same key makes the repeat harmless).
    lease_token: str | None = Field(default=None, max_length=32)
    lease_expires_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    last_error: str = Field(default="", max_length=500)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    completed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class StripeEvent(SQLModel, table=True):
    """A webhook event already applied: each event id takes effect once."""

    __tablename__ = "stripe_events"

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=100)
    object_id: str | None = Field(default=None, max_length=255)
    outcome: str = Field(max_length=16)  # applied | ignored | unmatched
    received_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class PayoutAccount(SQLModel, table=True):
    """Where a vendor is paid: a connected account at the payment provider."""

    __tablename__ = "payout_accounts"

    organization_id: int = Field(foreign_key="organizations.id", primary_key=True)
    provider: str = Field(max_length=16)
    account_ref: str = Field(max_length=255)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class Payout(ProviderTransferColumns, table=True):
    """A vendor's payable balance sent out as one transfer, through a ledger hold."""

    __tablename__ = "payouts"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    amount_minor: int = Field(sa_type=sa.BigInteger, nullable=False)
    status: str = Field(default=PAYOUT_PENDING, max_length=16)
    simulated: bool
    destination: str = Field(max_length=255)

    @property
    def transfer_group(self) -> str:
        return f"jishi-payout-{self.id}-{self.reference}"


class Withdrawal(SQLModel, table=True):
    """Unused wallet money a buyer takes back, refunded to its payments newest first."""

    __tablename__ = "withdrawals"
    __table_args__ = (sa.UniqueConstraint("organization_id", "idempotency_key"),)

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    amount_minor: int = Field(sa_type=sa.BigInteger, nullable=False)
    status: str = Field(default=REFUND_PENDING, max_length=16)
    idempotency_key: str = Field(max_length=128)
    request_hash: str = Field(max_length=64)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    completed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)


class PaymentRefund(ProviderTransferColumns, table=True):
    """Money sent back to one of a payer's payments, through a hold on its wallet."""

    __tablename__ = "payment_refunds"

    id: int | None = Field(default=None, primary_key=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    top_up_id: int = Field(foreign_key="top_ups.id", index=True)
    currency: str = Field(foreign_key="currencies.code", max_length=3)
    amount_minor: int = Field(sa_type=sa.BigInteger, nullable=False)
    purpose: str = Field(max_length=16)  # withdrawal | order_refund
    withdrawal_id: int | None = Field(default=None, foreign_key="withdrawals.id", index=True)
    order_refund_id: int | None = Field(default=None, foreign_key="refunds.id", index=True)
    status: str = Field(default=REFUND_PENDING, max_length=16)


# Core handles of the tables, for statements that read columns rather than rows.
top_ups_t = table(TopUp)
payment_refunds_t = table(PaymentRefund)
outbox_t = table(PaymentOutbox)
