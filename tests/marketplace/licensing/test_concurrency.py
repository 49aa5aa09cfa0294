"""Purchases and trial calls racing each other over real commits."""

from __future__ import annotations

import requests
from sqlmodel import Session, select

from marketplace.licensing import entitlements
from marketplace.licensing.models import License, Order
from marketplace.licensing.services import start_trial
from tests.marketplace.ledger.test_concurrency import run_threads
from tests.marketplace.licensing.builders import (
    fund_wallet,
    make_offer,
    make_organization,
    wallet_available,
)


def register(base: str, roles: list[str]) -> tuple[int, str]:
    import uuid

    body = requests.post(
        f"{base}/api/v1/register",
        json={
            "email": f"{uuid.uuid4().hex[:10]}@example.test",
            "password": "Correct-Horse-9-Battery",
            "organization_name": "Racing Co.",
            "organization_roles": roles,
        },
        timeout=30,
    ).json()
    token = requests.post(
        f"{base}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(body["client"]["client_id"], body["client"]["client_secret"]),
        timeout=30,
    ).json()["access_token"]
    return body["organization_id"], token


def test_twenty_identical_purchases_make_one_order(live_server):
    server = live_server()
    buyer_id, token = register(server.url, ["buyer"])
    vendor_id, _ = register(server.url, ["vendor"])
    session: Session = server.app.extensions["db"].session()
    catalog = make_offer(session, vendor_id, price_minor=2_500)
    fund_wallet(session, buyer_id, 10_000)
    results: list[tuple[int, dict]] = []

    def purchase(_i):
        resp = requests.post(
            f"{server.url}/api/v1/offers/{catalog.offer_id}/purchase",
            json={"accept_terms_sha256": catalog.terms_sha256},
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "same-key"},
            timeout=60,
        )
        results.append((resp.status_code, resp.json()))

    run_threads(purchase, 20)
    statuses = sorted(status for status, _ in results)
    assert statuses.count(201) == 1 and statuses.count(200) == 19, results
    assert len({body["id"] for _, body in results}) == 1
    session.expire_all()
    assert len(session.exec(select(Order).where(Order.organization_id == buyer_id)).all()) == 1
    assert len(session.exec(select(License).where(License.organization_id == buyer_id)).all()) == 1
    assert wallet_available(session, buyer_id) == 7_500
    session.close()


def test_trial_calls_are_counted_exactly_once_under_concurrency(fresh_database):
    _url, engine = fresh_database()
    setup = Session(engine, expire_on_commit=False)
    vendor = make_organization(setup, "vendor")
    buyer = make_organization(setup, "buyer")
    catalog = make_offer(setup, vendor, trial_calls=5, trial_days=1)
    start_trial(
        session=setup,
        organization_id=buyer,
        offer_id=catalog.offer_id,
        accept_terms_sha256=catalog.terms_sha256,
        client_id="test",
    )
    # Every caller passes the check first (all see calls left); only five can record.
    ents = [
        entitlements.check_entitlement(
            session=setup,
            organization_id=buyer,
            listing_id=catalog.listing_id,
            version_id=catalog.version_id,
        )
        for _ in range(8)
    ]
    recorded: list[int] = []
    refused: list[str] = []

    def call(i):
        session = Session(engine, expire_on_commit=False)
        try:
            usage = entitlements.record_successful_call(session=session, entitlement=ents[i])
            recorded.append(usage["calls_remaining"])
        except Exception as exc:
            refused.append(getattr(exc, "code", repr(exc)))
        finally:
            session.close()

    run_threads(call, 8)
    assert sorted(recorded) == [0, 1, 2, 3, 4]
    assert refused == ["no_entitlement"] * 3
    lic = setup.exec(select(License).where(License.organization_id == buyer)).one()
    setup.refresh(lic)
    assert (lic.calls_remaining, lic.calls_used) == (0, 5)
