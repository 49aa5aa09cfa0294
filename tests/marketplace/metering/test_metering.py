"""Metered royalties: exact totals, reservations, 402 before running, crash-safe settlement."""

from __future__ import annotations

import pytest
from sqlmodel import select

from marketplace.ledger import services as ledger
from marketplace.ledger.errors import InsufficientFunds
from marketplace.ledger.models import PLATFORM_REVENUE, VENDOR_PAYABLE
from marketplace.ledger.money import split_fee
from marketplace.ledger.services import transfers as ledger_transfers
from marketplace.licensing import entitlements
from marketplace.licensing.models import License
from marketplace.metering import services as metering
from marketplace.metering.models import UsageEvent
from tests.marketplace.licensing.builders import (
    account_posted,
    fund_wallet,
    licensing_service,
    make_offer,
    make_organization,
    wallet_available,
)


def buy_metered(session, royalty, *, funds, currency="CNY", price=0, fee_bps=1000):
    vendor = make_organization(session, "vendor")
    buyer = make_organization(session, "buyer")
    catalog = make_offer(
        session,
        vendor,
        kind="per_inference",
        price_minor=price,
        royalty_per_1k_minor=royalty,
        currency=currency,
    )
    if funds:
        fund_wallet(session, buyer, funds, currency)
    order, _ = licensing_service(fee_bps).purchase(
        session=session,
        organization_id=buyer,
        offer_id=catalog.offer_id,
        accept_terms_sha256=catalog.terms_sha256,
        idempotency_key="buy",
        client_id="test",
    )
    return buyer, vendor, catalog, order.licence_id


def call(session, buyer, catalog, reserve_calls=1000):
    ent = entitlements.check_entitlement(
        session=session,
        organization_id=buyer,
        listing_id=catalog.listing_id,
        version_id=catalog.version_id,
    )
    return entitlements.record_successful_call(
        session=session, entitlement=ent, reserve_calls=reserve_calls
    )


def licence(session, license_id):
    lic = session.get(License, license_id)
    session.refresh(lic)
    return lic


@pytest.mark.parametrize(
    ("royalty", "calls", "reserve"), [(7, 2_345, 100), (1_234, 501, 64), (0, 50, 10)]
)
def test_n_calls_cost_exactly_the_floor(db_session, royalty, calls, reserve):
    buyer, vendor, catalog, license_id = buy_metered(db_session, royalty, funds=10_000)
    charged = 0
    for _ in range(calls // 50):
        usage = call(db_session, buyer, catalog, reserve)
        charged += usage["call_accrued_minor"]
        metering.record_calls(
            session=db_session,
            license_id=license_id,
            version_id=catalog.version_id,
            calls=49,
            reserve_calls=reserve,
        )
    done = (calls // 50) * 50
    metering.settle(session=db_session)
    due = done * royalty // 1000
    assert wallet_available(db_session, buyer) == 10_000 - due
    split = split_fee(due, 1000)
    assert account_posted(db_session, vendor, VENDOR_PAYABLE) == split.vendor
    lic = licence(db_session, license_id)
    assert (lic.calls_used, lic.calls_settled, lic.reservation_id) == (done, done, None)
    events = db_session.exec(select(UsageEvent).where(UsageEvent.license_id == license_id)).all()
    assert sorted(e.seq for e in events) == list(range(1, done + 1))
    assert len({e.id for e in events}) == done
    assert ledger.check_invariants(db_session) == []


def test_reservation_holds_money_and_402_comes_before_running(db_session):
    # 250 minor units per 1000 calls: a wallet of 10 covers exactly 43 calls (floor(43*.25)=10).
    buyer, _vendor, catalog, license_id = buy_metered(db_session, 250, funds=10)
    usage = call(db_session, buyer, catalog, reserve_calls=20)
    assert usage == {
        "licence_id": license_id,
        "kind": "per_inference",
        "calls_used": 1,
        "accrued_minor": 0,
        "call_accrued_minor": 0,
    }
    lic = licence(db_session, license_id)
    assert lic.calls_reserved == 20 and lic.reservation_id is not None
    assert wallet_available(db_session, buyer) == 5  # due(20) = 5 is held
    for _ in range(42):
        call(db_session, buyer, catalog, reserve_calls=20)
    assert licence(db_session, license_id).calls_used == 43
    with pytest.raises(InsufficientFunds) as exc:
        entitlements.check_entitlement(
            session=db_session,
            organization_id=buyer,
            listing_id=catalog.listing_id,
            version_id=catalog.version_id,
        )
    assert exc.value.status == 402 and exc.value.extra["missing_minor"] == 1
    metering.settle(session=db_session)
    assert wallet_available(db_session, buyer) == 0
    fund_wallet(db_session, buyer, 1)
    call(db_session, buyer, catalog)
    assert licence(db_session, license_id).calls_used == 44
    assert ledger.check_invariants(db_session) == []


def test_record_refuses_when_the_wallet_emptied_between_check_and_record(db_session):
    buyer, _vendor, catalog, license_id = buy_metered(db_session, 1_000, funds=3)
    ent = entitlements.check_entitlement(
        session=db_session,
        organization_id=buyer,
        listing_id=catalog.listing_id,
        version_id=catalog.version_id,
    )
    for _ in range(3):
        call(db_session, buyer, catalog, reserve_calls=1)
    with pytest.raises(InsufficientFunds):
        entitlements.record_successful_call(session=db_session, entitlement=ent, reserve_calls=1)
    assert licence(db_session, license_id).calls_used == 3
    metering.settle(session=db_session)
    assert wallet_available(db_session, buyer) == 0


def test_settlement_crash_half_way_loses_and_doubles_nothing(db_session, monkeypatch):
    licences = []
    for royalty in (3, 11, 999, 1_001):
        buyer, vendor, catalog, license_id = buy_metered(db_session, royalty, funds=100_000)
        for _ in range(5):
            metering.record_calls(
                session=db_session,
                license_id=license_id,
                version_id=catalog.version_id,
                calls=77,
                reserve_calls=100,
            )
        licences.append((buyer, vendor, royalty, license_id))
    revenue_before = account_posted(db_session, None, PLATFORM_REVENUE)
    vendor_before = [account_posted(db_session, x[1], VENDOR_PAYABLE) for x in licences]
    # Reservations of 100 calls were used up along the way, so part is settled already.
    settled_before = [licence(db_session, x[3]).calls_settled for x in licences]
    assert settled_before == [308, 308, 308, 308]

    # Crash inside the second batch, after its ledger writes, before its commit.
    batches = []

    def crash(session, transactions):
        batches.append(len(transactions))
        if len(batches) == 2:
            raise RuntimeError("power cut")

    monkeypatch.setattr(ledger_transfers, "_transaction_hooks", [crash])
    with pytest.raises(RuntimeError):
        metering.settle(session=db_session, batch_licenses=2, license_ids=[x[3] for x in licences])
    settled = [licence(db_session, x[3]).calls_settled for x in licences]
    assert settled == [385, 385, 308, 308]  # the first batch committed, the second rolled back

    monkeypatch.setattr(ledger_transfers, "_transaction_hooks", [])
    metering.settle(session=db_session, batch_licenses=2)
    metering.settle(session=db_session)  # rerunning finds nothing left
    total_fee = 0
    assert vendor_before[0] == split_fee(308 * 3 // 1000, 1000).vendor
    for buyer, vendor, royalty, license_id in licences:
        due = 385 * royalty // 1000
        split = split_fee(due, 1000)
        assert wallet_available(db_session, buyer) == 100_000 - due
        assert account_posted(db_session, vendor, VENDOR_PAYABLE) == split.vendor
        total_fee += split.platform
        assert licence(db_session, license_id).calls_settled == 385
    fee_before = sum(split_fee(308 * x[2] // 1000, 1000).platform for x in licences)
    assert (
        account_posted(db_session, None, PLATFORM_REVENUE) - revenue_before
        == total_fee - fee_before
    )
    assert ledger.check_invariants(db_session) == []


def test_jpy_royalties(db_session):
    buyer, vendor, catalog, license_id = buy_metered(
        db_session, 333, funds=1_000, currency="JPY", price=100
    )
    metering.record_calls(
        session=db_session, license_id=license_id, version_id=catalog.version_id, calls=1_000
    )
    metering.settle(session=db_session)
    # 100 yen price + floor(1000 * 333 / 1000) = 333 yen royalties.
    assert wallet_available(db_session, buyer, "JPY") == 1_000 - 100 - 333
    assert account_posted(db_session, vendor, VENDOR_PAYABLE, "JPY") == 90 + 300
    assert ledger.check_invariants(db_session) == []


def test_cli_settle(db_session, runner, app):
    buyer, _vendor, catalog, license_id = buy_metered(db_session, 10, funds=1_000)
    metering.record_calls(
        session=db_session, license_id=license_id, version_id=catalog.version_id, calls=250
    )
    result = runner.invoke(args=["ledger", "settle"])
    assert result.exit_code == 0, result.output
    assert "250 calls" in result.output
    assert wallet_available(db_session, buyer) == 1_000 - 2
    result = runner.invoke(args=["ledger", "check"])
    assert result.exit_code == 0 and "consistent" in result.output


def test_trial_and_entitlement_rules(db_session):
    from marketplace.catalog.errors import VersionRevoked
    from marketplace.catalog.models import ModelVersion
    from marketplace.db import utcnow
    from marketplace.errors import Forbidden
    from marketplace.licensing.services import start_trial

    vendor = make_organization(db_session, "vendor")
    buyer = make_organization(db_session, "buyer")
    catalog = make_offer(db_session, vendor, trial_calls=2, trial_days=3, allow_download=True)

    def check():
        return entitlements.check_entitlement(
            session=db_session,
            organization_id=buyer,
            listing_id=catalog.listing_id,
            version_id=catalog.version_id,
        )

    with pytest.raises(Forbidden) as exc:
        check()
    assert exc.value.code == "no_entitlement"
    start_trial(
        session=db_session,
        organization_id=buyer,
        offer_id=catalog.offer_id,
        accept_terms_sha256=catalog.terms_sha256,
        client_id="test",
    )
    kw = {
        "session": db_session,
        "organization_id": buyer,
        "listing_id": catalog.listing_id,
        "version_id": catalog.version_id,
    }
    assert not entitlements.may_download(**kw)  # a trial never downloads
    usage = entitlements.record_successful_call(session=db_session, entitlement=check())
    assert usage == {"licence_id": usage["licence_id"], "kind": "trial", "calls_remaining": 1}
    entitlements.record_successful_call(session=db_session, entitlement=check())
    with pytest.raises(Forbidden):
        check()
    fund_wallet(db_session, buyer, 10_000)
    licensing_service().purchase(
        session=db_session,
        organization_id=buyer,
        offer_id=catalog.offer_id,
        accept_terms_sha256=catalog.terms_sha256,
        idempotency_key="p",
        client_id="t",
    )
    assert check().kind == "perpetual"
    assert entitlements.may_download(**kw)
    version = db_session.get(ModelVersion, catalog.version_id)
    version.revoked_at = utcnow()
    db_session.add(version)
    db_session.commit()
    assert not entitlements.may_download(**kw)
    with pytest.raises(VersionRevoked) as exc:
        check()
    assert exc.value.code == "version_revoked"
