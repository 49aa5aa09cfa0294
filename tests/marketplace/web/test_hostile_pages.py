"""Every page, as every kind of person, with hostile paths, query strings and form fields: never
a server error.

The marketplace holds the demo data (ids 1 and 2 name its listing, offers, versions and orders).
Each page route is opened with those ids and with ids past the columns' range; each form route
is posted with every field the pages' forms know set, in turn, to a hostile value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from marketplace.demo import DEMO_BUYER, DEMO_PASSWORD, DEMO_VENDOR, load_demo_data
from tests.marketplace.web.conftest import Person, csrf_of, log_in

FORM_FIELDS = [
    "email", "password", "organization_name", "organization_roles", "accept_terms_sha256",
    "idempotency_key", "accept", "name", "summary", "task", "tags", "filing_number",
    "description_md", "version", "kind", "currency", "price", "royalty_per_1k", "term_days",
    "trial_calls", "trial_days", "terms_md", "amount", "order_id", "reason", "language",
    "timezone", "from_seq", "to_size", "format", "account_ref", "organization_id", "q", "page",
]  # fmt: skip
# The fields the forms read as numbers: an integer past its column's range fails the lookup.
NUMBER_FIELDS = [
    "term_days", "trial_calls", "trial_days", "order_id", "from_seq", "to_size",
    "organization_id", "price", "royalty_per_1k", "amount",
]  # fmt: skip
HOSTILE_VALUES = [
    "", "x", "-1", "0", "1e309", "NaN", "99999999999999999999999", "1.5", "a" * 20_000,
    "\u00e9\u4e2d", "<script>", "../..", "\ud800",
]  # fmt: skip
# What the pages read from a query string: the catalog's search, the language, the return
# address after login, the wallet's currency, the admin lists' filters and pages.
QUERY_PARAMS = [
    "q", "task", "tag", "vendor", "sort", "page", "page_size", "lang", "next", "currency",
    "status", "verified",
]  # fmt: skip
PATH_VALUES = {"int": ["1", "2", "2147483648", "99999999999999999999"], "default": ["1.0.0", ".."]}


def _urls(app: Flask, method: str) -> Iterator[str]:
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("web.") or method not in (rule.methods or ()):
            continue
        choices: list[dict[str, str]] = [{}]
        for arg in sorted(rule.arguments):
            kind = type(rule._converters[arg]).__name__
            values = PATH_VALUES["int" if "Int" in kind or "Id" in kind else "default"]
            choices = [{**c, arg: v} for c in choices for v in values]
        for choice in choices:
            url = rule.rule
            for arg, value in choice.items():
                url = re.sub(rf"<(?:[^:<>]+:)?{arg}>", value, url)
            yield url


def _crashes(resp: Any, where: str) -> list[str]:
    return [f"{where}: {resp.status_code}"] if resp.status_code >= 500 else []


@pytest.mark.slow
def test_no_page_answers_hostile_input_with_a_server_error(
    app: Flask,
    platform_person: Callable[[str], Person],
    db_backend: str,
) -> None:
    if db_backend != "postgresql":
        # Minutes of requests: run once, on the database that refuses the most (NUL in text,
        # integers past a column's range).
        pytest.skip("the page sweep runs on PostgreSQL")
    list(load_demo_data(app))
    people: dict[str, Any] = {
        "anonymous": app.test_client(),
        # The demo's own people: the listing, offers and orders with ids 1 and 2 are theirs.
        "vendor": log_in(app, DEMO_VENDOR, DEMO_PASSWORD),
        "buyer": log_in(app, DEMO_BUYER, DEMO_PASSWORD),
        "admin": platform_person("admin").browser,
        "auditor": platform_person("auditor").browser,
    }
    failures: list[str] = []
    sent = 0
    for who, browser in people.items():
        for url in _urls(app, "GET"):
            resp = browser.get(url)
            sent += 1
            failures += _crashes(resp, f"GET {url} as {who}")
            if who in ("buyer", "auditor"):
                continue  # the query strings: as anonymous, the vendor and the administrator
            for param in QUERY_PARAMS:
                for value in ("x", "99999999999999999999", "a" * 5000):
                    resp = browser.get(url, query_string={param: value})
                    sent += 1
                    failures += _crashes(resp, f"GET {url}?{param}={value[:12]} as {who}")
        if who in ("anonymous", "auditor"):
            continue  # forms: the sellers', buyers' and administrators' own are enough
        csrf = csrf_of(browser.get("/").get_data(as_text=True))
        for url in _urls(app, "POST"):
            if url == "/logout":
                continue  # the rest of the sweep needs the person logged in
            resp = browser.post(url, data={"csrf_token": csrf})
            sent += 1
            failures += _crashes(resp, f"POST {url} (empty) as {who}")
            if any(bad in url for bad in PATH_VALUES["int"][2:]):
                continue
            # Every field hostile at once, then each number alone past every range.
            variants = [{field: value for field in FORM_FIELDS} for value in HOSTILE_VALUES]
            variants += [{field: "9" * 30_000} for field in NUMBER_FIELDS]
            for variant in variants:
                data = {"csrf_token": csrf}
                data.update({k: v.encode("utf-8", "surrogatepass") for k, v in variant.items()})
                resp = browser.post(url, data=data)
                sent += 1
                shown = next(iter(variant.values()))[:12]
                failures += _crashes(resp, f"POST {url} {sorted(variant)[:2]}={shown!r} as {who}")
    assert sent > 2000
    assert failures == [], "\n".join(failures)
