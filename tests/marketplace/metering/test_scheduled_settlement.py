"""Usage settles on the node's schedule: an idle licence's calls are charged without the CLI."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from marketplace import periodic
from marketplace.demo import defect_scorer_model
from tests.conftest import LiveServer
from tests.marketplace.live import Actor, Vendor


def test_settlement_is_registered_with_its_interval_and_zero_turns_it_off(
    live_server: Callable[..., LiveServer],
) -> None:
    on = live_server(METERING_SETTLE_INTERVAL_S=42.0)
    (task,) = [t for t in periodic.registered(on.app) if t.name == "metering.settle"]
    assert task.interval_s == 42.0
    off = live_server(METERING_SETTLE_INTERVAL_S=0)
    assert "metering.settle" not in [t.name for t in periodic.registered(off.app)]


@pytest.mark.slow
def test_an_idle_licence_is_settled_by_the_schedule(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(METERING_SETTLE_INTERVAL_S=0.2)
    vendor = Vendor(server)
    assert vendor.upload(defect_scorer_model(), "1.0.0").status_code == 201
    offer = vendor.offer(royalty_per_1k_minor=20_000, trial_calls=0)
    buyer = Actor(server, ["buyer"])
    top_up = buyer.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": 10_000, "currency": "CNY"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert top_up.status_code == 201, top_up.text
    order = buyer.post(
        f"/api/v1/offers/{offer['id']}/purchase",
        json={"accept_terms_sha256": offer["terms_sha256"]},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert order.status_code == 201, order.text
    licence_id = order.json()["licence_id"]
    readings = np.zeros((1, 16), np.float32)
    for n in (1, 2, 3):
        resp = buyer.evaluate(vendor.model_id, "latest", readings=readings)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["calls_used"] == n
        assert resp.json()["usage"]["accrued_minor"] == 20 * n
    before = buyer.get(f"/api/v1/licenses/{licence_id}").json()["usage"]
    assert (before["calls_unsettled"], before["settled_minor"]) == (3, 0)

    runner = periodic.Runner(server.app, tick_s=0.05)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            usage = buyer.get(f"/api/v1/licenses/{licence_id}").json()["usage"]
            if usage["calls_unsettled"] == 0:
                break
            assert time.monotonic() < deadline, usage
            time.sleep(0.1)
    finally:
        runner.stop()
    assert usage["settled_minor"] == usage["accrued_minor"] == 60
    entries = buyer.get("/api/v1/ledger/statement", params={"currency": "CNY"}).json()["entries"]
    assert [(e["amount_minor"], e["status"]) for e in entries if e["kind"] == "royalty"] == [
        (60, "posted")
    ]
    held = [e for e in entries if e["kind"] == "reservation"]
    assert held and all(e["status"] == "released" and not e["pending"] for e in held)
