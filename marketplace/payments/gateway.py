"""The payment gateway protocol and the offline gateway of the embedded run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

INTENT_SUCCEEDED = "succeeded"
INTENT_PENDING = "pending"
INTENT_FAILED = "failed"


@dataclass(frozen=True)
class PaymentIntent:
    """What a gateway says about a payment it was asked to collect."""

    status: str  # succeeded | pending | failed
    provider_ref: str
    # Handed to the payer's browser when the provider needs the payer to confirm (Stripe).
    client_secret: str | None = None


class PaymentGateway(Protocol):
    """Collects money from payers for wallet top-ups.

    ``name`` is recorded on every top-up (``offline``, ``stripe``); ``simulated`` is True when
    no real money moves, and the flag is stored on every record the gateway produces so that
    pages and statements can say so.

    ``create_top_up`` asks the provider to collect ``amount_minor`` (integer minor units of
    ``currency``). ``reference`` is the marketplace's own stable id for the top-up; a gateway
    must use it as the provider's idempotency key, so that calling again with the same
    reference after a crash or timeout never collects twice and returns the same intent. The
    result is ``succeeded`` (the wallet may be credited now), ``pending`` (the provider will
    confirm later, e.g. by a signed webhook) or ``failed``. Provider errors are raised as
    :class:`marketplace.errors.ServiceUnavailable`, never as the vendor SDK's exceptions.
    """

    name: str
    simulated: bool

    def create_top_up(self, *, reference: str, amount_minor: int, currency: str) -> PaymentIntent:
        """Start collecting a top-up; idempotent per ``reference``."""
        ...


class OfflineGateway:
    """Succeeds at once without moving money: the embedded default, marked simulated."""

    name = "offline"
    simulated = True

    def create_top_up(self, *, reference: str, amount_minor: int, currency: str) -> PaymentIntent:
        if amount_minor <= 0:
            raise ValueError("a top-up must be positive")
        return PaymentIntent(status=INTENT_SUCCEEDED, provider_ref=f"offline-{reference}")
