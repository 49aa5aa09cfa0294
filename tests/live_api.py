"""A small client for tests that attack a live server over real HTTP (``live_server``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.conftest import LiveServer

PASSWORD = "Correct-Horse-9-Battery"
TIMEOUT_S = 30


def register(url: str, roles: list[str], **headers: str) -> requests.Response:
    """POST /api/v1/register for a new address; the raw response."""
    email = f"{uuid.uuid4().hex[:12]}@example.test"
    return requests.post(
        f"{url}/api/v1/register",
        json={
            "email": email,
            "password": PASSWORD,
            "organization_name": f"Org {email}",
            "organization_roles": roles,
        },
        headers=headers,
        timeout=TIMEOUT_S,
    )


def request_token(
    url: str, client_id: str, client_secret: str, scope: str | None = None, **headers: str
) -> requests.Response:
    form = {"grant_type": "client_credentials"}
    if scope is not None:
        form["scope"] = scope
    return requests.post(
        f"{url}/oauth/token",
        data=form,
        auth=(client_id, client_secret),
        headers=headers,
        timeout=TIMEOUT_S,
    )


@dataclass
class LiveOrg:
    """A registered organisation on a live server, with its first API client."""

    url: str
    id: int
    client_id: str
    client_secret: str
    _tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def register(cls, server: LiveServer, roles: list[str]) -> LiveOrg:
        resp = register(server.url, roles)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        return cls(
            server.url,
            body["organization_id"],
            body["client"]["client_id"],
            body["client"]["client_secret"],
        )

    def token(self, scope: str | None = None) -> str:
        key = scope or ""
        if key not in self._tokens:
            resp = request_token(self.url, self.client_id, self.client_secret, scope)
            assert resp.status_code == 200, resp.text
            self._tokens[key] = resp.json()["access_token"]
        return self._tokens[key]

    def headers(self, scope: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope)}", **extra}

    def call(
        self, method: str, path: str, *, scope: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = {**self.headers(scope), **kwargs.pop("headers", {})}
        return requests.request(
            method, f"{self.url}{path}", headers=headers, timeout=TIMEOUT_S, **kwargs
        )


def platform_org(server: LiveServer, role: str = "admin") -> LiveOrg:
    """An administrator or auditor, made as `jishi users create` makes one (no HTTP for that)."""
    from marketplace.accounts import services
    from marketplace.db import get_session

    with server.app.app_context():
        _user, org, creds = services.create_platform_user(
            session=get_session(),
            email=f"{role}-{uuid.uuid4().hex[:8]}@example.test",
            password=PASSWORD,
            role=role,
        )
    assert org.id is not None and creds.client_secret is not None
    return LiveOrg(server.url, org.id, creds.client_id, creds.client_secret)
