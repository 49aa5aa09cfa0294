"""Ledger failures, each with a stable code."""

from __future__ import annotations

from marketplace.errors import Conflict, DomainError, PaymentRequired, ValidationFailed


class InsufficientFunds(PaymentRequired):
    """A wallet (or other debit-limited account) cannot cover the debit."""

    code = "insufficient_funds"

    def __init__(self, *, account_id: int, currency: str, missing_minor: int) -> None:
        super().__init__(
            f"The wallet lacks {missing_minor} minor units of {currency} for this operation.",
            extra={"missing_minor": missing_minor, "currency": currency},
        )
        self.account_id = account_id
        self.missing_minor = missing_minor


class LimitExceeded(Conflict):
    """A platform or vendor account's limit flag refuses the transaction."""

    code = "limit_exceeded"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class InvalidTransaction(DomainError):
    """The transaction is malformed: unbalanced, mixed currencies, bad amounts or accounts."""

    code = "invalid_transaction"


class UnknownCurrency(ValidationFailed):
    """The ledger has no such currency: it could post nothing in it."""

    code = "unknown_currency"


class PendingResolved(Conflict):
    """The hold was already posted or voided, or the transaction is not a hold."""

    code = "pending_resolved"
