"""Page fixtures: people logged in through the login form, with the CSRF token a browser sends."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from marketplace.accounts import services as accounts
from tests.conftest import Org, register_org

PASSWORD = "Correct-Horse-9-Battery"
_CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token" type="hidden" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF token"
    return found.group(1)


@dataclass(eq=False)
class Person:
    """A browser (its own cookie jar) logged in as a user of ``org``."""

    browser: FlaskClient
    org: Org | None
    email: str

    def csrf(self, path: str = "/") -> str:
        return csrf_of(self.browser.get(path).get_data(as_text=True))

    def post(
        self, path: str, data: dict[str, Any] | None = None, *, token_from: str = "/", **kw: Any
    ) -> Any:
        form = {"csrf_token": self.csrf(token_from), **(data or {})}
        return self.browser.post(path, data=form, **kw)


def log_in(app: Flask, email: str, password: str = PASSWORD) -> FlaskClient:
    browser = app.test_client()
    html = browser.get("/login").get_data(as_text=True)
    resp = browser.post(
        "/login", data={"email": email, "password": password, "csrf_token": csrf_of(html)}
    )
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return browser


@pytest.fixture
def person(app: Flask, client: FlaskClient) -> Callable[..., Person]:
    """``person(["buyer"])`` registers an organisation through the API and logs its user in."""

    def make(roles: list[str], name: str | None = None) -> Person:
        org = register_org(client, roles, name)
        return Person(log_in(app, org.email), org, org.email)

    return make


@pytest.fixture
def platform_person(app: Flask, db_session: Any) -> Callable[[str], Person]:
    """``platform_person("admin")``: an administrator or auditor, logged in."""

    def make(role: str) -> Person:
        import uuid

        email = f"{role}-{uuid.uuid4().hex[:8]}@example.test"
        accounts.create_platform_user(session=db_session, email=email, password=PASSWORD, role=role)
        return Person(log_in(app, email), None, email)

    return make
