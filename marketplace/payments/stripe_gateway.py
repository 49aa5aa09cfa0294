"""The Stripe gateway: PaymentIntents, Connect Transfers and Refunds through ``stripe.StripeClient``.

Only documented Stripe behaviour is relied on, so the same code talks to Stripe itself or to any
Stripe-compatible server at ``STRIPE_API_BASE``. The SDK's own retries are off: every call that
changes something is driven by the payments outbox, which retries with the same idempotency key
and backoff, and records what it learnt between attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import stripe

from marketplace.payments.gateway import (
    INTENT_CANCELED,
    INTENT_FAILED,
    INTENT_PENDING,
    INTENT_SUCCEEDED,
    REFUND_FAILED,
    REFUND_PENDING,
    REFUND_SUCCEEDED,
    PaymentIntent,
    ProviderConflict,
    ProviderRefund,
    ProviderRefused,
    ProviderTransfer,
    ProviderUnavailable,
    RefundRequest,
    TopUpRequest,
    TransferRequest,
)

log = logging.getLogger(__name__)

# PaymentIntent statuses that still wait for the payer or the card network.
_OPEN_INTENT_STATUSES = {
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "processing",
    "requires_capture",
}
# A refund that "requires_action" waits for the customer (some payment methods); it is pending.
_REFUND_STATUSES = {
    "succeeded": REFUND_SUCCEEDED,
    "pending": REFUND_PENDING,
    "requires_action": REFUND_PENDING,
    "failed": REFUND_FAILED,
    "canceled": REFUND_FAILED,
}


def _metadata(obj: Any) -> dict[str, str]:
    raw = obj.get("metadata") or {}
    return {str(k): str(v) for k, v in dict(raw).items()}


def intent_from_stripe(obj: Mapping[str, Any]) -> PaymentIntent:
    """Our view of a Stripe PaymentIntent object (from the API or from a webhook's payload)."""
    status = obj.get("status")
    failure = obj.get("last_payment_error") or None
    if status == "succeeded":
        ours = INTENT_SUCCEEDED
    elif status == "canceled":
        ours = INTENT_CANCELED
    elif status == "requires_payment_method" and failure:
        # Stripe returns a declined intent to requires_payment_method with the error attached.
        ours = INTENT_FAILED
    elif status in _OPEN_INTENT_STATUSES:
        ours = INTENT_PENDING
    else:
        raise ProviderConflict(f"Unknown PaymentIntent status {status!r}.")
    return PaymentIntent(
        status=ours,
        provider_ref=str(obj["id"]),
        client_secret=obj.get("client_secret"),
        amount_minor=int(obj.get("amount") or 0),
        amount_received_minor=int(obj.get("amount_received") or 0),
        currency=str(obj.get("currency") or "").upper(),
        failure_code=(failure.get("decline_code") or failure.get("code")) if failure else None,
        metadata=_metadata(obj),
    )


def transfer_from_stripe(obj: Mapping[str, Any]) -> ProviderTransfer:
    destination = obj.get("destination")
    if isinstance(destination, Mapping):
        destination = destination.get("id")
    return ProviderTransfer(
        provider_ref=str(obj["id"]),
        amount_minor=int(obj.get("amount") or 0),
        currency=str(obj.get("currency") or "").upper(),
        destination=str(destination or ""),
        reversed_minor=int(obj.get("amount_reversed") or 0),
        group=obj.get("transfer_group"),
        metadata=_metadata(obj),
    )


def refund_from_stripe(obj: Mapping[str, Any]) -> ProviderRefund:
    status = _REFUND_STATUSES.get(str(obj.get("status")))
    if status is None:
        raise ProviderConflict(f"Unknown Refund status {obj.get('status')!r}.")
    payment = obj.get("payment_intent")
    if isinstance(payment, Mapping):
        payment = payment.get("id")
    return ProviderRefund(
        provider_ref=str(obj["id"]),
        status=status,
        amount_minor=int(obj.get("amount") or 0),
        currency=str(obj.get("currency") or "").upper(),
        payment_ref=str(payment or ""),
        failure_code=obj.get("failure_reason"),
        metadata=_metadata(obj),
    )


def _translate(exc: stripe.StripeError) -> Exception:
    """Our error for the SDK's: transient, definitive, or one for a person."""
    status = exc.http_status
    code = getattr(exc, "code", None) or "stripe_error"
    should_retry = (exc.headers or {}).get("stripe-should-retry")
    if isinstance(exc, stripe.IdempotencyError):
        return ProviderConflict(f"Stripe refused an idempotency key: {exc.user_message}")
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        return ProviderUnavailable("Stripe could not be reached; the call will be retried.")
    if should_retry == "true" or status is None or status == 409 or status >= 500:
        return ProviderUnavailable("Stripe answered with a transient error.")
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        # A wrong or revoked key is ours to fix; retrying later (after the fix) is right.
        log.error("Stripe refused the API key: %s", exc.user_message)
        return ProviderUnavailable("The payment provider refused our credentials.")
    decline = getattr(exc, "error", None)
    decline_code = getattr(decline, "decline_code", None) if decline is not None else None
    return ProviderRefused(
        exc.user_message or "Stripe refused the request.",
        code=str(decline_code or code),
    )


class StripeGateway:
    """PaymentIntents for top-ups, Connect Transfers for payouts, Refunds for money returned."""

    name = "stripe"
    simulated = False

    def __init__(self, *, api_key: str, api_base: str = "", timeout_s: float = 30.0) -> None:
        base_addresses: dict[str, str] = {}
        if api_base:
            base = api_base.rstrip("/")
            base_addresses = {"api": base, "connect": base, "files": base}
        self._client = stripe.StripeClient(
            api_key,
            base_addresses=base_addresses,  # type: ignore[arg-type]
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout_s),
        )

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The SDK call's object as a plain dict; SDK errors translated into ours."""
        try:
            return fn(*args, **kwargs).to_dict()  # type: ignore[no-any-return]
        except stripe.StripeError as exc:
            raise _translate(exc) from None

    def create_top_up(self, request: TopUpRequest) -> PaymentIntent:
        intent = self._call(
            self._client.v1.payment_intents.create,
            params={
                "amount": request.amount_minor,
                "currency": request.currency.lower(),
                "automatic_payment_methods": {"enabled": True},
                "metadata": dict(request.metadata),
            },
            options={"idempotency_key": request.idempotency_key},
        )
        return intent_from_stripe(intent)

    def get_top_up(self, provider_ref: str) -> PaymentIntent:
        return intent_from_stripe(
            self._call(self._client.v1.payment_intents.retrieve, provider_ref)
        )

    def cancel_top_up(self, *, idempotency_key: str, provider_ref: str) -> PaymentIntent:
        intent = self._call(
            self._client.v1.payment_intents.cancel,
            provider_ref,
            params={"cancellation_reason": "abandoned"},
            options={"idempotency_key": idempotency_key},
        )
        return intent_from_stripe(intent)

    def check_payout_account(self, account_ref: str) -> None:
        try:
            account = self._client.v1.accounts.retrieve(account_ref).to_dict()
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                raise ProviderRefused(
                    "Stripe knows no such connected account.", code="payout_account_unknown"
                ) from None
            raise _translate(exc) from None
        except stripe.StripeError as exc:
            raise _translate(exc) from None
        capabilities = account.get("capabilities") or {}
        if capabilities.get("transfers") != "active":
            raise ProviderRefused(
                "The connected account cannot receive transfers yet (capability not active).",
                code="payout_account_inactive",
            )

    def create_transfer(self, request: TransferRequest) -> ProviderTransfer:
        transfer = self._call(
            self._client.v1.transfers.create,
            params={
                "amount": request.amount_minor,
                "currency": request.currency.lower(),
                "destination": request.destination,
                "transfer_group": request.transfer_group,
                "metadata": dict(request.metadata),
            },
            options={"idempotency_key": request.idempotency_key},
        )
        return transfer_from_stripe(transfer)

    def get_transfer(self, provider_ref: str) -> ProviderTransfer:
        return transfer_from_stripe(self._call(self._client.v1.transfers.retrieve, provider_ref))

    def create_refund(self, request: RefundRequest) -> ProviderRefund:
        refund = self._call(
            self._client.v1.refunds.create,
            params={
                "payment_intent": request.payment_ref,
                "amount": request.amount_minor,
                "metadata": dict(request.metadata),
            },
            options={"idempotency_key": request.idempotency_key},
        )
        return refund_from_stripe(refund)

    def get_refund(self, provider_ref: str) -> ProviderRefund:
        return refund_from_stripe(self._call(self._client.v1.refunds.retrieve, provider_ref))

    def list_objects(self, kind: str, *, created_gte: int, limit_max: int) -> list[Any]:
        """Objects of ``kind`` (payment_intents, transfers, refunds) created since a time.

        Used by the reconciliation report to find objects at Stripe that our records miss.
        """
        service = getattr(self._client.v1, kind)
        out: list[Any] = []
        params: dict[str, Any] = {"limit": 100, "created": {"gte": created_gte}}
        while len(out) < limit_max:
            page = self._call(service.list, params=params)
            out.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                break
            params["starting_after"] = page["data"][-1]["id"]
        return out[:limit_max]
