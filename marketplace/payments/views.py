"""Payments API: wallet top-ups and withdrawals, the Stripe webhook, payout accounts, payouts and
the provider-call outbox for administrators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel

from marketplace.accounts.oauth import current
from marketplace.accounts.scopes import ADMIN, LEDGER_READ, LICENSES_WRITE, PAYOUTS_WRITE
from marketplace.api import (
    API_PREFIX,
    IDEMPOTENCY_KEY,
    HeaderParam,
    idempotency_key,
    parse_json,
)
from marketplace.config import Settings
from marketplace.db import get_owned, get_session
from marketplace.errors import Forbidden, NotFound, PayloadTooLarge
from marketplace.operation import for_caller, operations
from marketplace.payments import outbox, payments_service, refunds, services
from marketplace.payments.models import PayoutAccount
from marketplace.payments.schemas import (
    OutboxList,
    OutboxPublic,
    OutboxQuery,
    PayoutAccountPublic,
    PayoutAccountSet,
    PayoutList,
    PayoutQuery,
    PayoutRunRequest,
    TopUpCreate,
    TopUpPublic,
    WalletPublic,
    WithdrawalCreate,
    WithdrawalPublic,
)
from marketplace.payments.services import PaymentsService

bp = Blueprint("payments", __name__, url_prefix=API_PREFIX)

OUTBOX_PAGE_MAX = 200
STRIPE_SIGNATURE = HeaderParam(
    "Stripe-Signature",
    "Stripe's signature of the body: `t=TIMESTAMP,v1=HMAC-SHA256` with the endpoint's secret.",
    True,
    {"type": "string"},
    "t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd",
)

wallet_operation = operations(tag="wallet", scope="any")
# Money into or out of the wallet: created once per Idempotency-Key, replayed after.
wallet_change = operations(
    tag="wallet", scope=LICENSES_WRITE, status=201, headers=[IDEMPOTENCY_KEY], replay_status=200
)
payout_operation = operations(tag="payouts")
# The provider's side of payments is the administrators' (the webhook is signed, not scoped).
provider_operation = operations(tag="payments", scope=ADMIN)


def payments() -> PaymentsService:
    return payments_service(current_app)


def _create_for_own_wallet(create: Callable[..., tuple[Any, bool]], body: type[BaseModel]) -> Any:
    """An idempotent create on the caller's wallet: 201 when made now, 200 when replayed."""
    key = idempotency_key()
    result, created = for_caller(create, request=parse_json(body), idempotency_key=key)
    return result, 201 if created else 200


@bp.post("/wallet/top-ups")
@wallet_change(
    "Top up your wallet (header Idempotency-Key): 201 with the payment's client_secret for the "
    "payer to confirm; the wallet is credited when the payment succeeds (offline: at once, "
    "simulated)",
    body=TopUpCreate,
    response=TopUpPublic,
    errors=[
        "too_many_open_top_ups",
        "validation_failed",
        "top_up_too_large",
        "unknown_currency",
        "payment_provider_unavailable",
    ],
    example={"amount_minor": 2_000_000, "currency": "CNY"},
)
def create_top_up() -> Any:
    return _create_for_own_wallet(payments().create_top_up, TopUpCreate)


@bp.get("/wallet/top-ups/<int:top_up_id>")
@wallet_operation("One of your top-ups and its state", errors=["top_up_not_found"])
def get_top_up(top_up_id: int) -> TopUpPublic:
    return for_caller(services.get_top_up, top_up_id=top_up_id)


@bp.get("/wallet")
@wallet_operation("Your wallet's balances per currency")
def get_wallet() -> WalletPublic:
    return for_caller(services.wallet)


@bp.post("/wallet/withdrawals")
@wallet_change(
    "Take unused wallet money back (header Idempotency-Key): refunded to your payments, newest "
    "first; 409 beyond what they can take back, 402 beyond the wallet",
    body=WithdrawalCreate,
    response=WithdrawalPublic,
    errors=["insufficient_funds", "withdrawal_exceeds_refundable", "withdrawal_unavailable"],
    example={"amount_minor": 100, "currency": "CNY"},
)
def create_withdrawal() -> Any:
    return _create_for_own_wallet(payments().withdraw, WithdrawalCreate)


@bp.get("/wallet/withdrawals/<int:withdrawal_id>")
@wallet_operation("One of your withdrawals with its refunds", errors=["withdrawal_not_found"])
def get_withdrawal(withdrawal_id: int) -> WithdrawalPublic:
    return for_caller(refunds.get_withdrawal, withdrawal_id=withdrawal_id)


@bp.post("/payments/stripe/webhook")
@provider_operation(
    "Stripe's event deliveries: signed (Stripe-Signature, 300 s tolerance), each event applied "
    "once; 400 on a bad or stale signature",
    scope=None,
    headers=[STRIPE_SIGNATURE],
    errors=["signature_invalid", "signature_stale", "webhook_unavailable", "payload_too_large"],
    example={"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {}}},
)
def stripe_webhook() -> Any:
    settings: Settings = current_app.extensions["settings"]
    if settings.payments != "stripe":
        raise NotFound("Stripe payments are not configured.", code="webhook_unavailable")
    bytes_max = settings.json_body_bytes_max
    if request.content_length is not None and request.content_length > bytes_max:
        raise PayloadTooLarge(f"Webhook bodies are limited to {bytes_max} bytes.")
    request.max_content_length = bytes_max
    applied = payments().apply_webhook(
        get_session(), request.get_data(cache=False), request.headers.get("Stripe-Signature")
    )
    return jsonify({"received": True, "event": applied.event_id, "outcome": applied.outcome})


@bp.put("/organizations/<int:org_id>/payout-account")
@payout_operation(
    "Link your vendor organisation's connected account (Stripe acct_...) for payouts",
    scope=PAYOUTS_WRITE,
    errors=[
        "organization_not_found",
        "payout_account_inactive",
        "payout_account_unknown",
        "payment_provider_unavailable",
    ],
    example={"account_id": "acct_1DemoVendor"},
)
def set_payout_account(org_id: int, body: PayoutAccountSet) -> PayoutAccountPublic:
    return payments().set_payout_account(
        session=get_session(),
        organization_id=org_id,
        viewer_organization_id=current.organization_id,
        account_ref=body.account_id,
    )


@bp.get("/organizations/<int:org_id>/payout-account")
@payout_operation(
    "Your organisation's payout account", scope="any", errors=["payout_account_not_found"]
)
def get_payout_account(org_id: int) -> PayoutAccountPublic:
    missing = NotFound("No payout account is linked.", code="payout_account_not_found")
    row = get_owned(get_session(), PayoutAccount, org_id, current.organization_id, missing)
    return PayoutAccountPublic.model_validate(row)


@bp.get("/payouts")
@payout_operation(
    "Your organisation's payouts, newest first (administrators: any vendor's)",
    scope=LEDGER_READ,
    examples={"organization_id": 1},
)
def list_payouts(query: PayoutQuery) -> PayoutList:
    org_id = current.organization_id
    if query.organization_id is not None and query.organization_id != org_id:
        if "admin" not in current.scopes:
            raise Forbidden("Only administrators see other vendors' payouts.", code="forbidden")
        org_id = query.organization_id
    items = payments().list_payouts(session=get_session(), organization_id=org_id)
    return PayoutList(items=items)


@bp.post("/payouts/run")
@payout_operation(
    "Pay every linked vendor's payable balance above the minimum out (administrators)",
    scope=ADMIN,
    example={"organization_id": 1},
)
def run_payouts(body: PayoutRunRequest) -> PayoutList:
    items = payments().pay_out(session=get_session(), organization_id=body.organization_id)
    return PayoutList(items=items)


@bp.get("/payments/outbox")
@provider_operation(
    "Provider calls, newest first, e.g. ?status=failed for those waiting for a retry "
    "(administrators)",
    examples={"status": "failed"},
)
def list_outbox(query: OutboxQuery) -> OutboxList:
    rows = outbox.listing(get_session(), status=query.status, limit=OUTBOX_PAGE_MAX)
    return OutboxList(items=[OutboxPublic.model_validate(r) for r in rows])


@bp.post("/payments/outbox/<int:message_id>/retry")
@provider_operation(
    "Send a failed provider call again with its original idempotency key (administrators)",
    errors=["outbox_not_found", "outbox_not_failed"],
)
def retry_outbox(message_id: int) -> OutboxPublic:
    session = get_session()
    payments().retry_call(session, message_id)
    row = session.get(outbox.PaymentOutbox, message_id, populate_existing=True)
    return OutboxPublic.model_validate(row)
