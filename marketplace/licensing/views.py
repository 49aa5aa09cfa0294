"""Licensing API: trials, purchases, licences and refunds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, current_app

from marketplace.accounts.oauth import current
from marketplace.accounts.scopes import ADMIN, LEDGER_READ, LICENSES_WRITE
from marketplace.api import (
    API_PREFIX,
    IDEMPOTENCY_KEY,
    idempotency_key,
    parse_json,
)
from marketplace.db import get_session
from marketplace.licensing import licensing_service, services
from marketplace.licensing.schemas import (
    AcceptTerms,
    LicenseList,
    LicensePublic,
    OrderPage,
    OrderPublic,
    OrderQuery,
    RefundCreate,
)
from marketplace.operation import for_caller, operations

bp = Blueprint("licensing", __name__, url_prefix=API_PREFIX)
T = TypeVar("T")

TERMS_SHA256_EXAMPLE = "9f2c5d0c8e4b7a1f3e6d2b9c0a7f4e1d8c5b2a9f6e3d0c7b4a1f8e5d2c9b6a30"
# Why an offer's terms cannot be accepted, be it for a trial or a purchase.
OFFER_ACCEPTANCE_ERRORS = ("offer_not_found", "offer_retired", "terms_mismatch", "own_offer")

operation = operations(tag="licensing", scope="any")
# A trial and a purchase both accept an offer's terms, by their hash, and make a licence.
accept_offer = operations(
    tag="licensing",
    scope=LICENSES_WRITE,
    body=AcceptTerms,
    status=201,
    examples={"offer_id": 2},
    example={"accept_terms_sha256": TERMS_SHA256_EXAMPLE},
)


def _accept(accept: Callable[..., T], offer_id: int, **more: Any) -> T:
    """The caller's organisation accepts the offer's terms, by the hash the body sends."""
    body = parse_json(AcceptTerms)
    return for_caller(
        accept,
        offer_id=offer_id,
        accept_terms_sha256=body.accept_terms_sha256,
        client_id=current.token.client_id,
        **more,
    )


@bp.post("/offers/<int:offer_id>/trial")
@accept_offer(
    "Start the offer's trial, accepting its terms by their SHA-256",
    errors=["organization_not_verified", "trial_taken", *OFFER_ACCEPTANCE_ERRORS, "no_trial"],
)
def start_trial(offer_id: int) -> LicensePublic:
    return _accept(services.start_trial, offer_id)


@bp.post("/offers/<int:offer_id>/purchase")
@accept_offer(
    "Buy the offer from your wallet (header Idempotency-Key); 402 when it cannot cover the price",
    response=OrderPublic,
    headers=[IDEMPOTENCY_KEY],
    replay_status=200,
    errors=["insufficient_funds", "already_licensed", *OFFER_ACCEPTANCE_ERRORS],
)
def purchase(offer_id: int) -> Any:
    key = idempotency_key()
    order, created = _accept(licensing_service(current_app).purchase, offer_id, idempotency_key=key)
    return order, 201 if created else 200


@bp.get("/licenses")
@operation("Your organisation's licences and trials with usage")
def list_licenses() -> LicenseList:
    return LicenseList(items=for_caller(services.list_licenses))


@bp.get("/licenses/<int:license_id>")
@operation("One of your organisation's licences with usage", errors=["license_not_found"])
def get_license(license_id: int) -> LicensePublic:
    return for_caller(services.get_license, license_id=license_id)


@bp.get("/orders")
@operation(
    "Your organisation's orders: purchases (role=buyer), sales (role=vendor), or both",
    scope=LEDGER_READ,
    examples={"role": "buyer"},
)
def list_orders(query: OrderQuery) -> OrderPage:
    return for_caller(licensing_service(current_app).list_orders, query=query)


@bp.post("/orders/<int:order_id>/refund")
@operation(
    "Refund an order in full or in part (header Idempotency-Key); a full refund revokes the "
    "licence; money paid in through Stripe goes back to the buyer's payments",
    body=RefundCreate,
    status=201,
    scope=ADMIN,
    headers=[IDEMPOTENCY_KEY],
    replay_status=200,
    errors=[
        "order_not_found",
        "refund_exceeds_order",
        # The vendor's share has been paid out: the platform cannot take it back.
        "limit_exceeded",
    ],
    example={"amount_minor": 100_000, "reason": "Delivered a week late"},
)
def refund(order_id: int) -> Any:
    key = idempotency_key()
    body = parse_json(RefundCreate)
    made, created = licensing_service(current_app).refund_order(
        session=get_session(), order_id=order_id, request=body, idempotency_key=key
    )
    return made, 201 if created else 200
