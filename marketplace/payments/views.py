"""Wallet API: top-ups through the configured payment gateway, and balances."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request

from marketplace.accounts.oauth import current, require_oauth
from marketplace.api import API_PREFIX, openapi, parse_json
from marketplace.config import ConfigError
from marketplace.db import get_session
from marketplace.errors import DomainError
from marketplace.payments import services
from marketplace.payments.gateway import OfflineGateway, PaymentGateway
from marketplace.payments.schemas import TopUpCreate, TopUpPublic, WalletPublic

bp = Blueprint("payments", __name__, url_prefix=API_PREFIX)

IDEMPOTENCY_KEY_LENGTH_MAX = 128


def idempotency_key() -> str:
    """The request's ``Idempotency-Key`` header (required, 1 to 128 visible characters)."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key or len(key) > IDEMPOTENCY_KEY_LENGTH_MAX or not key.isprintable():
        raise DomainError(
            f"Send an Idempotency-Key header of 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} characters.",
            code="idempotency_key_required",
            status=400,
        )
    return key


def gateway() -> PaymentGateway:
    return current_app.extensions["payment_gateway"]  # type: ignore[no-any-return]


@bp.post("/wallet/top-ups")
@openapi(
    "Top up your wallet (header Idempotency-Key); offline payments are simulated",
    tag="wallet",
    body=TopUpCreate,
    response=TopUpPublic,
    status=201,
    scope="licenses:write",
    errors=[400, 409],
)
@require_oauth("licenses:write")
def create_top_up() -> Any:
    key = idempotency_key()
    body = parse_json(TopUpCreate)
    result = services.create_top_up(
        session=get_session(),
        gateway=gateway(),
        organization_id=current.organization_id,
        request=body,
        idempotency_key=key,
        amount_minor_max=current_app.extensions["settings"].top_up_amount_minor_max,
    )
    return jsonify(result.model_dump(mode="json")), 201


@bp.get("/wallet")
@openapi("Your wallet's balances per currency", tag="wallet", response=WalletPublic, scope="any")
@require_oauth()
def get_wallet() -> Any:
    result = services.wallet(session=get_session(), organization_id=current.organization_id)
    return jsonify(result.model_dump(mode="json"))


def init_app(app: Flask) -> None:
    settings = app.extensions["settings"]
    if settings.payments == "offline":
        app.extensions["payment_gateway"] = OfflineGateway()
    elif "payment_gateway" not in app.extensions:
        raise ConfigError(f"MARKETPLACE_PAYMENTS={settings.payments} has no gateway installed")
    app.register_blueprint(bp)
