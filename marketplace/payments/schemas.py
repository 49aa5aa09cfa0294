"""Request and response shapes of the wallet API."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, StrictInt

from marketplace.api import CurrencyCode, MinorAmount, RequestModel, RowModel


class WalletAmount(RequestModel):
    amount_minor: MinorAmount = Field(gt=0, description="Integer minor units of the currency")
    currency: CurrencyCode


class TopUpCreate(WalletAmount):
    """Money to add to your wallet."""


class PaymentInfo(BaseModel):
    provider: str
    simulated: bool
    client_secret: str | None = None


class TopUpPublic(BaseModel):
    id: int
    status: str = Field(
        description="pending | requires_payment | succeeded | failed (the payer may retry) "
        "| canceled"
    )
    amount_minor: int
    currency: str
    payment_intent_id: str | None = Field(
        validation_alias=AliasChoices("payment_intent_id", "provider_ref"),
        description="The provider's payment (Stripe pi_...)",
    )
    client_secret: str | None = Field(
        description="For the payer's browser to confirm the payment; only in POST answers"
    )
    failure_code: str | None
    refunded_minor: int = Field(description="Sent back to the payer by withdrawals and refunds")
    created_at: dt.datetime
    completed_at: dt.datetime | None
    payment: PaymentInfo


class WalletBalance(BaseModel):
    currency: str
    exponent: int
    balance_minor: int = Field(description="Posted balance")
    held_minor: int = Field(description="Reserved by holds (metered usage in flight)")
    available_minor: int = Field(description="What purchases and usage may spend now")


class WalletPublic(BaseModel):
    organization_id: int
    balances: list[WalletBalance]


class TopUpList(BaseModel):
    items: list[TopUpPublic]


class PaymentRefundPublic(BaseModel):
    id: int
    top_up_id: int
    payment_intent_id: str | None = Field(description="The payment refunded (Stripe pi_...)")
    amount_minor: int
    currency: str
    status: str = Field(description="pending | succeeded | failed (the wallet has it back)")
    refund_id: str | None = Field(
        validation_alias=AliasChoices("refund_id", "provider_ref"),
        description="The provider's refund (Stripe re_...)",
    )
    failure_code: str | None


class WithdrawalCreate(WalletAmount):
    """Unused wallet money to send back to your payments."""


class WithdrawalPublic(BaseModel):
    id: int
    status: str = Field(description="pending | succeeded | partial | failed")
    amount_minor: int
    currency: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    refunds: list[PaymentRefundPublic]


class PayoutAccountSet(RequestModel):
    account_id: str = Field(
        pattern=r"^acct_[A-Za-z0-9]{1,64}$", description="The Stripe connected account (acct_...)"
    )


class PayoutAccountPublic(RowModel):
    organization_id: int
    provider: str
    account_ref: str = Field(description="The connected account payouts go to")
    created_at: dt.datetime
    updated_at: dt.datetime


class PayoutPublic(RowModel):
    id: int
    organization_id: int
    status: str = Field(description="pending | paid | failed (the money is payable again)")
    amount_minor: int
    currency: str
    provider: str
    simulated: bool
    destination: str
    transfer_group: str
    provider_ref: str | None = Field(description="The provider's transfer (Stripe tr_...)")
    failure_code: str | None
    created_at: dt.datetime
    completed_at: dt.datetime | None


class PayoutList(BaseModel):
    items: list[PayoutPublic]


class PayoutRunRequest(RequestModel):
    organization_id: StrictInt | None = Field(default=None, gt=0, description="Only this vendor")


class PayoutQuery(RequestModel):
    organization_id: int | None = Field(
        default=None, gt=0, lt=2**31, description="Administrators only: another vendor's payouts"
    )


class OutboxPublic(RowModel):
    id: int
    kind: str
    subject_id: int
    status: str = Field(description="pending | done | failed (waits for an administrator)")
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str
    created_at: dt.datetime
    completed_at: dt.datetime | None


class OutboxQuery(RequestModel):
    status: Literal["pending", "done", "failed"] | None = None


class OutboxList(BaseModel):
    items: list[OutboxPublic]
