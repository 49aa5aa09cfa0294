"""Every operation of the OpenAPI document, called over HTTP with the document's own examples.

A fresh marketplace is seeded with the demo data (so that the examples' ids, 1 and 2, name the
demo vendor, buyer, listing and offers) and with an administrator and an auditor. Each
operation is then called once, in an order that creates what later calls read, with the path,
query, header and body examples the document gives; the request and the response are both
checked against the document by openapi-core. Only values that cannot be known before the run
are taken from it: the terms hash a buyer accepts (from the offer) and the id of an API client
(created by the run).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from marketplace.accounts import services as accounts
from marketplace.accounts.scopes import SCOPES_BY_ROLE
from marketplace.demo import credentials_path, defect_scorer_model, load_demo_data
from tests.conftest import LiveServer

TIMEOUT_S = 60

# (method, path template, actor, outcome). The outcome is None when the documented success is
# expected, else the documented problem code the embedded configuration gives (offline
# payments have no Stripe webhook, connected accounts or provider calls).
PLAN: list[tuple[str, str, str, str | None]] = [
    ("get", "/api/v1/openapi.json", "anyone", None),
    ("get", "/api/docs", "anyone", None),
    ("post", "/api/v1/register", "anyone", None),
    ("get", "/api/v1/me", "buyer", None),
    ("get", "/api/v1/sandbox/health", "anyone", None),
    ("get", "/api/v1/models", "anyone", None),
    ("post", "/api/v1/models", "vendor", None),
    ("get", "/api/v1/models/{model_id}", "anyone", None),
    ("patch", "/api/v1/models/{model_id}", "vendor", None),
    ("post", "/api/v1/models/{model_id}/versions", "vendor", None),
    ("get", "/api/v1/models/{model_id}/versions", "anyone", None),
    ("get", "/api/v1/models/{model_id}/versions/{version}", "anyone", None),
    ("put", "/api/v1/models/{model_id}/versions/{version}/sample", "vendor", None),
    ("get", "/api/v1/models/{model_id}/versions/{version}/sample", "buyer", None),
    ("post", "/api/v1/models/{model_id}/offers", "vendor", None),
    ("get", "/api/v1/models/{model_id}/offers", "anyone", None),
    ("post", "/api/v1/models/{model_id}/versions/{version}/evaluate", "buyer", None),
    ("post", "/api/v1/wallet/top-ups", "buyer", None),
    ("get", "/api/v1/wallet/top-ups/{top_up_id}", "buyer", None),
    ("get", "/api/v1/wallet", "buyer", None),
    ("post", "/api/v1/offers/{offer_id}/trial", "buyer", None),
    ("post", "/api/v1/offers/{offer_id}/purchase", "buyer", None),
    ("get", "/api/v1/models/{model_id}/versions/{version}/artifact", "buyer", None),
    # An evaluation job: no worker runs in this server, so the job stays queued until cancelled.
    ("post", "/api/v1/datasets", "buyer", None),
    ("get", "/api/v1/datasets", "buyer", None),
    ("get", "/api/v1/datasets/{dataset_id}", "buyer", None),
    ("post", "/api/v1/evaluation-jobs", "buyer", None),
    ("get", "/api/v1/evaluation-jobs", "buyer", None),
    ("get", "/api/v1/evaluation-jobs/{job_id}", "buyer", None),
    ("post", "/api/v1/evaluation-jobs/{job_id}/report/consent", "buyer", None),
    ("get", "/api/v1/evaluation-jobs/{job_id}/report", "buyer", "job_not_finished"),
    ("post", "/api/v1/models/{model_id}/reports", "vendor", "job_not_finished"),
    ("delete", "/api/v1/evaluation-jobs/{job_id}", "buyer", None),
    ("get", "/api/v1/evaluation-jobs/{job_id}/results", "buyer", None),
    ("delete", "/api/v1/datasets/{dataset_id}", "buyer", None),
    ("get", "/api/v1/licenses", "buyer", None),
    ("get", "/api/v1/licenses/{license_id}", "buyer", None),
    ("get", "/api/v1/orders", "buyer", None),
    ("get", "/api/v1/ledger/statement", "buyer", None),
    ("post", "/api/v1/orders/{order_id}/refund", "admin", None),
    ("post", "/api/v1/wallet/withdrawals", "buyer", "withdrawal_unavailable"),
    ("get", "/api/v1/wallet/withdrawals/{withdrawal_id}", "buyer", "withdrawal_not_found"),
    ("post", "/api/v1/organizations/{org_id}/clients", "vendor", None),
    ("get", "/api/v1/organizations/{org_id}/clients", "vendor", None),
    ("delete", "/api/v1/organizations/{org_id}/clients/{client_id}", "vendor", None),
    ("post", "/api/v1/organizations/{org_id}/verify", "admin", None),
    ("put", "/api/v1/organizations/{org_id}/payout-account", "vendor", None),
    ("get", "/api/v1/organizations/{org_id}/payout-account", "vendor", None),
    ("get", "/api/v1/payouts", "admin", None),
    ("post", "/api/v1/payouts/run", "admin", None),
    ("get", "/api/v1/payments/outbox", "admin", None),
    ("post", "/api/v1/payments/outbox/{message_id}/retry", "admin", "outbox_not_failed"),
    ("post", "/api/v1/payments/stripe/webhook", "anyone", "webhook_unavailable"),
    ("post", "/api/v1/audit/checkpoints", "admin", None),
    ("get", "/api/v1/audit/tree", "auditor", None),
    ("get", "/api/v1/audit/checkpoints/latest", "auditor", None),
    ("get", "/api/v1/audit/checkpoints", "auditor", None),
    ("get", "/api/v1/audit/public-keys", "auditor", None),
    ("get", "/api/v1/audit/records", "auditor", None),
    ("get", "/api/v1/audit/proofs/inclusion", "auditor", None),
    ("get", "/api/v1/audit/proofs/consistency", "auditor", None),
    ("get", "/api/v1/audit/export", "auditor", None),
    ("get", "/api/v1/audit/ledger/transactions", "auditor", None),
    ("get", "/api/v1/audit/revenue", "auditor", None),
    ("post", "/api/v1/models/{model_id}/offers/{offer_id}/retire", "vendor", None),
    ("post", "/api/v1/models/{model_id}/versions/{version}/revoke", "vendor", None),
    ("post", "/api/v1/models/{model_id}/suspend", "admin", None),
    ("post", "/api/v1/models/{model_id}/reinstate", "admin", None),
]


def _binary_body(media_type: str) -> bytes:
    """A body for a binary media type, built as its description in the document says."""
    if media_type == "application/octet-stream":
        return defect_scorer_model()
    if media_type == "application/x-npz":
        buffer = io.BytesIO()
        np.savez(buffer, readings=np.full((1, 16), 0.5, np.float32))
        return buffer.getvalue()
    raise AssertionError(f"no example body for {media_type}")


class Seeded:
    """The live marketplace with demo data, and a token per actor with all its scopes."""

    def __init__(self, server: LiveServer) -> None:
        self.url = server.url
        lines = list(load_demo_data(server.app))
        assert any("credentials written" in line for line in lines), lines
        demo = json.loads(credentials_path(server.app).read_text())
        self.demo = demo
        creds = {
            "vendor": (demo["vendor"]["client_id"], demo["vendor"]["client_secret"], "vendor"),
            "buyer": (demo["buyer"]["client_id"], demo["buyer"]["client_secret"], "buyer"),
        }
        with server.app.app_context():
            session = server.app.extensions["db"].session()
            for role in ("admin", "auditor"):
                _user, _org, made = accounts.create_platform_user(
                    session=session,
                    email=f"{role}-{uuid.uuid4().hex[:6]}@example.test",
                    password="Correct-Horse-9-Battery",
                    role=role,
                )
                creds[role] = (made.client_id, made.client_secret, role)
            session.close()
        self.headers: dict[str, dict[str, str]] = {"anyone": {}}
        for actor, (client_id, secret, role) in creds.items():
            resp = requests.post(
                f"{self.url}/oauth/token",
                data={"grant_type": "client_credentials", "scope": " ".join(SCOPES_BY_ROLE[role])},
                auth=(client_id, secret),
                timeout=TIMEOUT_S,
            )
            assert resp.status_code == 200, resp.text
            self.headers[actor] = {"Authorization": f"Bearer {resp.json()['access_token']}"}
        self.client_ids: list[str] = []

    def terms_of(self, offer_id: int) -> str:
        offers = requests.get(
            f"{self.url}/api/v1/models/1/offers", headers=self.headers["vendor"], timeout=TIMEOUT_S
        ).json()["items"]
        (offer,) = [o for o in offers if o["id"] == offer_id]
        return str(offer["terms_sha256"])


def _causes(exc: BaseException) -> str:
    found = []
    current: BaseException | None = exc
    while current is not None:
        found.append(repr(current)[:400])
        current = current.__cause__ or getattr(current, "schema_errors", [None])[0]
    return " <- ".join(found)


def _example_request(
    seeded: Seeded, path: str, method: str, op: dict[str, Any], actor: str
) -> requests.PreparedRequest:
    path_values: dict[str, Any] = {}
    query: dict[str, Any] = {}
    headers = dict(seeded.headers[actor])
    for param in op.get("parameters", []):
        where, name = param["in"], param["name"]
        if "example" not in param:
            assert not param["required"], f"{method} {path}: required {name} has no example"
            continue
        value = param["example"]
        if where == "path":
            if name == "client_id":
                value = seeded.client_ids[-1]  # created by the run: not known in advance
            path_values[name] = value
        elif where == "query":
            query[name] = value
        elif where == "header" and param["required"]:
            headers[name] = str(value)
    body: bytes | None = None
    request_body = op.get("requestBody")
    if request_body is not None:
        media_type, media = next(iter(request_body["content"].items()))
        if media_type == "application/json":
            assert "example" in media, f"{method} {path}: the JSON body has no example"
            example = dict(media["example"])
            if "accept_terms_sha256" in example:
                example["accept_terms_sha256"] = seeded.terms_of(path_values["offer_id"])
            body = json.dumps(example).encode()
        else:
            body = _binary_body(media_type)
        headers["Content-Type"] = media_type
    url = seeded.url + path.format(**path_values)
    return requests.Request(method.upper(), url, params=query, data=body, headers=headers).prepare()


@pytest.mark.slow
# openapi-core checks the presence of credentials only for API keys and HTTP schemes; the
# bearer token is checked by the server itself (its 401 and 403 are in the document).
@pytest.mark.filterwarnings("ignore:Unsupported scheme type:UserWarning")
def test_every_operation_answers_its_examples_as_documented(
    live_server: Callable[..., LiveServer],
) -> None:
    seeded = Seeded(live_server())
    spec = requests.get(f"{seeded.url}/api/v1/openapi.json", timeout=TIMEOUT_S).json()
    # The document's relative server is made absolute, as a client reading it from here would.
    spec["servers"] = [{"url": seeded.url}]
    # Problem documents are JSON under their own media type (RFC 9457).
    config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
    validator = OpenAPI.from_dict(spec, config=config)

    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    planned = {(m, p) for m, p, _actor, _outcome in PLAN}
    assert documented == planned, (
        f"not planned: {sorted(documented - planned)}; gone: {sorted(planned - documented)}"
    )

    failures = []
    with requests.Session() as http:
        for method, path, actor, outcome in PLAN:
            op = spec["paths"][path][method]
            prepared = _example_request(seeded, path, method, op, actor)
            validator.validate_request(RequestsOpenAPIRequest(prepared))
            resp = http.send(prepared, allow_redirects=False, timeout=TIMEOUT_S)
            documented_statuses = op["responses"]
            success = [s for s in documented_statuses if s.startswith(("2", "3"))]
            label = f"{method.upper()} {path} as {actor}: {resp.status_code}"
            if outcome is None and str(resp.status_code) not in success:
                failures.append(f"{label} {resp.text[:300]}")
                continue
            if outcome is not None and (
                resp.headers.get("Content-Type", "").split(";")[0] != "application/problem+json"
                or resp.json().get("code") != outcome
            ):
                failures.append(f"{label}, expected {outcome}: {resp.text[:300]}")
                continue
            try:
                validator.validate_response(
                    RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(resp)
                )
            except Exception as exc:  # the validator's errors carry the schema path
                failures.append(f"{label} does not match the document: {_causes(exc)}")
            if path.endswith("/clients") and method == "post" and resp.status_code == 201:
                seeded.client_ids.append(resp.json()["client_id"])
    assert failures == [], "\n".join(failures)
