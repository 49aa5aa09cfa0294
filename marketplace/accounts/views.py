"""Accounts API: registration and an organisation's API clients."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from marketplace.accounts import services
from marketplace.accounts.oauth import current, forget_client_tokens, require_oauth
from marketplace.accounts.schemas import (
    ClientCreate,
    ClientCredentials,
    ClientList,
    OrganizationPublic,
    RegisterRequest,
    RegisterResponse,
    WhoAmI,
)
from marketplace.accounts.scopes import ADMIN, CLIENTS_MANAGE
from marketplace.api import API_PREFIX, openapi, parse_json
from marketplace.db import get_session
from marketplace.errors import Forbidden

bp = Blueprint("accounts", __name__, url_prefix=API_PREFIX)


@bp.post("/register")
@openapi(
    "Register a user and organisation; returns its first API client (secret shown once)",
    tag="accounts",
    body=RegisterRequest,
    response=RegisterResponse,
    status=201,
    errors=[409, 429, 503],
    error_codes={
        409: ["email_taken"],
        429: ["too_many_registrations"],
        503: ["registration_busy"],
    },
    example={
        "email": "newcomer@example.test",
        "password": "Correct-Horse-9-Battery",
        "organization_name": "Example Labs",
        "organization_roles": ["buyer"],
    },
)
def register() -> Any:
    body = parse_json(RegisterRequest)
    services.admit_registration(
        limiter=current_app.extensions["registration_limiter"], address=request.remote_addr or ""
    )
    result = services.register(
        session=get_session(), request=body, hashing=current_app.extensions["password_hashing"]
    )
    return jsonify(result.model_dump(mode="json")), 201


@bp.post("/organizations/<int:org_id>/clients")
@openapi(
    "Create another API client for your organisation (secret shown once)",
    tag="accounts",
    body=ClientCreate,
    response=ClientCredentials,
    status=201,
    scope=CLIENTS_MANAGE,
    errors=[404],
    error_codes={404: ["organization_not_found"], 403: ["scope_not_allowed", "insufficient_scope"]},
    example={"name": "CI pipeline", "scopes": ["models:read"]},
)
@require_oauth(CLIENTS_MANAGE)
def create_client(org_id: int) -> Any:
    session = get_session()
    org = services.get_organization(
        session=session, org_id=org_id, viewer_org_id=current.organization_id
    )
    body = parse_json(ClientCreate)
    creds = services.create_client(
        session=session,
        org=org,
        name=body.name,
        scopes=body.scopes,
        granting_client_id=current.token.client_id,
        granting_scopes=current.scopes,
    )
    return jsonify(creds.model_dump(mode="json")), 201


@bp.get("/organizations/<int:org_id>/clients")
@openapi(
    "List your organisation's API clients",
    tag="accounts",
    response=ClientList,
    scope="any",
    errors=[404],
    error_codes={404: ["organization_not_found"]},
)
@require_oauth()
def list_clients(org_id: int) -> Any:
    session = get_session()
    org = services.get_organization(
        session=session, org_id=org_id, viewer_org_id=current.organization_id
    )
    items = services.list_clients(session=session, org=org)
    return jsonify(ClientList(items=items).model_dump(mode="json"))


@bp.delete("/organizations/<int:org_id>/clients/<client_id>")
@openapi(
    "Revoke one of your organisation's API clients and every token it holds",
    tag="accounts",
    response=ClientCredentials,
    scope=CLIENTS_MANAGE,
    errors=[404, 409],
    error_codes={404: ["organization_not_found", "client_not_found"], 409: ["last_manager_client"]},
    examples={"client_id": "jc_Example0ClientId0000000"},
)
@require_oauth(CLIENTS_MANAGE)
def revoke_client(org_id: int, client_id: str) -> Any:
    session = get_session()
    org = services.get_organization(
        session=session, org_id=org_id, viewer_org_id=current.organization_id
    )
    revoked = services.revoke_client(session=session, org=org, client_id=client_id)
    forget_client_tokens(client_id)
    return jsonify(revoked.model_dump(mode="json"))


@bp.post("/organizations/<int:org_id>/verify")
@openapi(
    "Mark an organisation as verified: offers may reserve trials for verified ones (admin)",
    tag="accounts",
    response=OrganizationPublic,
    scope=ADMIN,
    errors=[404],
    error_codes={404: ["organization_not_found"]},
    examples={"org_id": 2},
)
@require_oauth(ADMIN)
def verify_organization(org_id: int) -> Any:
    session = get_session()
    admin = services.get_organization_by_id(session=session, org_id=current.organization_id)
    if not admin.has_role("admin"):
        raise Forbidden("Only administrators may verify organizations.")
    verified = services.verify_organization(session=session, org_id=org_id)
    return jsonify(verified.model_dump(mode="json"))


@bp.get("/me")
@openapi("Who the bearer token speaks for", tag="accounts", response=WhoAmI, scope="any")
@require_oauth()
def whoami() -> Any:
    token = current.token
    org = services.get_organization(
        session=get_session(), org_id=token.organization_id, viewer_org_id=token.organization_id
    )
    body = WhoAmI(
        client_id=token.client_id,
        organization=services.organization_public(org),
        scopes=current.scopes,
        expires_at=token.get_expires_at(),
    )
    return jsonify(body.model_dump(mode="json"))
