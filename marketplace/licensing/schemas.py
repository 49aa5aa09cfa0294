"""Request and response shapes of the licensing API (trials, purchases, licences, refunds)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field

from marketplace.api import MinorAmount, RequestModel, RowModel
from marketplace.payments.schemas import PaymentRefundPublic


class AcceptTerms(RequestModel):
    accept_terms_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LicenseUsage(BaseModel):
    """A licence's counters. Accrued: owed for every call so far. Settled: charged to the wallet
    (posted in the ledger). Unsettled: accrued but not yet charged; settlement runs when a
    reservation is used up, on the server's schedule and with ``jishi ledger settle``."""

    calls_used: int = Field(description="Successful calls so far")
    calls_settled: int = Field(description="Calls charged to the wallet")
    calls_unsettled: int = Field(description="Calls not yet charged")
    royalty_per_1k_minor: int
    accrued_minor: int = Field(description="Royalties owed for every call so far")
    settled_minor: int = Field(description="Royalties charged to the wallet so far")
    unsettled_minor: int = Field(description="Royalties owed and not yet charged")


class LicensePublic(BaseModel):
    id: int
    kind: str
    status: str  # active | expired | exhausted | revoked
    offer_id: int
    listing_id: int
    currency: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    calls_remaining: int | None
    usage: LicenseUsage


class LicenseList(BaseModel):
    items: list[LicensePublic]


class OrderPublic(RowModel):
    id: int
    status: str
    offer_id: int
    amount_minor: int
    refunded_minor: int
    currency: str
    licence_id: int | None = Field(validation_alias=AliasChoices("licence_id", "license_id"))
    ledger_transaction_id: int | None
    created_at: dt.datetime


class RefundCreate(RequestModel):
    amount_minor: MinorAmount | None = Field(
        default=None, gt=0, description="Default: all that is left"
    )
    reason: str = Field(default="", max_length=500)


class RefundPublic(BaseModel):
    id: int
    order_id: int
    amount_minor: int
    currency: str
    ledger_transaction_id: int | None
    order: OrderPublic
    payment_refunds: list[PaymentRefundPublic] = Field(
        default_factory=list,
        description="The part sent back to the buyer's payments (provider refunds)",
    )
    to_wallet_minor: int = Field(
        description="The part that stays in the buyer's wallet (simulated money, or more than "
        "the payments can take back)"
    )


class OrderQuery(RequestModel):
    role: Literal["buyer", "vendor"] | None = Field(
        default=None, description="buyer: your purchases; vendor: your sales; absent: both"
    )
    page: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=20, ge=1)


class OrderListItem(OrderPublic):
    role: Literal["buyer", "vendor"] = Field(description="Your side of the order")
    listing_id: int
    listing_name: str
    buyer_organization_id: int
    vendor_organization_id: int


class OrderPage(BaseModel):
    items: list[OrderListItem]
    total: int
    page: int
    page_size: int


class HourlyAmount(BaseModel):
    """Sum and count of money movements in one hour (UTC start), for charts."""

    hour: dt.datetime
    currency: str
    count: int
    amount_minor: int
