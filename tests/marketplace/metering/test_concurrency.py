"""Many callers on one metered licence with a small wallet, over real commits."""

from __future__ import annotations

import threading

from sqlmodel import Session

from marketplace.errors import PaymentRequired
from marketplace.ledger import services as ledger
from marketplace.ledger.money import royalty_due
from marketplace.licensing import entitlements
from marketplace.licensing.models import License
from marketplace.metering import services as metering
from tests.marketplace.ledger.test_concurrency import run_threads
from tests.marketplace.licensing.builders import wallet_available
from tests.marketplace.metering.test_metering import buy_metered

ROYALTY = 2_500  # 2.5 minor units per call
FUNDS = 500  # covers exactly 200 calls


def test_concurrent_calls_never_outrun_the_wallet(fresh_database):
    _url, engine = fresh_database()
    setup = Session(engine, expire_on_commit=False)
    buyer, _vendor, catalog, license_id = buy_metered(setup, ROYALTY, funds=FUNDS)
    served = 0
    lock = threading.Lock()

    def caller(_i):
        nonlocal served
        session = Session(engine, expire_on_commit=False)
        while True:
            try:
                ent = entitlements.check_entitlement(
                    session=session,
                    organization_id=buyer,
                    listing_id=catalog.listing_id,
                    version_id=catalog.version_id,
                )
                entitlements.record_successful_call(
                    session=session, entitlement=ent, reserve_calls=7
                )
            except PaymentRequired:
                break
            with lock:
                served += 1
        session.close()

    run_threads(caller, 6)
    metering.settle(session=setup)
    lic = setup.get(License, license_id)
    setup.refresh(lic)
    assert served == lic.calls_used == 200
    assert royalty_due(lic.calls_used, ROYALTY) == FUNDS
    assert wallet_available(setup, buyer) == 0
    assert ledger.check_invariants(setup) == []
    setup.close()
