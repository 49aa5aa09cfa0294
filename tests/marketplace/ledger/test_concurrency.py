"""Real commits from many threads: no lost update, no negative balance, no unhandled deadlock."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from sqlmodel import Session

from marketplace.ledger import services as ledger
from marketplace.ledger.errors import InsufficientFunds
from marketplace.ledger.models import PAYMENT_CLEARING, PLATFORM_REVENUE, VENDOR_PAYABLE, WALLET
from marketplace.ledger.services import Leg
from tests.marketplace.licensing.builders import make_organization

THREADS = 8


def run_threads(target, count=THREADS):
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def wrapped(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # surfaced below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    if errors:
        raise errors[0]


@pytest.mark.slow
def test_hot_wallet_and_hot_platform_account(fresh_database, db_backend):
    _url, engine = fresh_database()
    ops = 60 if db_backend == "postgresql" else 25
    setup = Session(engine, expire_on_commit=False)
    buyer = make_organization(setup, "buyer")
    vendors = [make_organization(setup, "vendor") for _ in range(THREADS)]

    def accounts(s):
        return (
            ledger.ensure_account(s, organization_id=buyer, code=WALLET, currency="CNY"),
            ledger.ensure_account(s, organization_id=None, code=PLATFORM_REVENUE, currency="CNY"),
            ledger.ensure_account(s, organization_id=None, code=PAYMENT_CLEARING, currency="CNY"),
            [
                ledger.ensure_account(s, organization_id=v, code=VENDOR_PAYABLE, currency="CNY")
                for v in vendors
            ],
        )

    wallet, revenue, clearing, payables = ledger.run_in_transaction(setup, accounts)
    ledger.post_transaction(
        setup,
        idempotency_key="seed",
        kind="top_up",
        legs=[Leg.debit(clearing, 500), Leg.credit(wallet, 500)],
    )
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def writer(i):
        session = Session(engine, expire_on_commit=False)
        for n in range(ops):
            try:
                if n % 3 == 2:
                    ledger.post_transaction(
                        session,
                        idempotency_key=f"top-up-{i}-{n}",
                        kind="top_up",
                        legs=[Leg.debit(clearing, 5), Leg.credit(wallet, 5)],
                    )
                    outcome = "top_up"
                else:
                    # A three-leg sale: the hot wallet pays a vendor and the hot platform account.
                    ledger.post_transaction(
                        session,
                        idempotency_key=f"sale-{i}-{n}",
                        kind="purchase",
                        legs=[
                            Leg.debit(wallet, 10),
                            Leg.credit(payables[i], 9),
                            Leg.credit(revenue, 1),
                        ],
                    )
                    outcome = "sale"
            except InsufficientFunds:
                outcome = "refused"
            with lock:
                outcomes[outcome] += 1
        session.close()

    run_threads(writer)
    check = Session(engine)
    (w,) = ledger.balances(check, account_ids=[wallet])
    (r,) = ledger.balances(check, account_ids=[revenue])
    assert outcomes["sale"] + outcomes["top_up"] + outcomes["refused"] == THREADS * ops
    assert w.credits_posted == 500 + 5 * outcomes["top_up"]
    assert w.debits_posted == 10 * outcomes["sale"]
    assert w.available >= 0
    assert r.credits_posted == outcomes["sale"]
    # One version step per committed transaction that touched the row: nothing overwritten.
    assert w.version == outcomes["sale"] + outcomes["top_up"] + 1
    assert r.version == outcomes["sale"]
    assert (
        sum(ledger.balances(check, account_ids=payables)[i].posted for i in range(THREADS))
        == 9 * outcomes["sale"]
    )
    assert ledger.check_invariants(check) == []
    check.close()


@pytest.mark.slow
def test_same_idempotency_key_from_many_threads_posts_once(fresh_database):
    _url, engine = fresh_database()
    setup = Session(engine, expire_on_commit=False)
    buyer = make_organization(setup, "buyer")
    wallet, clearing = ledger.run_in_transaction(
        setup,
        lambda s: (
            ledger.ensure_account(s, organization_id=buyer, code=WALLET, currency="JPY"),
            ledger.ensure_account(s, organization_id=None, code=PAYMENT_CLEARING, currency="JPY"),
        ),
    )
    key = uuid.uuid4().hex
    ids: list[int] = []

    def writer(_i):
        session = Session(engine, expire_on_commit=False)
        tx = ledger.post_transaction(
            session,
            idempotency_key=key,
            kind="top_up",
            legs=[Leg.debit(clearing, 700), Leg.credit(wallet, 700)],
        )
        ids.append(tx.id)
        session.close()

    run_threads(writer)
    assert len(set(ids)) == 1
    check = Session(engine)
    assert ledger.balances(check, account_ids=[wallet])[0].posted == 700
    check.close()


def test_sqlite_units_of_work_take_the_write_lock_first(fresh_database, db_backend):
    if db_backend != "sqlite":
        pytest.skip("PostgreSQL locks balance rows with SELECT ... FOR UPDATE instead")
    import sqlalchemy as sa

    _url, engine = fresh_database()
    begins: list[str] = []
    sa.event.listen(
        engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_a: (
            begins.append(statement) if statement.startswith("BEGIN") else None
        ),
    )
    session = Session(engine, expire_on_commit=False)
    session.execute(sa.text("SELECT 1")).all()  # an ordinary read first: DEFERRED
    ledger.run_in_transaction(
        session,
        lambda s: ledger.ensure_account(
            s, organization_id=None, code=PAYMENT_CLEARING, currency="EUR"
        ),
    )
    assert begins == ["BEGIN DEFERRED", "BEGIN IMMEDIATE"]
