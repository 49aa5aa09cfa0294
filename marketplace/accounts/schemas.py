"""Request and response shapes of the accounts API."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from marketplace.accounts.scopes import ALL_SCOPES, split_scope
from marketplace.api import RequestModel, RowModel

# A pragmatic address check: one @, no spaces, a dot in the domain. Deliverability is proven by
# mail, not by a regular expression.
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
PASSWORD_LENGTH_MIN = 12
_COMMON_PASSWORDS = frozenset(
    {"password1234", "123456789012", "qwertyuiopas", "passwordpassword", "iloveyou1234"}
)


class RegisterRequest(RequestModel):
    email: str = Field(max_length=254)
    password: str = Field(min_length=PASSWORD_LENGTH_MIN, max_length=256)
    organization_name: str = Field(min_length=1, max_length=200)
    organization_roles: list[Literal["vendor", "buyer"]] = Field(min_length=1, max_length=2)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip().lower()
        if not _EMAIL.fullmatch(value):
            raise ValueError("not an e-mail address")
        return value

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        classes = sum(
            bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]")
        )
        if value.lower() in _COMMON_PASSWORDS or len(set(value)) < 5 or classes < 2:
            raise ValueError(
                "too weak: use at least 12 characters mixing letters with digits or symbols"
            )
        return value

    @field_validator("organization_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    @field_validator("organization_roles")
    @classmethod
    def _roles(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("roles must not repeat")
        return sorted(value)


class CreatedByUser(BaseModel):
    kind: Literal["user"] = "user"
    user_id: int


class CreatedByClient(BaseModel):
    kind: Literal["client"] = "client"
    client_id: str


class ClientCredentials(BaseModel):
    client_id: str
    client_secret: str | None = None
    name: str
    scopes: list[str]
    created_at: dt.datetime
    created_by: CreatedByUser | CreatedByClient | None = Field(
        default=None,
        description="The person who registered, or the client that made this one; "
        "null for clients made before this was recorded",
    )
    last_used_at: dt.datetime | None = Field(
        default=None, description="When the client last got an access token"
    )
    revoked_at: dt.datetime | None = Field(
        default=None, description="When the client and its tokens were revoked"
    )


class RegisterResponse(BaseModel):
    user_id: int
    organization_id: int
    client: ClientCredentials


class ClientCreate(RequestModel):
    name: str = Field(default="API client", min_length=1, max_length=100)
    scopes: list[Literal[ALL_SCOPES]] | None = Field(default=None, max_length=len(ALL_SCOPES))  # type: ignore[valid-type]


class ClientList(BaseModel):
    items: list[ClientCredentials]


class OrganizationPublic(RowModel):
    id: int
    name: str
    roles: list[str]
    verified: bool
    verified_at: dt.datetime | None

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: object) -> object:
        # The table keeps roles as one space-separated string.
        return split_scope(value) if isinstance(value, str) else value


class WhoAmI(BaseModel):
    client_id: str
    organization: OrganizationPublic
    scopes: list[str]
    expires_at: int
