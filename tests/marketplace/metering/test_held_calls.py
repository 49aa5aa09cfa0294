"""Calls paid from a hold of their own (evaluation jobs): exact totals, holds that always fit."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.ledger import services as ledger
from marketplace.ledger.money import royalty_due
from marketplace.licensing import entitlements
from marketplace.metering import services as metering
from tests.marketplace.licensing.builders import account_posted, wallet_available
from tests.marketplace.metering.test_metering import buy_metered, call


def _run_batch(session, buyer, catalog, licence, royalty, parts, http_between):
    """Reserve a batch, then count its parts one by one with HTTP calls between them."""
    ent = entitlements.check_entitlement(
        session=session,
        organization_id=buyer,
        listing_id=catalog.listing_id,
        version_id=catalog.version_id,
    )
    tag = uuid.uuid4().hex
    cover = ledger.run_in_transaction(
        session,
        lambda s: entitlements.reserve_batch(
            s,
            entitlement=ent,
            calls=sum(parts),
            hold_minor=metering.hold_bound(royalty, parts),
            key=f"{tag}:hold",
        ),
    )
    hold_id = cover.hold_id
    for index, calls in enumerate(parts):
        for _ in range(http_between[index % len(http_between)]):
            call(session, buyer, catalog, reserve_calls=3)
        rehold = metering.hold_bound(royalty, parts[index + 1 :])

        def work(s, calls=calls, hold_id=hold_id, rehold=rehold, index=index):
            part = metering.HeldCalls(
                license_id=licence,
                version_id=catalog.version_id,
                calls=calls,
                hold_id=hold_id,
                rehold_minor=rehold,
                rehold_key=f"{tag}:{index}",
            )
            return entitlements.count_batch_calls(s, "per_inference", part)

        _charged, hold_id = ledger.run_in_transaction(session, work)
    assert hold_id is None


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    royalty=st.integers(1, 4000),
    parts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    http_between=st.lists(st.integers(0, 4), min_size=1, max_size=6),
)
def test_batch_and_single_calls_on_one_licence_cost_exactly_floor_n_r_over_1000(
    db_session, royalty, parts, http_between
):
    funds = 1_000_000
    buyer, _vendor, catalog, licence = buy_metered(db_session, royalty, funds=funds)
    _run_batch(db_session, buyer, catalog, licence, royalty, parts, http_between)
    metering.settle(session=db_session)
    http = sum(http_between[i % len(http_between)] for i in range(len(parts)))
    total = sum(parts) + http
    assert wallet_available(db_session, buyer) == funds - royalty_due(total, royalty)
    assert account_posted(db_session, buyer, "wallet") == funds - royalty_due(total, royalty)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(royalty=st.integers(1, 4000), parts=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_a_wallet_holding_just_the_bound_pays_every_part(db_session, royalty, parts):
    bound = metering.hold_bound(royalty, parts)
    buyer, _vendor, catalog, licence = buy_metered(db_session, royalty, funds=bound)
    _run_batch(db_session, buyer, catalog, licence, royalty, parts, [0])
    assert wallet_available(db_session, buyer) == bound - royalty_due(sum(parts), royalty)
