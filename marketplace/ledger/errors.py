"""Ledger failures, each with a stable code."""

from __future__ import annotations

from marketplace.errors import Conflict, DomainError, PaymentRequired, ValidationFailed


class InsufficientFunds(PaymentRequired, code="insufficient_funds"):
    """A wallet (or other debit-limited account) cannot cover the debit."""

    def __init__(self, *, account_id: int, currency: str, missing_minor: int) -> None:
        super().__init__(
            f"The wallet lacks {missing_minor} minor units of {currency} for this operation.",
            extra={"missing_minor": missing_minor, "currency": currency},
        )
        self.account_id = account_id
        self.missing_minor = missing_minor


class LimitExceeded(Conflict, code="limit_exceeded"):
    """A platform or vendor account's limit flag refuses the transaction."""


class IdempotencyKeyReused(Conflict, code="idempotency_key_reused"): ...


class InvalidTransaction(DomainError, code="invalid_transaction"):
    """The transaction is malformed: unbalanced, mixed currencies, bad amounts or accounts."""


class UnknownCurrency(ValidationFailed, code="unknown_currency"):
    """The ledger has no such currency: it could post nothing in it."""


class PendingResolved(Conflict, code="pending_resolved"):
    """The hold was already posted or voided, or the transaction is not a hold."""
