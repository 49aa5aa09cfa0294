"""post_transaction, holds, reversals, limits and the append-only triggers, on both engines."""

from __future__ import annotations

import sqlite3
import uuid

import psycopg
import pytest
import sqlalchemy as sa

from marketplace.ledger import services as ledger
from marketplace.ledger.errors import (
    IdempotencyKeyReused,
    InsufficientFunds,
    InvalidTransaction,
    LimitExceeded,
    PendingResolved,
)
from marketplace.ledger.models import (
    PAYMENT_CLEARING,
    PLATFORM_REVENUE,
    ROYALTY_ACCRUAL,
    VENDOR_PAYABLE,
    WALLET,
)
from marketplace.ledger.services import Leg
from marketplace.ledger.services import transfers as ledger_transfers
from tests.marketplace.licensing.builders import fund_wallet, make_organization


def key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def accounts(db_session):
    buyer = make_organization(db_session, "buyer")
    vendor = make_organization(db_session, "vendor")

    def work(s):
        return {
            "wallet": ledger.ensure_account(s, organization_id=buyer, code=WALLET, currency="CNY"),
            "vendor": ledger.ensure_account(
                s, organization_id=vendor, code=VENDOR_PAYABLE, currency="CNY"
            ),
            "revenue": ledger.ensure_account(
                s, organization_id=None, code=PLATFORM_REVENUE, currency="CNY"
            ),
            "accrual": ledger.ensure_account(
                s, organization_id=None, code=ROYALTY_ACCRUAL, currency="CNY"
            ),
            "clearing": ledger.ensure_account(
                s, organization_id=None, code=PAYMENT_CLEARING, currency="CNY"
            ),
            "jpy_wallet": ledger.ensure_account(
                s, organization_id=buyer, code=WALLET, currency="JPY"
            ),
            "buyer": buyer,
        }

    ids = ledger.run_in_transaction(db_session, work)
    fund_wallet(db_session, buyer, 1_000)
    return ids


def available(session, account_id):
    return ledger.balances(session, account_ids=[account_id])[0].available


def test_ensure_account_is_stable(db_session, accounts):
    again = ledger.run_in_transaction(
        db_session,
        lambda s: ledger.ensure_account(
            s, organization_id=accounts["buyer"], code=WALLET, currency="CNY"
        ),
    )
    assert again == accounts["wallet"]
    with pytest.raises(InvalidTransaction):
        ledger.ensure_account(db_session, organization_id=None, code="nonsense", currency="CNY")
    with pytest.raises(InvalidTransaction) as exc:
        ledger.ensure_account(db_session, organization_id=None, code=WALLET, currency="XTS")
    assert exc.value.code == "unknown_currency"


def test_three_leg_sale_and_idempotency(db_session, accounts):
    a = accounts
    legs = [Leg.debit(a["wallet"], 500), Leg.credit(a["vendor"], 450), Leg.credit(a["revenue"], 50)]
    tx = ledger.post_transaction(
        db_session, idempotency_key="sale-1" + a["wallet"].__str__(), kind="purchase", legs=legs
    )
    assert not tx.replayed and available(db_session, a["wallet"]) == 500
    count = db_session.execute(sa.text("SELECT count(*) FROM ledger_entries")).scalar()
    same = ledger.post_transaction(
        db_session, idempotency_key=tx.idempotency_key, kind="purchase", legs=list(reversed(legs))
    )
    assert same.replayed and same.id == tx.id
    assert db_session.execute(sa.text("SELECT count(*) FROM ledger_entries")).scalar() == count
    with pytest.raises(IdempotencyKeyReused) as exc:
        ledger.post_transaction(
            db_session,
            idempotency_key=tx.idempotency_key,
            kind="purchase",
            legs=[Leg.debit(a["wallet"], 1), Leg.credit(a["vendor"], 1)],
        )
    assert exc.value.code == "idempotency_key_reused" and exc.value.status == 409
    assert ledger.check_invariants(db_session) == []


def test_wallet_cannot_go_negative(db_session, accounts):
    a = accounts
    with pytest.raises(InsufficientFunds) as exc:
        ledger.post_transaction(
            db_session,
            idempotency_key=key(),
            kind="purchase",
            legs=[Leg.debit(a["wallet"], 1_001), Leg.credit(a["vendor"], 1_001)],
        )
    assert exc.value.status == 402 and exc.value.extra == {"missing_minor": 1, "currency": "CNY"}
    assert available(db_session, a["wallet"]) == 1_000


def test_other_limits_are_conflicts(db_session, accounts):
    a = accounts
    with pytest.raises(LimitExceeded):
        ledger.post_transaction(
            db_session,
            idempotency_key=key(),
            kind="payout",
            legs=[Leg.debit(a["vendor"], 1), Leg.credit(a["clearing"], 1)],
        )


@pytest.mark.parametrize(
    "legs",
    [
        lambda a: [Leg.debit(a["wallet"], 5), Leg.credit(a["vendor"], 4)],
        lambda a: [Leg.debit(a["wallet"], 0), Leg.credit(a["vendor"], 0)],
        lambda a: [Leg.debit(a["wallet"], -5), Leg.credit(a["vendor"], -5)],
        lambda a: [Leg(a["wallet"], "sideways", 5), Leg.credit(a["vendor"], 5)],
        lambda a: [Leg.debit(a["jpy_wallet"], 5), Leg.credit(a["vendor"], 5)],
        lambda a: [Leg.debit(10**9, 5), Leg.credit(a["vendor"], 5)],
        lambda a: [],
    ],
    ids=["unbalanced", "zero", "negative", "side", "mixed-currency", "unknown-account", "empty"],
)
def test_malformed_transfers_are_refused(db_session, accounts, legs):
    with pytest.raises(InvalidTransaction):
        ledger.post_transaction(db_session, idempotency_key=key(), kind="x", legs=legs(accounts))
    assert ledger.check_invariants(db_session) == []


def test_hold_post_partial_releases_the_rest(db_session, accounts):
    a = accounts
    hold = ledger.post_transaction(
        db_session,
        idempotency_key=key(),
        kind="hold",
        legs=[Leg.debit(a["wallet"], 600), Leg.credit(a["accrual"], 600)],
        pending=True,
    )
    assert available(db_session, a["wallet"]) == 400
    with pytest.raises(InsufficientFunds):  # the held money cannot be spent twice
        ledger.post_transaction(
            db_session,
            idempotency_key=key(),
            kind="purchase",
            legs=[Leg.debit(a["wallet"], 401), Leg.credit(a["vendor"], 401)],
        )
    with pytest.raises(InvalidTransaction) as exc:
        ledger.post_pending(db_session, idempotency_key=key(), pending_id=hold.id, amount=601)
    assert exc.value.code == "exceeds_hold"
    posted = ledger.post_pending(db_session, idempotency_key=key(), pending_id=hold.id, amount=250)
    assert posted.resolves_id == hold.id
    (wallet,) = ledger.balances(db_session, account_ids=[a["wallet"]])
    assert (wallet.debits_posted, wallet.debits_pending, wallet.available) == (250, 0, 750)
    with pytest.raises(PendingResolved):
        ledger.void_pending(db_session, idempotency_key=key(), pending_id=hold.id)
    with pytest.raises(PendingResolved):
        ledger.post_pending(db_session, idempotency_key=key(), pending_id=posted.id)
    assert ledger.check_invariants(db_session) == []


def test_void_releases_everything(db_session, accounts):
    a = accounts
    hold = ledger.post_transaction(
        db_session,
        idempotency_key=key(),
        kind="hold",
        legs=[Leg.debit(a["wallet"], 1_000), Leg.credit(a["accrual"], 1_000)],
        pending=True,
    )
    assert available(db_session, a["wallet"]) == 0
    void = ledger.void_pending(db_session, idempotency_key=key(), pending_id=hold.id)
    assert void.legs == () and void.kind == "void"
    assert available(db_session, a["wallet"]) == 1_000
    assert ledger.check_invariants(db_session) == []


def test_place_hold_and_void_transfer(db_session, accounts):
    a = accounts
    hold_id = ledger.run_in_transaction(
        db_session,
        lambda s: ledger.place_hold(
            s,
            idempotency_key=key(),
            kind="reservation",
            from_account=a["wallet"],
            to_account=a["accrual"],
            amount=300,
            memo="m" * (ledger.MEMO_MAX + 50),
        ),
    )
    hold = ledger.get_transaction(db_session, hold_id)
    assert hold is not None and hold.pending and hold.kind == "reservation"
    assert sorted((leg.account_id, leg.side, leg.amount) for leg in hold.legs) == sorted(
        [(a["wallet"], "debit", 300), (a["accrual"], "credit", 300)]
    )
    assert hold.memo == "m" * ledger.MEMO_MAX
    assert available(db_session, a["wallet"]) == 700
    (void,) = ledger.run_in_transaction(
        db_session,
        lambda s: ledger.apply_transfers(
            s, [ledger.void_transfer(key(), hold_id, kind="reservation_release")]
        ),
    )
    assert (void.kind, void.legs, void.resolves_id) == ("reservation_release", (), hold_id)
    assert available(db_session, a["wallet"]) == 1_000
    assert ledger.check_invariants(db_session) == []


def test_reversal_is_a_new_opposite_transaction(db_session, accounts):
    a = accounts
    tx = ledger.post_transaction(
        db_session,
        idempotency_key=key(),
        kind="purchase",
        legs=[Leg.debit(a["wallet"], 300), Leg.credit(a["vendor"], 300)],
    )
    rev = ledger.reverse_transaction(db_session, idempotency_key=key(), transaction_id=tx.id)
    assert rev.reverses_id == tx.id
    assert rev.amount_on(a["wallet"], "credit") == 300
    assert available(db_session, a["wallet"]) == 1_000
    assert ledger.get_transaction(db_session, tx.id) == tx  # the original is untouched
    with pytest.raises(PendingResolved):
        ledger.reverse_transaction(db_session, idempotency_key=key(), transaction_id=tx.id)
    assert ledger.check_invariants(db_session) == []


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET kind = 'forged'",
        "DELETE FROM ledger_transactions",
    ],
)
def test_entries_and_transactions_are_append_only_in_the_database(db_session, accounts, statement):
    # Raw SQL, bypassing every service: the database itself must refuse.
    with pytest.raises(sa.exc.DBAPIError) as exc, db_session.begin_nested():
        db_session.execute(sa.text(statement))
    assert "append-only" in str(exc.value)
    assert ledger.check_invariants(db_session) == []


def test_amount_check_constraint(db_session, accounts):
    tx = ledger.post_transaction(
        db_session,
        idempotency_key=key(),
        kind="x",
        legs=[Leg.debit(accounts["wallet"], 1), Leg.credit(accounts["vendor"], 1)],
    )
    with pytest.raises(sa.exc.IntegrityError), db_session.begin_nested():
        db_session.execute(
            sa.text(
                "INSERT INTO ledger_entries (transaction_id, account_id, side, amount, pending, created_at) "
                "VALUES (:t, :a, 'debit', 0, false, CURRENT_TIMESTAMP)"
            ),
            {"t": tx.id, "a": accounts["wallet"]},
        )


def test_transaction_hook_runs_inside_the_unit_of_work(db_session, accounts, monkeypatch):
    seen = []
    monkeypatch.setattr(ledger_transfers, "_transaction_hooks", [])

    def hook(session, transactions):
        seen.extend(t.kind for t in transactions)
        raise RuntimeError("audit chain unavailable")

    ledger.register_transaction_hook(hook)
    with pytest.raises(RuntimeError):
        ledger.post_transaction(
            db_session,
            idempotency_key=key(),
            kind="purchase",
            legs=[Leg.debit(accounts["wallet"], 1), Leg.credit(accounts["vendor"], 1)],
        )
    assert seen == ["purchase"]
    assert available(db_session, accounts["wallet"]) == 1_000  # rolled back with the hook


def test_a_batch_of_transfers_commits_together(db_session, accounts):
    a = accounts
    batch = [
        ledger.Transfer(
            idempotency_key=key(),
            kind="purchase",
            legs=(
                Leg.debit(a["wallet"], 10),
                Leg.credit(a["vendor"], 9),
                Leg.credit(a["revenue"], 1),
            ),
        )
        for _ in range(40)  # large enough for the bulk (COPY) path on PostgreSQL
    ]
    posted = ledger.run_in_transaction(db_session, lambda s: ledger.apply_transfers(s, batch))
    assert len({tx.id for tx in posted}) == 40
    assert ledger.get_transaction(db_session, posted[-1].id) == posted[-1]
    assert available(db_session, a["wallet"]) == 600
    again = ledger.run_in_transaction(db_session, lambda s: ledger.apply_transfers(s, batch))
    assert [tx.id for tx in again] == [tx.id for tx in posted] and all(tx.replayed for tx in again)
    too_much = [*batch[:5], *(ledger.Transfer(key(), "purchase", batch[0].legs) for _ in range(61))]
    with pytest.raises(InsufficientFunds):
        ledger.run_in_transaction(db_session, lambda s: ledger.apply_transfers(s, too_much))
    assert available(db_session, a["wallet"]) == 600  # nothing of the failed batch remains
    assert ledger.check_invariants(db_session) == []


@pytest.mark.parametrize(
    "error",
    [
        lambda: sa.exc.OperationalError("UPDATE", {}, psycopg.errors.SerializationFailure("x")),
        lambda: sa.exc.OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected("x")),
        lambda: sa.exc.OperationalError(
            "BEGIN", {}, sqlite3.OperationalError("database is locked")
        ),
        lambda: sa.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup")),
    ],
    ids=["serialization", "deadlock", "sqlite-locked", "unique-race"],
)
def test_transient_conflicts_are_retried(db_session, accounts, error):
    attempts = []

    def work(s):
        attempts.append(1)
        if len(attempts) < 3:
            raise error()
        return ledger.apply_transfers(
            s,
            [
                ledger.Transfer(
                    key(),
                    "purchase",
                    (Leg.debit(accounts["wallet"], 5), Leg.credit(accounts["vendor"], 5)),
                )
            ],
        )

    assert ledger.run_in_transaction(db_session, work)[0].kind == "purchase"
    assert len(attempts) == 3 and available(db_session, accounts["wallet"]) == 995


def test_other_errors_are_not_retried(db_session):
    attempts = []

    def work(_s):
        attempts.append(1)
        raise sa.exc.IntegrityError("INSERT", {}, psycopg.errors.ForeignKeyViolation("fk"))

    with pytest.raises(sa.exc.IntegrityError):
        ledger.run_in_transaction(db_session, work)
    assert attempts == [1]
