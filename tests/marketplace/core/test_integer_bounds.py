"""Integers in paths, queries and bodies: bounded to their columns, money only as real integers."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import pytest
import requests
from pydantic import BaseModel, TypeAdapter, ValidationError

from tests.live_api import LiveOrg

HUGE = "99999999999999999999"  # beyond a signed 64-bit integer


OUT_OF_RANGE = [
    ("GET", f"/api/v1/models?vendor={HUGE}"),
    ("GET", f"/api/v1/models?page_size={HUGE}"),
    ("GET", f"/api/v1/models/{HUGE}"),
    ("GET", f"/api/v1/models/{HUGE}/versions"),
    ("GET", f"/api/v1/models/{HUGE}/offers"),
    ("POST", f"/api/v1/models/{HUGE}/offers/{HUGE}/retire"),
    ("POST", f"/api/v1/offers/{HUGE}/trial"),
    ("GET", f"/api/v1/licenses/{HUGE}"),
    ("GET", f"/api/v1/organizations/{HUGE}/clients"),
]


def test_integers_beyond_64_bits_are_422_not_500(live_server):
    server = live_server()
    buyer = LiveOrg.register(server, ["buyer"])
    for method, path in OUT_OF_RANGE:
        resp = requests.request(method, f"{server.url}{path}", headers=buyer.headers(), timeout=30)
        assert resp.status_code == 422, (path, resp.text)
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json()["code"] == "integer_out_of_range", path
    # Ids are 32-bit columns on PostgreSQL: the largest is simply not found, one more is 422.
    largest = requests.get(f"{server.url}/api/v1/models/{2**31 - 1}", timeout=30)
    assert largest.status_code == 404
    assert largest.json()["code"] == "model_not_found"
    beyond = requests.get(f"{server.url}/api/v1/models?vendor={2**31}", timeout=30)
    assert beyond.status_code == 422
    assert beyond.json()["code"] == "integer_out_of_range"


def test_top_up_amount_must_be_a_json_integer(live_server):
    server = live_server()
    buyer = LiveOrg.register(server, ["buyer"])
    for amount in ["100", True, 100.0, "1e3"]:
        resp = buyer.call(
            "POST",
            "/api/v1/wallet/top-ups",
            json={"amount_minor": amount, "currency": "CNY"},
            headers={"Idempotency-Key": f"strict-{amount!r}"},
        )
        assert resp.status_code == 422, (amount, resp.text)
        assert "amount_minor" in [e["field"] for e in resp.json()["errors"]]
    assert buyer.call("GET", "/api/v1/wallet").json()["balances"] == []


def test_every_money_field_of_every_request_schema_is_strict(app):
    schemas: list[type[BaseModel]] = [
        view.__openapi__["body"]
        for view in app.view_functions.values()
        if getattr(view, "__openapi__", {}).get("body") is not None
    ]
    money = []
    for schema in schemas:
        for name, info in schema.model_fields.items():
            if not name.endswith("_minor"):
                continue
            money.append(f"{schema.__name__}.{name}")
            annotation = (
                Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
            )
            field: TypeAdapter[Any] = TypeAdapter(annotation)
            assert field.validate_python(7) == 7
            for lax in ("100", True, 100.0):
                with pytest.raises(ValidationError):
                    field.validate_python(lax)
    assert {"OfferCreate.price_minor", "TopUpCreate.amount_minor", "RefundCreate.amount_minor"} <= (
        set(money)
    )


def test_integers_nested_in_a_body_are_bounded_too(live_server):
    """A job's model id of 2**63, nested in its list of versions, reached SQLite: a 500."""
    server = live_server()
    buyer = LiveOrg.register(server, ["buyer"])
    for model_id in [2**63, 2**70]:
        resp = buyer.call(
            "POST",
            "/api/v1/evaluation-jobs",
            json={"dataset_id": 1, "versions": [{"model_id": model_id, "version": "latest"}]},
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["code"] == "integer_out_of_range"
        assert [e["field"] for e in resp.json()["errors"]] == ["versions.0.model_id"]
    assert buyer.call("GET", "/api/v1/evaluation-jobs").json()["items"] == []


def test_path_ids_are_ascii_digits(live_server):
    """Full-width and Arabic-Indic digits were read as ids: /models/１ acted on model 1."""
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    created = vendor.call(
        "POST", "/api/v1/models", json={"name": "Digits", "summary": "s", "task": "other"}
    )
    assert created.status_code == 201, created.text
    model_id = created.json()["id"]
    assert vendor.call("GET", f"/api/v1/models/{model_id}").status_code == 200
    for zero in (0xFF10, 0x0660):  # full-width and Arabic-Indic digits
        digits = "".join(chr(zero + int(d)) for d in str(model_id))
        resp = vendor.call("GET", f"/api/v1/models/{quote(digits)}")
        assert resp.status_code == 404, (digits, resp.text)
        assert resp.headers["Content-Type"] == "application/problem+json"


def test_a_query_parameter_given_twice_is_refused(live_server):
    """?currency=CNY&currency=USD answered in CNY, the first; JSON names given twice are 422."""
    server = live_server()
    buyer = LiveOrg.register(server, ["buyer"])
    resp = buyer.call("GET", "/api/v1/ledger/statement?currency=CNY&currency=USD")
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == "validation_failed"
    assert [e["field"] for e in resp.json()["errors"]] == ["currency"]
    assert buyer.call("GET", "/api/v1/ledger/statement?currency=CNY").status_code == 200
