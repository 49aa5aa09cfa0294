"""Accounts: registration, organisations, API clients. No Flask here."""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from marketplace.accounts.errors import RegistrationBusy, TooManyRegistrations
from marketplace.accounts.models import (
    Membership,
    OAuthClient,
    OAuthToken,
    Organization,
    User,
    WebSession,
    hash_secret,
)
from marketplace.accounts.schemas import (
    ClientCredentials,
    CreatedByClient,
    CreatedByUser,
    OrganizationPublic,
    RegisterRequest,
    RegisterResponse,
)
from marketplace.accounts.scopes import (
    CLIENTS_MANAGE,
    EXPLICIT_ONLY_SCOPES,
    ORG_ROLES,
    SANDBOX_RUN,
    join_scope,
    split_scope,
)
from marketplace.db import begin_write, utcnow
from marketplace.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from marketplace.ratelimit import WindowLimiter
from marketplace.rows import attributes

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


def hash_password(password: str) -> str:
    return _hasher.hash(password)


class HashingSlots:
    """Bounds the argon2 hashes running at once on a node.

    Each hash holds 64 MiB and a core for about a tenth of a second, and registration is open
    to anyone: without a bound, concurrent registrations cost memory without limit.
    """

    def __init__(self, slots_max: int, wait_s: float) -> None:
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(slots_max)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a hashing slot; 503 with Retry-After when none frees up within ``wait_s``."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise RegistrationBusy(
                "The server is busy registering other accounts; try again shortly.",
                headers={"Retry-After": "1"},
            )
        try:
            yield
        finally:
            self._slots.release()


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
    created_by: CreatedByUser | CreatedByClient | None = None
    if client.created_by_client_id is not None:
        created_by = CreatedByClient(client_id=client.created_by_client_id)
    elif client.created_by_user_id is not None:
        created_by = CreatedByUser(user_id=client.created_by_user_id)
    return ClientCredentials(
        client_id=client.client_id,
        client_secret=secret,
        name=client.name,
        scopes=split_scope(client.scope),
        created_at=client.created_at,
        created_by=created_by,
        last_used_at=client.last_used_at,
        revoked_at=client.revoked_at,
    )


def _add_client(
    session: Session,
    org: Organization,
    name: str,
    scopes: Iterable[str],
    *,
    created_by_user_id: int | None = None,
    created_by_client_id: str | None = None,
) -> tuple[OAuthClient, str]:
    secret = new_client_secret()
    assert org.id is not None
    client = OAuthClient(
        client_id=new_client_id(),
        client_secret_hash=hash_secret(secret),
        organization_id=org.id,
        name=name,
        scope=join_scope(scopes),
        created_by_user_id=created_by_user_id,
        created_by_client_id=created_by_client_id,
    )
    session.add(client)
    return client, secret


def _email_taken(session: Session, email: str) -> bool:
    return session.exec(select(User.id).where(User.email == email)).first() is not None


def admit_registration(*, limiter: WindowLimiter, address: str) -> None:
    """Count a registration from ``address``; 429 when the address has made too many lately.

    Counted once the body is valid (by the API and the registration page alike): from here
    every attempt costs a hash and may make an organisation (and so a claim on every trial).
    """
    wait_s = limiter.acquire(address)
    if wait_s:
        raise TooManyRegistrations(
            "Too many registrations from this address; try again later.",
            headers={"Retry-After": str(wait_s)},
        )


def _add_owner_and_client(
    session: Session, user: User, org: Organization, client_name: str
) -> tuple[OAuthClient, str]:
    """Add a new user as the owner of a new organisation, with its first client (all the
    scopes the organisation's roles allow); the client and its secret."""
    session.add(user)
    session.add(org)
    session.flush()
    assert user.id is not None and org.id is not None
    session.add(Membership(user_id=user.id, organization_id=org.id, role="owner"))
    return _add_client(session, org, client_name, org.allowed_scopes, created_by_user_id=user.id)


def register(
    *, session: Session, request: RegisterRequest, hashing: HashingSlots
) -> RegisterResponse:
    """Create a user, their organisation and its first API client (secret returned once).

    The first client holds every scope the roles allow, clients:manage included (asked for
    explicitly, it makes and revokes the organisation's other clients).
    """
    if _email_taken(session, request.email):
        raise Conflict("An account with this e-mail address exists.", code="email_taken")
    # Hash outside any transaction: a transaction held open through the hash would keep a
    # snapshot (and on SQLite, once writing, the database's only write lock) for nothing.
    session.rollback()
    with hashing.slot():
        password_hash = hash_password(request.password)
    try:
        begin_write(session)
        user = User(email=request.email, password_hash=password_hash)
        org = Organization(
            name=request.organization_name, roles=join_scope(request.organization_roles)
        )
        client, secret = _add_owner_and_client(session, user, org, "Default client")
        session.commit()
    except IntegrityError:
        # Two registrations racing for one address: the unique index decides.
        session.rollback()
        raise Conflict("An account with this e-mail address exists.", code="email_taken") from None
    assert user.id is not None and org.id is not None
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
    client, secret = _add_owner_and_client(session, user, org, f"{role} client")
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
    granting_client_id: str,
    granting_scopes: Iterable[str],
) -> ClientCredentials:
    """A new client for ``org``; it may not exceed the org's roles nor the granting token.

    Without ``scopes`` the client gets the granting token's scopes, less the explicit-only ones
    (a client that manages clients is made only on purpose).
    """
    held = set(granting_scopes)
    wanted = set(scopes) if scopes is not None else held - EXPLICIT_ONLY_SCOPES
    if not wanted:
        raise ValidationFailed("Name at least one scope for the client.", code="no_scopes")
    over_roles = wanted - org.allowed_scopes
    if over_roles:
        raise Forbidden(
            f"The organization's roles do not allow: {join_scope(over_roles)}",
            code="scope_not_allowed",
        )
    over_token = wanted - held
    if over_token:
        raise Forbidden(
            f"A client cannot grant scopes it does not hold: {join_scope(over_token)}",
            code="scope_not_allowed",
        )
    client, secret = _add_client(
        session, org, name, wanted, created_by_client_id=granting_client_id
    )
    session.commit()
    return _credentials(client, secret)


def list_clients(*, session: Session, org: Organization) -> list[ClientCredentials]:
    """Every client of the organisation, revoked ones included, oldest first."""
    rows = session.exec(
        select(OAuthClient)
        .where(OAuthClient.organization_id == org.id)
        .order_by(col(OAuthClient.id))
    ).all()
    return [_credentials(c, None) for c in rows]


def revoke_client(*, session: Session, org: Organization, client_id: str) -> ClientCredentials:
    """Revoke one of ``org``'s clients and every token it holds.

    A revoked client gets no more tokens (its secret no longer authenticates) and its tokens
    stop working. The organisation's last active client that can manage clients is kept:
    without it nobody could make or revoke clients again (409 ``last_manager_client``).
    """
    begin_write(session)
    # The client rows are locked (PostgreSQL; SQLite holds its write lock already) so that a
    # token issued at the same moment either commits first, and is revoked here, or finds the
    # client revoked (see the token endpoint's save hook).
    clients = session.exec(
        select(OAuthClient)
        .where(OAuthClient.organization_id == org.id)
        .order_by(col(OAuthClient.id))
        .with_for_update()
    ).all()
    target = next((c for c in clients if c.client_id == client_id), None)
    if target is None:
        session.rollback()
        raise NotFound("No such client in this organization.", code="client_not_found")
    if target.revoked_at is not None:
        session.rollback()
        raise Conflict("The client is already revoked.", code="client_revoked")
    managers = [
        c for c in clients if c.revoked_at is None and CLIENTS_MANAGE in split_scope(c.scope)
    ]
    if managers == [target]:
        session.rollback()
        raise Conflict(
            "This is the organization's last client that can manage clients; make another "
            "with clients:manage first.",
            code="last_manager_client",
        )
    target.revoked_at = utcnow()
    session.add(target)
    revoke_tokens(session=session, client_id=client_id)
    return _credentials(target, None)


def revoke_tokens(
    *, session: Session, client_id: str, access_token_hash: str | None = None
) -> list[str]:
    """Revoke the client's access tokens (only the one with ``access_token_hash`` if given).

    Every revocation goes through here: the RFC 7009 endpoint and client revocation. It
    commits the session's transaction (with whatever the caller changed in it) and returns the
    hashes of the tokens it revoked, so that anything keeping verified tokens can drop them.
    """
    where: list[sa.ColumnElement[bool]] = [
        col(OAuthToken.client_id) == client_id,
        col(OAuthToken.revoked).is_(False),
    ]
    if access_token_hash is not None:
        where.append(col(OAuthToken.access_token_hash) == access_token_hash)
    hashes = list(session.exec(select(OAuthToken.access_token_hash).where(*where)).all())
    if hashes:
        session.execute(
            sa.update(OAuthToken)
            .where(*where)
            .values(revoked=True)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return hashes


def get_organization_by_id(*, session: Session, org_id: int) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound("No such organization.", code="organization_not_found")
    return org


def list_organizations(
    *, session: Session, verified: bool | None, page: int, page_size: int
) -> tuple[list[OrganizationPublic], int]:
    """Organisations (newest first) and how many match, for administrators."""
    where: list[Any] = []
    if verified is not None:
        where.append(
            col(Organization.verified_at).is_not(None)
            if verified
            else col(Organization.verified_at).is_(None)
        )
    total = session.exec(select(sa.func.count()).select_from(Organization).where(*where)).one()
    rows = session.exec(
        select(Organization)
        .where(*where)
        .order_by(col(Organization.id).desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    return [OrganizationPublic.model_validate(org) for org in rows], int(total)


def verify_organization(*, session: Session, org_id: int) -> OrganizationPublic:
    """Mark an organisation as verified by the platform (idempotent: the first time stays)."""
    org = get_organization_by_id(session=session, org_id=org_id)
    if org.verified_at is None:
        org.verified_at = utcnow()
        session.add(org)
        session.commit()
    return OrganizationPublic.model_validate(org)


def grant_roles(*, session: Session, org_id: int, roles: Iterable[str]) -> Organization:
    org = get_organization_by_id(session=session, org_id=org_id)
    unknown = set(roles) - set(ORG_ROLES)
    if unknown:
        raise ValidationFailed(f"Unknown roles: {join_scope(unknown)}", code="invalid_role")
    org.roles = join_scope(set(org.role_list) | set(roles))
    session.add(org)
    session.commit()
    return org


# --- People in browsers ------------------------------------------------------------------------

# Verified against when the address is unknown, so that a wrong address costs as much time as a
# wrong password and the answer's timing does not tell which accounts exist.
_DUMMY_PASSWORD_HASH = _hasher.hash(secrets.token_urlsafe(16))

# The only scopes a page may hand to its own JavaScript: the try-it panel runs evaluations.
PAGE_TOKEN_SCOPES = frozenset({SANDBOX_RUN})
PAGE_CLIENT_PREFIX = "web-session:"


def new_session_token() -> str:
    return "jws_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Viewer:
    """The person behind a browser session and the organisation they act for."""

    session_id: int
    user_id: int
    email: str
    platform_role: str | None
    organization_id: int
    organization_name: str
    roles: tuple[str, ...]
    scopes: frozenset[str]
    expires_at: dt.datetime

    def may(self, scope: str) -> bool:
        """The same rule as for API tokens: a scope the organisation's roles allow."""
        return scope in self.scopes

    def has_role(self, role: str) -> bool:
        return role in self.roles


def authenticate(*, session: Session, email: str, password: str, hashing: HashingSlots) -> User:
    """The user with this address and password; 401 ``invalid_credentials`` otherwise.

    The check holds a hashing slot like registration does: a login costs an argon2 hash too.
    """
    user = session.exec(select(User).where(User.email == email.strip().lower())).first()
    session.rollback()  # no transaction held open through the hash
    with hashing.slot():
        ok = verify_password(user.password_hash if user else _DUMMY_PASSWORD_HASH, password)
    if user is None or not ok:
        raise Unauthorized("The e-mail address or password is wrong.", code="invalid_credentials")
    return user


def _membership_org(session: Session, user_id: int) -> Organization:
    org = session.exec(
        select(Organization)
        .join(Membership, Membership.organization_id == Organization.id)  # type: ignore[arg-type]
        .where(Membership.user_id == user_id)
        .order_by(Membership.id)  # type: ignore[arg-type]
    ).first()
    if org is None:
        raise Forbidden("The account belongs to no organisation.", code="no_organization")
    return org


@dataclass(frozen=True)
class WebSessions:
    """Browser sessions and the page's own tokens, with their lifetimes from the settings
    (built once by the pages' ``init_app``)."""

    session_ttl_s: int
    page_token_ttl_s: int

    def start(self, *, session: Session, user: User) -> tuple[str, Viewer]:
        return start_web_session(session=session, user=user, ttl_s=self.session_ttl_s)

    def page_token(
        self, *, session: Session, viewer: Viewer, scopes: Iterable[str]
    ) -> tuple[str, OAuthToken]:
        return mint_page_token(
            session=session, viewer=viewer, scopes=scopes, ttl_s=self.page_token_ttl_s
        )


def start_web_session(*, session: Session, user: User, ttl_s: int) -> tuple[str, Viewer]:
    """A new browser session for ``user`` in their (first) organisation; the token is returned
    once, for the cookie, and stored only as its digest."""
    assert user.id is not None
    org = _membership_org(session, user.id)
    if org.suspended:
        raise Forbidden("The organisation is suspended.", code="organization_suspended")
    token = new_session_token()
    row = WebSession(
        token_hash=hash_secret(token),
        user_id=user.id,
        organization_id=org.id or 0,
        expires_at=utcnow() + dt.timedelta(seconds=ttl_s),
    )
    session.add(row)
    session.commit()
    return token, _viewer(row, user, org)


def _viewer(row: WebSession, user: User, org: Organization) -> Viewer:
    assert row.id is not None
    return Viewer(
        session_id=row.id,
        **attributes(row, "user_id organization_id expires_at"),
        **attributes(user, "email platform_role"),
        organization_name=org.name,
        roles=tuple(org.role_list),
        scopes=org.allowed_scopes,
    )


def web_session_viewer(*, session: Session, token: str) -> Viewer | None:
    """Who the session cookie ``token`` speaks for, or None when it is unknown, expired,
    logged out, or its organisation is suspended (one query)."""
    if not token or len(token) > 128:
        return None
    found = session.exec(
        select(WebSession, User, Organization)
        .join(User, User.id == WebSession.user_id)  # type: ignore[arg-type]
        .join(Organization, Organization.id == WebSession.organization_id)  # type: ignore[arg-type]
        .where(WebSession.token_hash == hash_secret(token))
    ).first()
    if found is None:
        return None
    row, user, org = found
    if row.revoked_at is not None or row.expires_at <= utcnow() or org.suspended:
        return None
    return _viewer(row, user, org)


def end_web_session(*, session: Session, session_id: int) -> list[str]:
    """Log out: the session and every API token minted for its pages stop working now.

    Returns the revoked tokens' hashes (see :func:`revoke_tokens`).
    """
    row = session.get(WebSession, session_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
    return revoke_tokens(session=session, client_id=f"{PAGE_CLIENT_PREFIX}{session_id}")


def mint_page_token(
    *, session: Session, viewer: Viewer, scopes: Iterable[str], ttl_s: int
) -> tuple[str, OAuthToken]:
    """A short-lived access token for the page's own JavaScript, stored as its digest.

    It may carry only :data:`PAGE_TOKEN_SCOPES`, and of those only what the organisation's roles
    allow (the same rule as for every token); it lives at most ``ttl_s`` and never beyond the
    browser session, and logging out revokes it. Its ``client_id`` names the session.
    """
    wanted = set(scopes)
    refused = wanted - (PAGE_TOKEN_SCOPES & viewer.scopes)
    if refused or not wanted:
        raise Forbidden(
            f"A page cannot hold: {join_scope(refused) or '(no scope)'}", code="scope_not_allowed"
        )
    remaining_s = int((viewer.expires_at - utcnow()).total_seconds())
    if remaining_s <= 0:
        raise Unauthorized("The session has ended.", code="session_expired")
    token = "jpt_" + secrets.token_urlsafe(32)
    row = OAuthToken(
        access_token_hash=hash_secret(token),
        client_id=f"{PAGE_CLIENT_PREFIX}{viewer.session_id}",
        organization_id=viewer.organization_id,
        scope=join_scope(wanted),
        expires_in=min(ttl_s, remaining_s),
    )
    session.add(row)
    session.commit()
    return token, row
