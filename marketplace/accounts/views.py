"""Accounts API: registration and an organisation's API clients."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from marketplace.accounts import services
from marketplace.accounts.oauth import current, require_oauth
from marketplace.accounts.schemas import (
    ClientCreate,
    ClientCredentials,
    ClientList,
    OrganizationPublic,
    RegisterRequest,
    RegisterResponse,
    WhoAmI,
)
from marketplace.api import API_PREFIX, openapi, parse_json
from marketplace.db import get_session

bp = Blueprint("accounts", __name__, url_prefix=API_PREFIX)


@bp.post("/register")
@openapi(
    "Register a user and organisation; returns its first API client (secret shown once)",
    tag="accounts",
    body=RegisterRequest,
    response=RegisterResponse,
    status=201,
    errors=[409],
)
def register() -> Any:
    result = services.register(session=get_session(), request=parse_json(RegisterRequest))
    return jsonify(result.model_dump(mode="json")), 201


@bp.post("/organizations/<int:org_id>/clients")
@openapi(
    "Create another API client for your organisation (secret shown once)",
    tag="accounts",
    body=ClientCreate,
    response=ClientCredentials,
    status=201,
    scope="any",
    errors=[404],
)
@require_oauth()
def create_client(org_id: int) -> Any:
    session = get_session()
    org = services.get_organization(
        session=session, org_id=org_id, viewer_org_id=current.organization_id
    )
    body = parse_json(ClientCreate)
    creds = services.create_client(
        session=session, org=org, name=body.name, scopes=body.scopes, granting_scopes=current.scopes
    )
    return jsonify(creds.model_dump(mode="json")), 201


@bp.get("/organizations/<int:org_id>/clients")
@openapi(
    "List your organisation's API clients",
    tag="accounts",
    response=ClientList,
    scope="any",
    errors=[404],
)
@require_oauth()
def list_clients(org_id: int) -> Any:
    session = get_session()
    org = services.get_organization(
        session=session, org_id=org_id, viewer_org_id=current.organization_id
    )
    items = services.list_clients(session=session, org=org)
    return jsonify(ClientList(items=items).model_dump(mode="json"))


@bp.get("/me")
@openapi("Who the bearer token speaks for", tag="accounts", response=WhoAmI, scope="any")
@require_oauth()
def whoami() -> Any:
    token = current.token
    org = services.get_organization(
        session=get_session(), org_id=token.organization_id, viewer_org_id=token.organization_id
    )
    assert org.id is not None
    body = WhoAmI(
        client_id=token.client_id,
        organization=OrganizationPublic(id=org.id, name=org.name, roles=org.role_list),
        scopes=current.scopes,
        expires_at=token.get_expires_at(),
    )
    return jsonify(body.model_dump(mode="json"))
