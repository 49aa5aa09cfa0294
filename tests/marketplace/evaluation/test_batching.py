"""Group commit of usage records over real commits: shared commits, exact trials and wallets."""

from __future__ import annotations

import threading
import time

import pytest
from sqlmodel import Session, select

from marketplace.db import Database, utcnow
from marketplace.errors import DomainError
from marketplace.evaluation.batching import GroupCommitter, NodeWriterLock
from marketplace.ledger import services as ledger
from marketplace.licensing import entitlements
from marketplace.licensing.models import License
from marketplace.licensing.services import start_trial
from marketplace.metering import services as metering
from marketplace.metering.models import UsageEvent
from tests.marketplace.licensing.builders import make_offer, make_organization, wallet_available
from tests.marketplace.metering.test_metering import buy_metered


def _race(committer: GroupCommitter, ent, callers: int) -> list[dict | str]:
    """``callers`` calls finishing together; each one's usage or its error code."""
    results: list[dict | str] = [""] * callers
    barrier = threading.Barrier(callers)

    def call(i: int) -> None:
        with committer.running() as running:
            barrier.wait()
            try:
                results[i] = committer.record(ent, running)
            except DomainError as exc:
                results[i] = exc.code

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _metered_buyer(session: Session, *, funds: int):
    """A buyer holding a per-inference licence at 1 minor unit a call, and its entitlement."""
    buyer, _vendor, catalog, license_id = buy_metered(session, 1000, funds=funds)
    ent = entitlements.check_entitlement(
        session=session,
        organization_id=buyer,
        listing_id=catalog.listing_id,
        version_id=catalog.version_id,
    )
    return buyer, catalog, license_id, ent


@pytest.fixture(params=["orm", "driver"])
def committer(request, fresh_database, tmp_path):
    """A committer on the full (ORM) path alone, or as the node builds it: covered metered
    batches on the driver fast path, the rest on the full path."""
    _url, engine = fresh_database()
    database = Database(engine)
    lock = NodeWriterLock(tmp_path / "writer.lock") if database.is_sqlite else None
    build = GroupCommitter.for_database if request.param == "driver" else None
    if build is None:
        return database, GroupCommitter(
            database.session, window_s=0.002, reserve_calls=3, writer_lock=lock
        )
    return database, build(database, window_s=0.002, reserve_calls=3, writer_lock=lock)


def test_concurrent_trial_calls_share_commits_and_stop_exactly_at_the_trial(committer):
    database, group = committer
    setup = database.session()
    vendor, buyer = make_organization(setup, "vendor"), make_organization(setup, "buyer")
    catalog = make_offer(setup, vendor, trial_calls=10, trial_days=7)
    trial = start_trial(
        session=setup,
        organization_id=buyer,
        offer_id=catalog.offer_id,
        accept_terms_sha256=catalog.terms_sha256,
        client_id="test",
    )
    ent = entitlements.check_entitlement(
        session=setup,
        organization_id=buyer,
        listing_id=catalog.listing_id,
        version_id=catalog.version_id,
    )
    results = _race(group, ent, 24)
    served = [r for r in results if isinstance(r, dict)]
    assert len(served) == 10
    assert sorted(r["calls_remaining"] for r in served) == list(range(10))
    assert [r for r in results if not isinstance(r, dict)] == ["no_entitlement"] * 14
    lic = setup.get(License, trial.id)
    setup.refresh(lic)
    assert (lic.calls_used, lic.calls_remaining) == (10, 0)
    assert group.stats.records == 24
    assert group.stats.batches < 24  # calls finishing together shared commits
    setup.close()


def test_concurrent_metered_calls_never_outrun_the_wallet_in_one_batch(committer):
    database, group = committer
    setup = Session(database.engine, expire_on_commit=False)
    # 1 minor unit per call and 7 in the wallet: exactly 7 calls, whatever the batches.
    buyer, _catalog, license_id, ent = _metered_buyer(setup, funds=7)
    results = _race(group, ent, 16)
    served = [r for r in results if isinstance(r, dict)]
    assert len(served) == 7
    assert sorted(r["calls_used"] for r in served) == list(range(1, 8))
    assert all(r["call_accrued_minor"] == 1 for r in served)
    assert sorted(r for r in results if isinstance(r, str)) == ["insufficient_funds"] * 9
    events = setup.exec(select(UsageEvent).where(UsageEvent.license_id == license_id)).all()
    assert len(events) == 7
    metering.settle(session=setup)
    assert wallet_available(setup, buyer) == 0
    assert ledger.check_invariants(setup) == []
    setup.close()


def test_covered_metered_batches_take_the_driver_path_and_write_what_the_full_path_writes(
    fresh_database, tmp_path
):
    _url, engine = fresh_database()
    database = Database(engine)
    lock = NodeWriterLock(tmp_path / "writer.lock") if database.is_sqlite else None
    # A reservation of 1000 calls: every batch below is covered, none settles.
    group = GroupCommitter.for_database(
        database, window_s=0.002, reserve_calls=1000, writer_lock=lock
    )
    setup = Session(database.engine, expire_on_commit=False)
    buyer, catalog, license_id, ent = _metered_buyer(setup, funds=10_000)
    # The first call reserves (the full path); the rest fit the reservation.
    first = group.record(ent)
    before = utcnow()
    results = _race(group, ent, 12)
    after = utcnow()
    assert first["calls_used"] == 1
    assert sorted(r["calls_used"] for r in results) == list(range(2, 14))
    assert group.stats.reserved_batches >= 1
    assert group.stats.reserved_batches == group.stats.batches - 1
    events = setup.exec(
        select(UsageEvent).where(UsageEvent.license_id == license_id).order_by(UsageEvent.seq)
    ).all()
    assert [e.seq for e in events] == list(range(1, 14))
    assert {e.version_id for e in events} == {catalog.version_id}
    assert len({e.id for e in events}) == 13 and all(len(e.id) == 32 for e in events)
    # Stored as the ORM stores them: read back as aware UTC times of when they were counted.
    assert all(before <= e.created_at <= after for e in events[1:])
    lic = setup.get(License, license_id)
    setup.refresh(lic)
    assert lic.calls_used == 13
    metering.settle(session=setup)
    assert wallet_available(setup, buyer) == 10_000 - 13
    assert ledger.check_invariants(setup) == []
    setup.close()


def test_a_batch_the_reservation_does_not_cover_writes_nothing_on_the_driver_path(
    fresh_database,
):
    _url, engine = fresh_database()
    database = Database(engine)
    setup = Session(database.engine, expire_on_commit=False)
    _buyer, _vendor, catalog, license_id = buy_metered(setup, 1000, funds=10_000)
    counter = metering.ReservedCallCounter(database.engine.dialect)
    # No call reserved yet: the driver path declines and leaves the licence as it was.
    assert counter.count(database.driver_transaction, [(license_id, [catalog.version_id])]) is None
    lic = setup.get(License, license_id)
    setup.refresh(lic)
    assert lic.calls_used == 0
    assert setup.exec(select(UsageEvent).where(UsageEvent.license_id == license_id)).all() == []
    setup.close()


@pytest.mark.parametrize("commit_s", [0.0, 0.005])
def test_a_leader_waits_no_longer_than_a_commit_costs(commit_s):
    """Waiting longer for a running call than its own commit would take cannot pay."""

    def count(ents):
        time.sleep(commit_s)
        return [{"licence_id": 1, "kind": "per_inference"} for _ in ents]

    group = GroupCommitter(
        lambda: pytest.fail("the full path is not taken"),
        window_s=0.002,
        reserve_calls=3,
        count_reserved=count,
    )
    assert group.wait_s == 0.002
    ent = object()
    for _ in range(50):
        group.record(ent)
    assert group.stats.batches == 50
    if commit_s > group.window_s:
        assert group.wait_s == group.window_s
    else:
        assert group.wait_s < group.window_s / 4
