"""Request and response shapes of the wallet API."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

from marketplace.api import MinorAmount


class TopUpCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_minor: MinorAmount = Field(gt=0, description="Integer minor units of the currency")
    currency: str = Field(pattern=r"^[A-Z]{3}$")


class PaymentInfo(BaseModel):
    provider: str
    simulated: bool
    client_secret: str | None = None


class TopUpPublic(BaseModel):
    id: int
    status: str
    amount_minor: int
    currency: str
    created_at: dt.datetime
    completed_at: dt.datetime | None
    payment: PaymentInfo


class WalletBalance(BaseModel):
    currency: str
    exponent: int
    balance_minor: int = Field(description="Posted balance")
    held_minor: int = Field(description="Reserved by holds (metered usage in flight)")
    available_minor: int = Field(description="What purchases and usage may spend now")
    display: str


class WalletPublic(BaseModel):
    organization_id: int
    balances: list[WalletBalance]
