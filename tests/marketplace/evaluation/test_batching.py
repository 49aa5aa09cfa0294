"""Group commit of usage records over real commits: shared commits, exact trials and wallets."""

from __future__ import annotations

import threading

import pytest
from sqlmodel import Session, select

from marketplace.db import Database
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


@pytest.fixture
def committer(fresh_database, tmp_path):
    _url, engine = fresh_database()
    database = Database(engine)
    lock = NodeWriterLock(tmp_path / "writer.lock") if database.is_sqlite else None
    return database, GroupCommitter(
        database.session, window_s=0.002, reserve_calls=3, writer_lock=lock
    )


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
    buyer, _vendor, catalog, license_id = buy_metered(setup, 1000, funds=7)
    ent = entitlements.check_entitlement(
        session=setup,
        organization_id=buyer,
        listing_id=catalog.listing_id,
        version_id=catalog.version_id,
    )
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
