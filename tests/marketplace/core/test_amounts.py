"""Amounts in API responses: integer minor units with a formatted display beside each."""

from __future__ import annotations

import json
import stat

from marketplace.amounts import money, with_displays
from marketplace.demo import credentials_path


def test_money_uses_the_currency_exponent():
    assert money(1_280_000, "CNY", 2, "en") == "¥12,800.00"
    assert money(-300, "USD", 2, "en") == "-$3.00"
    assert money(1_235, "JPY", 0, "en") == "¥1,235"


def test_displays_follow_the_nearest_currency_and_leave_tensors_alone():
    exponents = {"CNY": 2}
    data = [[0.5] * 4]
    body = {
        "currency": "CNY",
        "price_minor": 1_000,
        "flag_minor": True,
        "usage": {"accrued_minor": 25},
        "outputs": {"y": {"dtype": "float32", "shape": [1, 4], "data": data}},
        "other": {"currency": "XXX", "amount_minor": 5},
        "record": {"money": {"currency": "CNY", "amount_minor": 7}},
    }
    shown = with_displays(body, exponents.get)
    assert shown["price_display"] == "¥10.00"
    assert shown["usage"]["accrued_display"] == "¥0.25"
    assert "flag_display" not in shown
    assert "amount_display" not in shown["other"]  # an unknown currency is not guessed
    assert shown["outputs"]["y"]["data"] is data
    assert shown["record"] == {"money": {"currency": "CNY", "amount_minor": 7}}  # signed bytes


def test_api_responses_carry_displays_and_problem_documents_too(app, runner, client):
    assert runner.invoke(args=["demo-data"]).exit_code == 0
    listing_id = json.loads(credentials_path(app).read_text())["listing_id"]
    offers = client.get(f"/api/v1/models/{listing_id}/offers").json["items"]
    perpetual = next(o for o in offers if o["kind"] == "perpetual")
    assert (perpetual["price_minor"], perpetual["price_display"]) == (1_280_000, "¥12,800.00")
    buyer = json.loads(credentials_path(app).read_text())["buyer"]
    token = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(buyer["client_id"], buyer["client_secret"]),
    ).json["access_token"]
    refused = client.post(
        f"/api/v1/offers/{perpetual['id']}/purchase",
        json={"accept_terms_sha256": perpetual["terms_sha256"]},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "too-dear"},
    )
    assert refused.status_code == 402, refused.json
    # The wallet holds ¥500.00 of the ¥12,800.00.
    assert refused.json["missing_minor"] == 1_230_000
    assert refused.json["missing_display"] == "¥12,300.00"


def test_demo_credentials_are_kept_private_and_named_on_every_load(app, runner):
    first = runner.invoke(args=["demo-data"])
    assert first.exit_code == 0, first.output
    path = credentials_path(app)
    assert f"credentials written to {path}" in first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["buyer"]["client_secret"] and saved["vendor"]["client_id"]
    again = runner.invoke(args=["demo-data"])
    assert f"credentials in {path}" in again.output
