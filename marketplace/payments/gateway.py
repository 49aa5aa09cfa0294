"""The payment gateway protocol, its provider errors, and the offline gateway of the embedded run."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

from marketplace.bounds import ID_MAX, ID_MIN
from marketplace.errors import DomainError, ServiceUnavailable

INTENT_SUCCEEDED = "succeeded"
INTENT_PENDING = "pending"  # the payer still has to pay (or the provider is still processing)
INTENT_FAILED = "failed"  # the last attempt to pay failed; the payer may try again
INTENT_CANCELED = "canceled"  # it can never be paid

REFUND_SUCCEEDED = "succeeded"
REFUND_PENDING = "pending"
REFUND_FAILED = "failed"

Answer = TypeVar("Answer")


class ProviderUnavailable(ServiceUnavailable, code="payment_provider_unavailable"):
    """The provider could not be reached or answered with a transient error: try again later.

    The request may or may not have taken effect; a retry with the same idempotency key settles
    which.
    """


class ProviderRefused(DomainError, code="payment_refused"):
    """The provider definitively refused the request: nothing happened there."""


class ProviderConflict(DomainError, code="payment_provider_conflict"):
    """The provider reports a state only a person can sort out (an idempotency key clash).

    Nothing is retried or undone automatically after it.
    """


@dataclass(frozen=True, kw_only=True)
class MoneyRequest:
    """Money a gateway is asked to move, once per ``idempotency_key`` (the provider's key)."""

    what: ClassVar[str]
    idempotency_key: str
    amount_minor: int
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A gateway never moves zero or negative money; such a request is a bug in the caller.
        if self.amount_minor <= 0:
            raise ValueError(f"a {self.what} must be positive")

    @classmethod
    def of(
        cls, row: object, *, idempotency_key: str, metadata: Mapping[str, str], **given: Any
    ) -> Self:
        """The request for ``row`` (a top-up, payout or refund): each field not ``given`` is
        the row's column of that name, so a request and its row cannot disagree."""
        taken = {"idempotency_key", "metadata", *given}
        columns = {f.name: getattr(row, f.name) for f in fields(cls) if f.name not in taken}
        return cls(idempotency_key=idempotency_key, metadata=metadata, **columns, **given)


@dataclass(frozen=True, kw_only=True)
class TopUpRequest(MoneyRequest):
    """A payment to collect from the payer."""

    what = "top-up"
    currency: str


@dataclass(frozen=True, kw_only=True)
class TransferRequest(MoneyRequest):
    """Money to send from the platform to a vendor's connected account."""

    what = "transfer"
    currency: str
    destination: str
    transfer_group: str


@dataclass(frozen=True, kw_only=True)
class RefundRequest(MoneyRequest):
    """Part or all of a collected payment to return to the payer."""

    what = "refund"
    payment_ref: str


def metadata_id(metadata: Mapping[str, str], key: str) -> int | None:
    """The row id we put under ``key`` in a provider object's metadata; None unless it is one.

    Metadata comes back in signed events, but the provider accepts any text there (an object
    made from the provider's dashboard, another installation's): only ASCII digits within the
    id columns' range are looked up. A 20-digit id was a 500 on the lookup, redelivered for
    days; ``str.isdigit`` also takes other scripts' digits.
    """
    raw = metadata.get(key, "")
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19):
        return None
    value = int(raw)
    return value if ID_MIN <= value <= ID_MAX else None


@dataclass(frozen=True)
class PaymentIntent:
    """What a gateway says about a payment it was asked to collect."""

    status: str  # succeeded | pending | failed | canceled
    provider_ref: str
    # Handed to the payer's browser when the provider needs the payer to confirm (Stripe).
    client_secret: str | None = None
    amount_minor: int = 0
    amount_received_minor: int = 0
    currency: str = ""
    failure_code: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderTransfer:
    """Money sent to a vendor's connected account."""

    provider_ref: str
    amount_minor: int
    currency: str
    destination: str
    reversed_minor: int = 0
    group: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderRefund:
    """Money sent back to a payer's original payment."""

    provider_ref: str
    status: str  # succeeded | pending | failed
    amount_minor: int
    currency: str
    payment_ref: str
    failure_code: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class PaymentGateway(Protocol):
    """Moves money between payers, the platform and vendors through a payment provider.

    ``name`` is recorded on every money record (``offline``, ``stripe``); ``simulated`` is True
    when no real money moves, and the flag is stored on every record the gateway produces so
    that pages and statements can say so.

    Every call that changes something at the provider takes a request carrying an
    ``idempotency_key`` (``reference`` for top-ups), which the gateway must send as the
    provider's idempotency key: calling again with the same request after a crash or a timeout
    returns the first result and never moves money twice. Keys are derived from the
    marketplace's own ids and stored before the first call.

    Amounts are positive integer minor units (the requests refuse anything else); currencies
    are ISO 4217 codes in upper case. ``metadata`` is attached to the provider's object so that
    its webhooks and lists lead back to our rows.

    Errors: :class:`ProviderUnavailable` (transient: retry with the same key),
    :class:`ProviderRefused` (definitive: nothing happened), :class:`ProviderConflict` (a person
    must look); never the vendor SDK's own exceptions.
    """

    name: str
    simulated: bool

    def create_top_up(self, request: TopUpRequest) -> PaymentIntent:
        """Start collecting a top-up; idempotent per ``request.idempotency_key``."""
        ...

    def get_top_up(self, provider_ref: str) -> PaymentIntent:
        """The payment's current state at the provider."""
        ...

    def cancel_top_up(self, *, idempotency_key: str, provider_ref: str) -> PaymentIntent:
        """Cancel a payment nobody paid; refused when it can no longer be canceled."""
        ...

    def check_payout_account(self, account_ref: str) -> None:
        """Raise :class:`ProviderRefused` unless the account exists and can receive transfers."""
        ...

    def create_transfer(self, request: TransferRequest) -> ProviderTransfer:
        """Send money from the platform to a vendor's connected account."""
        ...

    def get_transfer(self, provider_ref: str) -> ProviderTransfer: ...

    def create_refund(self, request: RefundRequest) -> ProviderRefund:
        """Return part or all of a collected payment to the payer."""
        ...

    def get_refund(self, provider_ref: str) -> ProviderRefund: ...


class OfflineGateway:
    """Succeeds at once without moving money: the embedded default, marked simulated.

    It keeps what it "did" in memory only so that repeated calls with the same key give the
    same answer within one process, as a real provider's idempotency would.
    """

    name = "offline"
    simulated = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._by_key: dict[str, object] = {}

    def _once(self, key: str, make: Callable[[int], Answer]) -> Answer:
        """What ``make`` answered for ``key`` the first time (given the next number), ever after."""
        with self._lock:
            if key not in self._by_key:
                self._by_key[key] = make(next(self._seq))
            return cast(Answer, self._by_key[key])

    def create_top_up(self, request: TopUpRequest) -> PaymentIntent:
        return PaymentIntent(
            status=INTENT_SUCCEEDED,
            provider_ref=f"offline-{request.idempotency_key}",
            amount_minor=request.amount_minor,
            amount_received_minor=request.amount_minor,
            currency=request.currency,
            metadata=dict(request.metadata),
        )

    def get_top_up(self, provider_ref: str) -> PaymentIntent:
        raise ProviderRefused("Simulated payments have no state to fetch.", code="simulated")

    def cancel_top_up(self, *, idempotency_key: str, provider_ref: str) -> PaymentIntent:
        raise ProviderRefused("Simulated payments succeed at once.", code="simulated")

    def check_payout_account(self, account_ref: str) -> None:
        return None

    def create_transfer(self, request: TransferRequest) -> ProviderTransfer:
        def transfer(n: int) -> ProviderTransfer:
            return ProviderTransfer(
                provider_ref=f"offline-tr-{n}",
                amount_minor=request.amount_minor,
                currency=request.currency,
                destination=request.destination,
                group=request.transfer_group,
                metadata=dict(request.metadata),
            )

        return self._once(request.idempotency_key, transfer)

    def get_transfer(self, provider_ref: str) -> ProviderTransfer:
        raise ProviderRefused("Simulated transfers have no state to fetch.", code="simulated")

    def create_refund(self, request: RefundRequest) -> ProviderRefund:
        def refund(n: int) -> ProviderRefund:
            return ProviderRefund(
                provider_ref=f"offline-re-{n}",
                status=REFUND_SUCCEEDED,
                amount_minor=request.amount_minor,
                currency="",
                payment_ref=request.payment_ref,
                metadata=dict(request.metadata),
            )

        return self._once(request.idempotency_key, refund)

    def get_refund(self, provider_ref: str) -> ProviderRefund:
        raise ProviderRefused("Simulated refunds have no state to fetch.", code="simulated")
