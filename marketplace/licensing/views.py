"""Licensing API: trials, purchases, licences and refunds."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from marketplace.accounts.oauth import current
from marketplace.api import (
    API_PREFIX,
    IDEMPOTENCY_KEY,
    idempotency_key,
    parse_json,
    parse_query,
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
    RefundPublic,
)
from marketplace.operation import operation

bp = Blueprint("licensing", __name__, url_prefix=API_PREFIX)

TERMS_SHA256_EXAMPLE = "9f2c5d0c8e4b7a1f3e6d2b9c0a7f4e1d8c5b2a9f6e3d0c7b4a1f8e5d2c9b6a30"


@bp.post("/offers/<int:offer_id>/trial")
@operation(
    "Start the offer's trial, accepting its terms by their SHA-256",
    tag="licensing",
    body=AcceptTerms,
    response=LicensePublic,
    status=201,
    scope="licenses:write",
    errors=[
        "organization_not_verified",
        "offer_not_found",
        "trial_taken",
        "offer_retired",
        "terms_mismatch",
        "no_trial",
        "own_offer",
    ],
    examples={"offer_id": 2},
    example={"accept_terms_sha256": TERMS_SHA256_EXAMPLE},
)
def start_trial(offer_id: int) -> LicensePublic:
    body = parse_json(AcceptTerms)
    return services.start_trial(
        session=get_session(),
        organization_id=current.organization_id,
        offer_id=offer_id,
        accept_terms_sha256=body.accept_terms_sha256,
        client_id=current.token.client_id,
    )


@bp.post("/offers/<int:offer_id>/purchase")
@operation(
    "Buy the offer from your wallet (header Idempotency-Key); 402 when it cannot cover the price",
    tag="licensing",
    body=AcceptTerms,
    response=OrderPublic,
    status=201,
    scope="licenses:write",
    headers=[IDEMPOTENCY_KEY],
    errors=[
        "insufficient_funds",
        "offer_not_found",
        "already_licensed",
        "offer_retired",
        "terms_mismatch",
        "own_offer",
    ],
    examples={"offer_id": 2},
    example={"accept_terms_sha256": TERMS_SHA256_EXAMPLE},
)
def purchase(offer_id: int) -> Any:
    key = idempotency_key()
    body = parse_json(AcceptTerms)
    order, created = licensing_service(current_app).purchase(
        session=get_session(),
        organization_id=current.organization_id,
        offer_id=offer_id,
        accept_terms_sha256=body.accept_terms_sha256,
        idempotency_key=key,
        client_id=current.token.client_id,
    )
    return order, 201 if created else 200


@bp.get("/licenses")
@operation(
    "Your organisation's licences and trials with usage",
    tag="licensing",
    response=LicenseList,
    scope="any",
)
def list_licenses() -> LicenseList:
    items = services.list_licenses(session=get_session(), organization_id=current.organization_id)
    return LicenseList(items=items)


@bp.get("/licenses/<int:license_id>")
@operation(
    "One of your organisation's licences with usage",
    tag="licensing",
    response=LicensePublic,
    scope="any",
    errors=["license_not_found"],
)
def get_license(license_id: int) -> LicensePublic:
    return services.get_license(
        session=get_session(), organization_id=current.organization_id, license_id=license_id
    )


@bp.get("/orders")
@operation(
    "Your organisation's orders: purchases (role=buyer), sales (role=vendor), or both",
    tag="licensing",
    query=OrderQuery,
    response=OrderPage,
    scope="ledger:read",
    examples={"role": "buyer"},
)
def list_orders() -> OrderPage:
    return licensing_service(current_app).list_orders(
        session=get_session(),
        organization_id=current.organization_id,
        query=parse_query(OrderQuery),
    )


@bp.post("/orders/<int:order_id>/refund")
@operation(
    "Refund an order in full or in part (header Idempotency-Key); a full refund revokes the "
    "licence; money paid in through Stripe goes back to the buyer's payments",
    tag="licensing",
    body=RefundCreate,
    response=RefundPublic,
    status=201,
    scope="admin",
    headers=[IDEMPOTENCY_KEY],
    errors=[
        "order_not_found",
        "refund_exceeds_order",
        # The vendor's share has been paid out: the platform cannot take it back.
        "limit_exceeded",
    ],
    example={"amount_minor": 100_000, "reason": "Delivered a week late"},
)
def refund(order_id: int) -> RefundPublic:
    key = idempotency_key()
    body = parse_json(RefundCreate)
    return licensing_service(current_app).refund_order(
        session=get_session(), order_id=order_id, request=body, idempotency_key=key
    )
