"""Appending in the change's own transaction, sequencing into one chain, the actor, no secrets."""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa

from marketplace.audit import journal, services
from marketplace.audit.journal import Actor, Money
from marketplace.audit.models import AuditRecord
from marketplace.canonical import CanonicalJsonError, canonical_json
from marketplace.catalog import services as catalog
from marketplace.catalog.models import Offer
from marketplace.catalog.schemas import OfferCreate
from marketplace.ledger import services as ledger
from marketplace.ledger.models import LedgerTransaction
from tests.marketplace.audit.conftest import pending, records, top_up
from tests.marketplace.licensing.builders import (
    licensing_service,
    make_offer,
    make_organization,
    payments_service,
)


def test_a_ledger_transaction_commits_with_its_record(app, db_session):
    org = make_organization(db_session)
    before = pending(db_session)
    tx_id = top_up(db_session, org, 2500, key="top-up:recorded")
    assert pending(db_session) == before + 1
    (record,) = [r for r in records(db_session) if r["kind"] == "ledger.transaction"]
    assert record["subject"]["ledger_transaction_id"] == tx_id
    assert record["subject"]["transaction_kind"] == "top_up"
    assert record["subject"]["idempotency_key"] == "top-up:recorded"
    assert record["money"]["currency"] == "CNY" and record["money"]["amount_minor"] == 2500
    assert sorted(leg["side"] for leg in record["money"]["legs"]) == ["credit", "debit"]
    assert record["actor"] == {"organization_id": None, "client_id": None, "via": "system"}
    assert pending(db_session) == 0


def test_a_transaction_that_fails_after_the_append_leaves_no_record(app, db_session):
    org = make_organization(db_session)
    top_up(db_session, org, 100)
    before = pending(db_session)
    seen_inside = []

    def work(s):
        clearing = ledger.ensure_account(
            s, organization_id=None, code="payment_clearing", currency="CNY"
        )
        wallet = ledger.ensure_account(s, organization_id=org, code="wallet", currency="CNY")
        ledger.apply_transfers(
            s,
            [
                ledger.Transfer(
                    idempotency_key="doomed",
                    kind="top_up",
                    legs=(ledger.Leg.debit(clearing, 7), ledger.Leg.credit(wallet, 7)),
                )
            ],
        )
        seen_inside.append(pending(s))
        raise RuntimeError("the change fails after its record was appended")

    with pytest.raises(RuntimeError):
        ledger.run_in_transaction(db_session, work)
    assert seen_inside == [before + 1]  # the record was written, inside the transaction
    assert pending(db_session) == before
    assert (
        db_session.execute(
            sa.select(LedgerTransaction).where(LedgerTransaction.idempotency_key == "doomed")
        ).first()
        is None
    )
    assert all(r["subject"].get("idempotency_key") != "doomed" for r in records(db_session))


def test_a_catalog_change_whose_commit_fails_leaves_no_record(app, db_session, monkeypatch):
    vendor = make_organization(db_session, "vendor")
    catalog_rows = make_offer(db_session, vendor)
    before = len(records(db_session))
    real_commit = db_session.commit

    def failing_commit():
        monkeypatch.setattr(db_session, "commit", real_commit)
        raise sa.exc.OperationalError("COMMIT", {}, Exception("disk full"))

    monkeypatch.setattr(db_session, "commit", failing_commit)
    request = OfferCreate(
        name="Doomed", kind="perpetual", currency="CNY", price_minor=5, terms_md="terms"
    )
    with pytest.raises(sa.exc.OperationalError):
        catalog.create_offer(
            session=db_session,
            listing_id=catalog_rows.listing_id,
            organization_id=vendor,
            request=request,
        )
    db_session.rollback()
    assert db_session.execute(sa.select(Offer).where(Offer.name == "Doomed")).first() is None
    assert len(records(db_session)) == before
    # And the same change, committed, has its record.
    offer = catalog.create_offer(
        session=db_session, listing_id=catalog_rows.listing_id, organization_id=vendor,
        request=request,
    )  # fmt: skip
    (created,) = [r for r in records(db_session) if r["kind"] == "offer.created"]
    assert created["subject"]["offer_id"] == offer.id
    assert created["subject"]["terms_sha256"] == offer.terms_sha256
    assert created["money"] == {"currency": "CNY", "amount_minor": 5, "royalty_per_1k_minor": 0}


def test_sequenced_records_form_one_chain_of_canonical_bytes(app, db_session):
    org = make_organization(db_session)
    for amount in (1, 2, 3, 4, 5):
        top_up(db_session, org, amount)
    with journal.acting_as(Actor(organization_id=org, client_id="cli-1", via="api")):
        journal.append(db_session, kind="test.event", subject={"thing_id": 9})
    db_session.commit()
    journal.sequence(db_session)
    rows = db_session.execute(
        sa.select(AuditRecord.__table__.c.seq, AuditRecord.__table__.c.record).order_by(  # type: ignore[attr-defined]
            AuditRecord.__table__.c.seq  # type: ignore[attr-defined]
        )
    ).all()
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    prev = "0" * 64
    for seq, raw in rows:
        data = bytes(raw)
        record = json.loads(data)
        assert canonical_json(record) == data
        assert record["seq"] == seq and record["prev"] == prev
        assert record["at"].endswith("Z")
        prev = hashlib.sha256(data).hexdigest()
    last = json.loads(bytes(rows[-1][1]))
    assert last["kind"] == "test.event"
    assert last["actor"] == {"organization_id": org, "client_id": "cli-1", "via": "api"}
    assert last["money"] is None
    assert services.check_journal(db_session) == []
    head = journal.read_head(db_session)
    assert head is not None and head.size == len(rows) and head.last_sha256 == prev


def test_records_refuse_secrets_floats_and_odd_kinds(app, db_session):
    for subject in ({"client_secret": "x"}, {"nested": {"password": "x"}}, {"access_token": "t"}):
        with pytest.raises(ValueError, match="never hold secrets"):
            journal.append(db_session, kind="test.event", subject=subject)
    with pytest.raises(CanonicalJsonError):
        journal.append(db_session, kind="test.event", subject={}, money=Money("CNY", 1.5))  # type: ignore[arg-type]
    for kind in ("Offer.Created", "created", "a." + "b" * 60):
        with pytest.raises(ValueError, match="record kind"):
            journal.append(db_session, kind=kind, subject={})


def test_sequencing_is_incremental_and_idempotent(app, db_session):
    org = make_organization(db_session)
    top_up(db_session, org, 1)
    assert journal.sequence(db_session) == 1
    assert journal.sequence(db_session) == 0
    for _ in range(7):
        top_up(db_session, org, 1)
    assert journal.sequence(db_session, batch_max=3) == 7
    assert services.tree_size(db_session) == 8
    assert services.check_journal(db_session) == []


def test_ledger_check_finds_a_transaction_without_its_record(app, db_session, runner):
    org = make_organization(db_session)
    top_up(db_session, org, 10)
    result = runner.invoke(args=["ledger", "check"])
    assert result.exit_code == 0, result.output
    journal.uninstall()
    try:
        tx_id = top_up(db_session, org, 11)
    finally:
        journal.install()
    result = runner.invoke(args=["ledger", "check"])
    assert result.exit_code == 1
    assert f"without an audit journal record: [{tx_id}]" in result.output


def test_a_payout_is_recorded_when_held_and_when_paid(app, db_session):
    from marketplace.payments import payouts
    from marketplace.payments.gateway import OfflineGateway
    from tests.marketplace.licensing.builders import fund_wallet

    gateway = OfflineGateway()
    buyer = make_organization(db_session)
    vendor = make_organization(db_session, "vendor")
    fund_wallet(db_session, buyer, 5_000)
    catalog = make_offer(db_session, vendor, price_minor=2_000)
    licensing_service().purchase(
        session=db_session,
        organization_id=buyer,
        offer_id=catalog.offer_id,
        accept_terms_sha256=catalog.terms_sha256,
        idempotency_key="buy",
        client_id="c",
    )
    payouts.set_payout_account(
        session=db_session,
        gateway=gateway,
        organization_id=vendor,
        viewer_organization_id=vendor,
        account_ref="acct_vendor",
    )
    (paid,) = payments_service(gateway, payout_minimum_minor=1).pay_out(session=db_session)
    assert paid.status == "paid"
    got = [r for r in records(db_session) if r["kind"].startswith("payout.")]
    assert [r["kind"] for r in got] == ["payout.started", "payout.paid"]
    for record in got:
        assert record["subject"]["payout_id"] == paid.id
        assert record["subject"]["organization_id"] == vendor
        assert record["subject"]["destination"] == "acct_vendor"
        assert record["money"] == {"currency": "CNY", "amount_minor": 1_800}
    assert got[1]["subject"]["resolve_transaction_id"] is not None
    # The hold and its settlement are ledger transactions with records of their own.
    ledger_kinds = [
        r["subject"]["transaction_kind"]
        for r in records(db_session)
        if r["kind"] == "ledger.transaction"
    ]
    assert ledger_kinds.count("payout") >= 1
    assert services.ledger_transactions_without_record(db_session) == []
