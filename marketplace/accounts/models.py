"""Users, organisations, memberships and OAuth2 clients and tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from marketplace.accounts.scopes import EXPLICIT_ONLY_SCOPES, allowed_scopes, split_scope
from marketplace.db import UTCDateTime, utcnow


def _now_field() -> dt.datetime:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)  # type: ignore[no-any-return]


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=254, sa_column_kwargs={"unique": True}, nullable=False)
    password_hash: str = Field(max_length=255)
    # Platform role of the person: "auditor", "admin" or none.
    platform_role: str | None = Field(default=None, max_length=16)
    created_at: dt.datetime = _now_field()


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    # Space-separated subset of scopes.ORG_ROLES.
    roles: str = Field(max_length=64)
    suspended: bool = Field(default=False)
    # Set by an administrator who checked who the organisation is; offers may reserve their
    # trials for verified organisations, so that fresh registrations cannot farm them.
    verified_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = _now_field()

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def role_list(self) -> list[str]:
        return split_scope(self.roles)

    def has_role(self, role: str) -> bool:
        return role in self.role_list

    @property
    def allowed_scopes(self) -> frozenset[str]:
        return allowed_scopes(self.role_list)


class Membership(SQLModel, table=True):
    __tablename__ = "memberships"
    __table_args__ = (sa.UniqueConstraint("user_id", "organization_id"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    role: str = Field(default="owner", max_length=16)
    created_at: dt.datetime = _now_field()


def hash_secret(secret: str) -> str:
    """SHA-256 of a server-generated secret.

    Client secrets and access tokens carry 256 bits of entropy from ``secrets``, so a fast hash
    is enough to make a stolen table useless, and it keeps every token check cheap. Passwords,
    chosen by people, use argon2id instead.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class OAuthClient(SQLModel, table=True):
    __tablename__ = "oauth_clients"

    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    client_secret_hash: str = Field(max_length=64)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    name: str = Field(max_length=100)
    scope: str = Field(max_length=255)
    created_at: dt.datetime = _now_field()
    # Who made the client: the person who registered (or was created by the CLI), or another
    # client of the organisation acting with clients:manage. One of the two is set.
    created_by_user_id: int | None = Field(default=None, foreign_key="users.id")
    created_by_client_id: str | None = Field(default=None, max_length=64)
    # The last time the client's secret got it a token.
    last_used_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)

    # Authlib's ClientMixin: only what the client_credentials grant and RFC 7009/7662 use.
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        mine = split_scope(self.scope)
        if not scope:
            return " ".join(s for s in mine if s not in EXPLICIT_ONLY_SCOPES)
        return " ".join(s for s in split_scope(scope) if s in mine)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        if self.revoked_at is not None:
            return False
        return hmac.compare_digest(self.client_secret_hash, hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class OAuthToken(SQLModel, table=True):
    __tablename__ = "oauth_tokens"

    id: int | None = Field(default=None, primary_key=True)
    access_token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    client_id: str = Field(max_length=64, index=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    scope: str = Field(max_length=255)
    issued_at: dt.datetime = _now_field()
    expires_in: int
    revoked: bool = Field(default=False)

    # Authlib's TokenMixin.
    def check_client(self, client: OAuthClient) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def get_expires_at(self) -> int:
        return int(self.issued_at.timestamp()) + self.expires_in

    def is_expired(self) -> bool:
        return utcnow().timestamp() >= self.get_expires_at()

    def is_revoked(self) -> bool:
        return self.revoked

    def get_client_id(self) -> str:
        return self.client_id

    def get_user(self) -> None:
        return None


class WebSession(SQLModel, table=True):
    """A person's login in a browser: the cookie carries a random token, the table its digest.

    Logging out (or the organisation being suspended) ends the session on the server, so a
    copied cookie stops working too; the API tokens minted for the session's pages end with it.
    """

    __tablename__ = "web_sessions"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, sa_column_kwargs={"unique": True}, nullable=False)
    user_id: int = Field(foreign_key="users.id", index=True)
    organization_id: int = Field(foreign_key="organizations.id", index=True)
    created_at: dt.datetime = _now_field()
    expires_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
