"""Every operation of the OpenAPI document, called with malformed and hostile variants of its own
examples: wrong types, out-of-range and oversized values, broken JSON, unknown fields and
parameters, bad headers. None may answer 5xx; every refusal is problem+json with a ``code``.

The operations are called in the order of the example plan, each one's variants just before
its example, so that the resources a later operation reads exist when its variants arrive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.conftest import LiveServer
from tests.live_api import LiveOrg
from tests.marketplace.core.test_openapi_operations import PLAN, TIMEOUT_S, Seeded, _example_request

PROBLEM = "application/problem+json"

# Values put in place of an example's: each refused or handled, never a crash.
HOSTILE_VALUES: list[Any] = [
    None,
    "",
    "x",
    -1,
    0,
    1.5,
    True,
    2**70,
    -(2**70),
    [],
    {},
    "a" * 100_000,
    "\u0000",
    "\ud800",
]
HOSTILE_PATH_INTS = ["0", "-1", "2147483648", "99999999999999999999999"]
HOSTILE_VERSIONS = ["..", "a" * 5000, "1.0.0%00", "%ff%fe", "latest%2F..%2F"]
HOSTILE_QUERY = ["x", "-1", str(2**64), "", "\x00", "a" * 10_000, "1e309", "NaN"]
# Times that are valid ISO 8601 but leave the calendar when converted to UTC.
HOSTILE_QUERY += ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]
HOSTILE_JSON_BODIES = [
    b"",
    b"{",
    b"[]",
    b"null",
    b'"text"',
    b"1e999999",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"\xff\xfe{}",
    b'{"amount_minor": 1, "amount_minor": "x"}',
]
HOSTILE_BINARY_BODIES = [b"", b"PK\x03\x04" + b"\x00" * 64, b"\x93NUMPY" + b"\xff" * 100]
HOSTILE_HEADERS: list[dict[str, str]] = [
    {"Idempotency-Key": "a" * 10_000},
    {"Idempotency-Key": ""},
    {"Content-Digest": "sha-256=:AAAA:"},
    {"Content-Digest": "garbage"},
    {"Authorization": "Bearer " + "a" * 10_000},
    {"Authorization": "Basic Og=="},
    {"Authorization": "Bearer"},
    {"Accept": "application/x-npz"},
]


def _variants(prepared: requests.PreparedRequest, op: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(label, request) pairs: the example with one part of it made hostile."""
    url, _, query_string = (prepared.url or "").partition("?")
    body = prepared.body if isinstance(prepared.body, bytes) else None
    # Lengths are the sender's to compute again for each body.
    headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
    media_type = headers.get("Content-Type", "")

    def request(
        label: str,
        *,
        url: str = url,
        query: str = query_string,
        body: bytes | None = body,
        headers: dict[str, str] = headers,
    ) -> tuple[str, Any]:
        full = url + ("?" + query if query else "")
        return label, requests.Request(prepared.method, full, data=body, headers=headers)

    for param in op.get("parameters", []):
        name, where = param["name"], param["in"]
        if where == "path" and "example" in param:
            example = str(param["example"])
            hostile = (
                HOSTILE_PATH_INTS if param["schema"].get("type") == "integer" else HOSTILE_VERSIONS
            )
            for value in hostile:
                segment = f"/{example}/"
                if segment in url + "/":
                    replaced = (url + "/").replace(segment, f"/{value}/", 1)[:-1]
                    yield request(f"path {name}={value[:20]}", url=replaced)
        elif where == "query":
            for value in HOSTILE_QUERY:
                yield request(
                    f"query {name}={value[:20]!r}",
                    query=urlencode({name: value}),
                )
    yield request("unknown query parameter", query=(query_string + "&zzz=1").lstrip("&"))
    for extra in HOSTILE_HEADERS:
        yield request(f"header {next(iter(extra))}", headers={**headers, **extra})
    if body is None:
        return
    if media_type == "application/json":
        example = json.loads(body)
        for raw in HOSTILE_JSON_BODIES:
            yield request(f"json body {raw[:20]!r}", body=raw)
        yield request("json as text/plain", headers={**headers, "Content-Type": "text/plain"})
        if isinstance(example, dict):
            yield request("unknown field", body=json.dumps({**example, "zzz": 1}).encode())
            for key in example:
                for value in HOSTILE_VALUES:
                    changed = {**example, key: value}
                    encoded = json.dumps(changed, ensure_ascii=False).encode(
                        "utf-8", "surrogatepass"
                    )
                    yield request(f"field {key}={str(value)[:20]!r}", body=encoded)
                without = {k: v for k, v in example.items() if k != key}
                yield request(f"field {key} missing", body=json.dumps(without).encode())
    else:
        for raw in HOSTILE_BINARY_BODIES:
            yield request(f"binary body {raw[:8]!r}", body=raw)
        yield request("binary as json", headers={**headers, "Content-Type": "application/json"})


@pytest.mark.slow
def test_no_operation_answers_hostile_input_with_a_server_error(
    live_server: Callable[..., LiveServer],
) -> None:
    seeded = Seeded(live_server())
    spec = requests.get(f"{seeded.url}/api/v1/openapi.json", timeout=TIMEOUT_S).json()
    failures: list[str] = []
    sent = 0
    with requests.Session() as http:
        for method, path, actor, _outcome in PLAN:
            op = spec["paths"][path][method]
            example = _example_request(seeded, path, method, op, actor)
            for label, hostile in _variants(example, op):
                resp = http.send(hostile.prepare(), allow_redirects=False, timeout=TIMEOUT_S)
                sent += 1
                where = f"{method.upper()} {path} as {actor}, {label}: {resp.status_code}"
                if resp.status_code >= 500:
                    failures.append(f"{where} {resp.text[:200]}")
                elif resp.status_code >= 400 and path.startswith("/api/"):
                    kind = resp.headers.get("Content-Type", "").split(";")[0]
                    if kind != PROBLEM or not resp.json().get("code"):
                        failures.append(f"{where} is not a problem with a code: {resp.text[:200]}")
            resp = http.send(example, allow_redirects=False, timeout=TIMEOUT_S)
            if path.endswith("/clients") and method == "post" and resp.status_code == 201:
                seeded.client_ids.append(resp.json()["client_id"])
    assert sent > 1000
    assert failures == [], "\n".join(failures)


def test_nul_characters_are_refused_wherever_a_request_carries_text(
    live_server: Callable[..., LiveServer],
) -> None:
    """PostgreSQL text cannot hold NUL: each of these was a 500 from the driver there."""
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    listing = {"name": "Defects", "summary": "Finds defects", "description_md": "x", "tags": []}
    refused = [
        ("GET", "/api/v1/models?q=a%00b", None),
        ("GET", "/api/v1/models/1/versions/1.0.0%00", None),
        ("POST", "/api/v1/models", {**listing, "name": "De\u0000fects"}),
        ("POST", "/api/v1/models", {**listing, "tags": ["ok", "n\u0000ul"]}),
    ]
    for method, path, body in refused:
        resp = vendor.call(method, path, json=body)
        assert resp.status_code == 422, (path, body, resp.text)
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["code"] == "validation_failed"
    assert vendor.call("GET", f"/api/v1/models?vendor={vendor.id}").json()["items"] == []
    token = requests.post(
        f"{server.url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": "a\u0000b", "client_secret": "x"},
        timeout=TIMEOUT_S,
    )
    assert token.status_code == 400, token.text
    assert token.json()["error"] == "invalid_request"
    login = requests.post(
        f"{server.url}/login", data={"email": "a\u0000@example.test", "password": "x"}, timeout=30
    )
    assert login.status_code == 422, login.text


def test_a_bad_token_is_refused_as_problem_json(live_server: Callable[..., LiveServer]) -> None:
    server = live_server()
    for authorization in ["Bearer " + "a" * 64, "Basic Og==", "Bearer"]:
        resp = requests.get(
            f"{server.url}/api/v1/me", headers={"Authorization": authorization}, timeout=30
        )
        assert resp.status_code == 401, resp.text
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["code"] in {"invalid_token", "missing_token"}
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.slow
def test_the_token_endpoints_answer_hostile_forms_in_rfc_6749_format(
    live_server: Callable[..., LiveServer],
) -> None:
    server = live_server()
    org = LiveOrg.register(server, ["vendor", "buyer"])
    values = ["", "x", "a" * 100_000, "réglages", 'a"b\\c', "-1", "9" * 30, "a b " * 1000, "\ud800"]
    fields = ["grant_type", "scope", "token", "token_type_hint", "client_id", "client_secret"]
    failures = []
    with requests.Session() as http:
        for path in ["/oauth/token", "/oauth/revoke", "/oauth/introspect"]:
            for auth in [(org.client_id, org.client_secret), None, ("x" * 5000, "y")]:
                for field in fields:
                    for value in values:
                        form = {"grant_type": "client_credentials", field: value}
                        encoded = {k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}
                        resp = http.post(
                            server.url + path, data=encoded, auth=auth, timeout=TIMEOUT_S
                        )
                        kind = resp.headers.get("Content-Type", "").split(";")[0]
                        if resp.status_code >= 500 or kind != "application/json":
                            where = f"{path} {field}={value[:12]!r}"
                            failures.append(f"{where}: {resp.status_code} {resp.text[:100]}")
                        elif resp.status_code >= 400:
                            assert set(resp.json()) == {"error", "error_description"}, resp.text
    assert failures == [], "\n".join(failures)


def test_forms_are_read_within_the_json_body_bound(live_server: Callable[..., LiveServer]) -> None:
    """A url-encoded form was read whole before any bound: 200 MB held a worker at 7 GB."""
    server = live_server()
    bound = 1024 * 1024
    body = b"email=a%40b.test&password=" + b"x" * bound
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    for path in ["/login", "/register", "/api/v1/models", "/api/v1/register", "/oauth/token"]:
        for data in (body, chunked()):
            resp = requests.post(server.url + path, data=data, headers=form, timeout=TIMEOUT_S)
            assert resp.status_code == 413, (path, resp.status_code, resp.text[:200])
            if path.startswith("/api/"):
                assert resp.headers["Content-Type"] == PROBLEM
                assert resp.json()["code"] == "payload_too_large"
            elif path.startswith("/oauth/"):
                assert resp.json()["error"] == "invalid_request"
    # A form within the bound is read as before.
    small = requests.post(
        f"{server.url}/oauth/token", data={"grant_type": "client_credentials"}, timeout=TIMEOUT_S
    )
    assert small.status_code == 401, small.text


def test_a_body_naming_a_field_twice_is_refused(live_server: Callable[..., LiveServer]) -> None:
    """The last of two amounts won, while a proxy or log reading the first saw another one."""
    server = live_server()
    buyer = LiveOrg.register(server, ["buyer"])
    for body in [
        b'{"amount_minor": 100, "amount_minor": 200, "currency": "CNY"}',
        b'{"amount_minor": 100, "currency": "CNY", "currency": "USD"}',
    ]:
        resp = buyer.call(
            "POST",
            "/api/v1/wallet/top-ups",
            data=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": "twice"},
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "malformed_json"
        assert "twice" in resp.json()["detail"]
    wallet = buyer.call("GET", "/api/v1/wallet").json()
    assert all(b["available_minor"] == 0 for b in wallet["balances"]), wallet
