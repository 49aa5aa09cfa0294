"""Accounts API: registration and an organisation's API clients."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from marketplace.accounts import services
from marketplace.accounts.models import Organization
from marketplace.accounts.oauth import current, forget_client_tokens
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
from marketplace.api import API_PREFIX, parse_json
from marketplace.db import get_session
from marketplace.errors import Forbidden
from marketplace.operation import operations

bp = Blueprint("accounts", __name__, url_prefix=API_PREFIX)
operation = operations(tag="accounts", scope="any")
# A client's secret outlives any token: creating or revoking one takes a scope of its own.
client_management = operations(tag="accounts", scope=CLIENTS_MANAGE)


@bp.post("/register")
@operation(
    "Register a user and organisation; returns its first API client (secret shown once)",
    status=201,
    scope=None,
    errors=["email_taken", "too_many_registrations", "registration_busy"],
    example={
        "email": "newcomer@example.test",
        "password": "Correct-Horse-9-Battery",
        "organization_name": "Example Labs",
        "organization_roles": ["buyer"],
    },
)
def register(body: RegisterRequest) -> RegisterResponse:
    services.admit_registration(
        limiter=current_app.extensions["registration_limiter"], address=request.remote_addr or ""
    )
    return services.register(
        session=get_session(), request=body, hashing=current_app.extensions["password_hashing"]
    )


def _own_organization(org_id: int) -> Organization:
    """The path's organisation, which must be the token's (another one is not found)."""
    return services.get_organization(
        session=get_session(), org_id=org_id, viewer_org_id=current.organization_id
    )


@bp.post("/organizations/<int:org_id>/clients")
@client_management(
    "Create another API client for your organisation (secret shown once)",
    body=ClientCreate,
    status=201,
    errors=["organization_not_found", "scope_not_allowed"],
    example={"name": "CI pipeline", "scopes": ["models:read"]},
)
def create_client(org_id: int) -> ClientCredentials:
    org = _own_organization(org_id)
    body = parse_json(ClientCreate)
    return services.create_client(
        session=get_session(),
        org=org,
        name=body.name,
        scopes=body.scopes,
        granting_client_id=current.token.client_id,
        granting_scopes=current.scopes,
    )


@bp.get("/organizations/<int:org_id>/clients")
@operation("List your organisation's API clients", errors=["organization_not_found"])
def list_clients(org_id: int) -> ClientList:
    org = _own_organization(org_id)
    return ClientList(items=services.list_clients(session=get_session(), org=org))


@bp.delete("/organizations/<int:org_id>/clients/<client_id>")
@client_management(
    "Revoke one of your organisation's API clients and every token it holds",
    errors=["organization_not_found", "client_not_found", "last_manager_client"],
    examples={"client_id": "jc_Example0ClientId0000000"},
)
def revoke_client(org_id: int, client_id: str) -> ClientCredentials:
    org = _own_organization(org_id)
    revoked = services.revoke_client(session=get_session(), org=org, client_id=client_id)
    forget_client_tokens(client_id)
    return revoked


@bp.post("/organizations/<int:org_id>/verify")
@operation(
    "Mark an organisation as verified: offers may reserve trials for verified ones (admin)",
    scope=ADMIN,
    errors=["organization_not_found"],
    examples={"org_id": 2},
)
def verify_organization(org_id: int) -> OrganizationPublic:
    session = get_session()
    admin = services.get_organization_by_id(session=session, org_id=current.organization_id)
    if not admin.has_role("admin"):
        raise Forbidden("Only administrators may verify organizations.")
    return services.verify_organization(session=session, org_id=org_id)


@bp.get("/me")
@operation("Who the bearer token speaks for")
def whoami() -> WhoAmI:
    token = current.token
    org = services.get_organization(
        session=get_session(), org_id=token.organization_id, viewer_org_id=token.organization_id
    )
    return WhoAmI(
        client_id=token.client_id,
        organization=OrganizationPublic.model_validate(org),
        scopes=current.scopes,
        expires_at=token.get_expires_at(),
    )
