"""Accounts: registration, organisations, API clients. No Flask here."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from marketplace.accounts.models import (
    Membership,
    OAuthClient,
    Organization,
    User,
    hash_secret,
)
from marketplace.accounts.schemas import ClientCredentials, RegisterRequest, RegisterResponse
from marketplace.accounts.scopes import ORG_ROLES, join_scope, split_scope
from marketplace.errors import Conflict, Forbidden, NotFound, ValidationFailed

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_client_id() -> str:
    return "jc_" + secrets.token_urlsafe(18)


def new_client_secret() -> str:
    return "jcs_" + secrets.token_urlsafe(32)


def _credentials(client: OAuthClient, secret: str | None) -> ClientCredentials:
    return ClientCredentials(
        client_id=client.client_id,
        client_secret=secret,
        name=client.name,
        scopes=split_scope(client.scope),
        created_at=client.created_at,
    )


def _add_client(
    session: Session, org: Organization, name: str, scopes: Iterable[str]
) -> tuple[OAuthClient, str]:
    secret = new_client_secret()
    assert org.id is not None
    client = OAuthClient(
        client_id=new_client_id(),
        client_secret_hash=hash_secret(secret),
        organization_id=org.id,
        name=name,
        scope=join_scope(scopes),
    )
    session.add(client)
    return client, secret


def register(*, session: Session, request: RegisterRequest) -> RegisterResponse:
    """Create a user, their organisation and its first API client (secret returned once)."""
    if session.exec(select(User).where(User.email == request.email)).first() is not None:
        raise Conflict("An account with this e-mail address exists.", code="email_taken")
    try:
        user = User(email=request.email, password_hash=hash_password(request.password))
        org = Organization(
            name=request.organization_name, roles=join_scope(request.organization_roles)
        )
        session.add(user)
        session.add(org)
        session.flush()
        assert user.id is not None and org.id is not None
        session.add(Membership(user_id=user.id, organization_id=org.id, role="owner"))
        client, secret = _add_client(session, org, "Default client", org.allowed_scopes)
        session.commit()
    except IntegrityError:
        # Two registrations racing for one address: the unique index decides.
        session.rollback()
        raise Conflict("An account with this e-mail address exists.", code="email_taken") from None
    return RegisterResponse(
        user_id=user.id, organization_id=org.id, client=_credentials(client, secret)
    )


def create_platform_user(
    *, session: Session, email: str, password: str, role: str
) -> tuple[User, Organization, ClientCredentials]:
    """An auditor or administrator with a platform organisation and its first client."""
    if role not in ("auditor", "admin"):
        raise ValidationFailed(f"role must be auditor or admin, not {role!r}", code="invalid_role")
    if session.exec(select(User).where(User.email == email)).first() is not None:
        raise Conflict("An account with this e-mail address exists.", code="email_taken")
    user = User(email=email, password_hash=hash_password(password), platform_role=role)
    org = Organization(name=f"Platform {role}: {email}", roles=role)
    session.add(user)
    session.add(org)
    session.flush()
    assert user.id is not None and org.id is not None
    session.add(Membership(user_id=user.id, organization_id=org.id, role="owner"))
    client, secret = _add_client(session, org, f"{role} client", org.allowed_scopes)
    session.commit()
    return user, org, _credentials(client, secret)


def get_organization(*, session: Session, org_id: int, viewer_org_id: int) -> Organization:
    """The organisation, only for its own members; others learn nothing, not even existence."""
    org = session.get(Organization, org_id)
    if org is None or org.id != viewer_org_id:
        raise NotFound("No such organization.", code="organization_not_found")
    return org


def create_client(
    *,
    session: Session,
    org: Organization,
    name: str,
    scopes: list[str] | None,
    granting_scopes: Iterable[str],
) -> ClientCredentials:
    """A new client for ``org``; it may not exceed the org's roles nor the granting token."""
    wanted = set(scopes) if scopes is not None else set(org.allowed_scopes)
    over_roles = wanted - org.allowed_scopes
    if over_roles:
        raise Forbidden(
            f"The organization's roles do not allow: {join_scope(over_roles)}",
            code="scope_not_allowed",
        )
    over_token = wanted - set(granting_scopes)
    if over_token:
        raise Forbidden(
            f"A client cannot grant scopes it does not hold: {join_scope(over_token)}",
            code="scope_not_allowed",
        )
    client, secret = _add_client(session, org, name, wanted)
    session.commit()
    return _credentials(client, secret)


def list_clients(*, session: Session, org: Organization) -> list[ClientCredentials]:
    rows = session.exec(
        select(OAuthClient).where(OAuthClient.organization_id == org.id).order_by(OAuthClient.id)  # type: ignore[arg-type]
    ).all()
    return [_credentials(c, None) for c in rows]


def grant_roles(*, session: Session, org_id: int, roles: Iterable[str]) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound("No such organization.", code="organization_not_found")
    unknown = set(roles) - set(ORG_ROLES)
    if unknown:
        raise ValidationFailed(f"Unknown roles: {join_scope(unknown)}", code="invalid_role")
    org.roles = join_scope(set(org.role_list) | set(roles))
    session.add(org)
    session.commit()
    return org
