"""Who may evaluate: the owner, a trial, a licence; metering and the wallet through the API."""

from __future__ import annotations

import uuid

import numpy as np

from tests import onnx_models as m

X = {"dtype": "float32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
BODY = {"inputs": {"x": X, "y": X}}


def _url(p):
    return f"/api/v1/models/{p.model_id}/versions/{p.version}/evaluate"


def _evaluate(client, org, p):
    return client.post(_url(p), json=BODY, headers=org.headers("sandbox:run"))


def _top_up(client, buyer, amount_minor, currency="CNY"):
    resp = client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": amount_minor, "currency": currency},
        headers=buyer.headers(**{"Idempotency-Key": uuid.uuid4().hex}),
    )
    assert resp.status_code in (200, 201), resp.json


def test_buyer_without_entitlement_gets_403(client, vendor, buyer, publish, offer_for):
    p = publish(vendor, m.add())
    offer_for(p)
    resp = _evaluate(client, buyer, p)
    assert resp.status_code == 403
    assert resp.json["code"] == "no_entitlement"


def test_trial_calls_are_counted_once_per_successful_call(
    client, vendor, buyer, publish, offer_for
):
    p = publish(vendor, m.add())
    offer = offer_for(p, trial_calls=2)
    trial = client.post(
        f"/api/v1/offers/{offer.id}/trial",
        json={"accept_terms_sha256": offer.terms_sha256},
        headers=buyer.headers(),
    )
    assert trial.status_code == 201, trial.json

    # A failed call (bad input) is not counted.
    bad = client.post(_url(p), json={"inputs": {"x": X}}, headers=buyer.headers("sandbox:run"))
    assert bad.status_code == 422
    # Nor is a call over no rows: it is refused before the model runs, as evaluating nothing.
    no_rows = {"inputs": {"x": {"dtype": "float32", "shape": [0, 3], "data": []}, "y": X}}
    empty = client.post(_url(p), json=no_rows, headers=buyer.headers("sandbox:run"))
    assert empty.status_code == 422, empty.json
    assert empty.json["code"] == "input_invalid"
    assert "no values" in empty.json["detail"]

    first = _evaluate(client, buyer, p)
    assert first.status_code == 200, first.json
    assert first.json["usage"]["kind"] == "trial"
    assert first.json["usage"]["calls_remaining"] == 1
    assert first.json["outputs"]["z"]["data"] == [2.0, 4.0, 6.0]
    assert _evaluate(client, buyer, p).json["usage"]["calls_remaining"] == 0
    exhausted = _evaluate(client, buyer, p)
    assert exhausted.status_code == 403
    assert exhausted.json["code"] == "no_entitlement"


def _buy_metered(client, buyer, offer):
    """Buy a per-inference licence (2500 minor units per thousand calls, no price, no trial)."""
    assert (offer.kind, offer.price_minor, offer.trial_calls) == ("per_inference", 0, 0)
    purchase = client.post(
        f"/api/v1/offers/{offer.id}/purchase",
        json={"accept_terms_sha256": offer.terms_sha256},
        headers=buyer.headers(**{"Idempotency-Key": uuid.uuid4().hex}),
    )
    assert purchase.status_code == 201, purchase.json
    return purchase.json


def test_metered_licence_charges_exactly_and_stops_at_an_empty_wallet(
    client, vendor, buyer, publish, offer_for
):
    p = publish(vendor, m.add())
    _buy_metered(client, buyer, offer_for(p, trial_calls=0))

    # An empty wallet cannot cover the next call: 402 before the model runs.
    broke = _evaluate(client, buyer, p)
    assert broke.status_code == 402
    assert broke.json["code"] == "insufficient_funds"

    _top_up(client, buyer, 10_000)
    charged = 0
    for _ in range(3):
        resp = _evaluate(client, buyer, p)
        assert resp.status_code == 200, resp.json
        assert resp.json["usage"]["kind"] == "per_inference"
        charged += resp.json["usage"]["call_accrued_minor"]
    # 3 calls at 2500 minor units per thousand: floor(3 * 2500 / 1000) = 7.
    assert charged == 7


def test_owner_is_never_charged(client, vendor, publish, offer_for):
    p = publish(vendor, m.add())
    offer_for(p)
    resp = _evaluate(client, vendor, p)
    assert resp.status_code == 200
    assert resp.json["usage"] == {"licence_id": None, "kind": "owner"}
    assert np.isclose(resp.json["outputs"]["z"]["data"][0], 2.0)


def test_a_metered_call_that_runs_to_the_deadline_is_recorded_like_a_call(
    client, vendor, buyer, publish, offer_for, db_session
):
    from marketplace.licensing.models import License

    p = publish(vendor, m.huge_loop())
    purchase = _buy_metered(client, buyer, offer_for(p, trial_calls=0))
    _top_up(client, buyer, 10_000)
    body = {"inputs": {"x": {"dtype": "float32", "shape": [1], "data": [0.0]}}}
    resp = client.post(_url(p), json=body, headers=buyer.headers("sandbox:run"))
    assert resp.status_code == 504 and resp.json["code"] == "deadline_exceeded"
    licence = db_session.get(License, purchase["licence_id"])
    db_session.refresh(licence)
    assert licence.calls_used == 1
