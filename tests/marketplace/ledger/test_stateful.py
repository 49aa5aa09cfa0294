"""Random sequences of top-ups, holds, posts, voids, purchases, metered use and settlements.

After every step: every transaction balances, all debits equal all credits, every cached
balance equals the replay of its entries, no account breaks its limits, and each buyer's
wallet holds exactly what a plain model of the same steps says.
"""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import Session

from marketplace.errors import PaymentRequired
from marketplace.ledger import services as ledger
from marketplace.ledger.errors import InsufficientFunds
from marketplace.ledger.models import ROYALTY_ACCRUAL, WALLET
from marketplace.ledger.money import royalty_due
from marketplace.licensing import entitlements
from marketplace.licensing.models import License
from marketplace.metering import services as metering
from marketplace.payments.schemas import TopUpCreate
from tests.marketplace.licensing.builders import (
    licensing_service,
    make_offer,
    make_organization,
    payments_service,
)

SUBSCRIPTION_PRICE = 250
ROYALTY = 370  # 0.37 minor units per call
RESERVE_CALLS = 10
BUYERS = st.sampled_from([0, 1])


class MoneyMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.s = session
        vendor = make_organization(session, "vendor")
        self.buyers = [make_organization(session, "buyer") for _ in range(2)]
        self.subscription = make_offer(
            session, vendor, kind="subscription", price_minor=SUBSCRIPTION_PRICE, term_days=30
        )
        self.metered = make_offer(
            session, vendor, kind="per_inference", price_minor=0, royalty_per_1k_minor=ROYALTY
        )
        self.accrual = ledger.run_in_transaction(
            session,
            lambda s: ledger.ensure_account(
                s, organization_id=None, code=ROYALTY_ACCRUAL, currency="CNY"
            ),
        )
        self.paid_in = [0, 0]
        self.spent = [0, 0]  # purchases and posted holds
        self.pending = {}  # hold id -> (buyer index, amount)
        self.licence: list[int | None] = [None, None]

    def wallet(self, b: int) -> int:
        return ledger.run_in_transaction(
            self.s,
            lambda s: ledger.ensure_account(
                s, organization_id=self.buyers[b], code=WALLET, currency="CNY"
            ),
        )

    def metered_deduction(self, b: int) -> int:
        if self.licence[b] is None:
            return 0
        lic = self.s.get(License, self.licence[b])
        self.s.refresh(lic)
        charged = royalty_due(lic.calls_settled, ROYALTY)
        held = royalty_due(lic.calls_reserved, ROYALTY) - charged if lic.reservation_id else 0
        return charged + held

    def expected_available(self, b: int) -> int:
        holds = sum(amount for owner, amount in self.pending.values() if owner == b)
        return self.paid_in[b] - self.spent[b] - holds - self.metered_deduction(b)

    @rule(b=BUYERS, amount=st.integers(1, 3_000))
    def top_up(self, b, amount):
        payments_service(top_up_amount_minor_max=10**9, top_ups_open_max=None).create_top_up(
            session=self.s,
            organization_id=self.buyers[b],
            request=TopUpCreate(amount_minor=amount, currency="CNY"),
            idempotency_key=uuid.uuid4().hex,
        )
        self.paid_in[b] += amount

    @rule(target=holds, b=BUYERS, amount=st.integers(1, 2_000))
    def hold(self, b, amount):
        before = self.expected_available(b)
        try:
            tx = ledger.post_transaction(
                self.s,
                idempotency_key=uuid.uuid4().hex,
                kind="hold",
                legs=[
                    ledger.Leg.debit(self.wallet(b), amount),
                    ledger.Leg.credit(self.accrual, amount),
                ],
                pending=True,
            )
        except InsufficientFunds as exc:
            assert amount > before and exc.missing_minor == amount - before
            return multiple()
        assert amount <= before
        self.pending[tx.id] = (b, amount)
        return tx.id

    @rule(hold_id=consumes(holds), percent=st.integers(0, 100))
    def post(self, hold_id, percent):
        b, amount = self.pending.pop(hold_id)
        part = amount * percent // 100
        ledger.post_pending(
            self.s, idempotency_key=uuid.uuid4().hex, pending_id=hold_id, amount=part
        )
        self.spent[b] += part

    @rule(hold_id=consumes(holds))
    def void(self, hold_id):
        self.pending.pop(hold_id)
        ledger.void_pending(self.s, idempotency_key=uuid.uuid4().hex, pending_id=hold_id)

    @rule(b=BUYERS)
    def buy_subscription(self, b):
        before = self.expected_available(b)
        try:
            licensing_service().purchase(
                session=self.s,
                organization_id=self.buyers[b],
                offer_id=self.subscription.offer_id,
                accept_terms_sha256=self.subscription.terms_sha256,
                idempotency_key=uuid.uuid4().hex,
                client_id="test",
            )
        except InsufficientFunds:
            assert before < SUBSCRIPTION_PRICE
            return
        assert before >= SUBSCRIPTION_PRICE
        self.spent[b] += SUBSCRIPTION_PRICE

    @rule(b=BUYERS)
    def buy_metered(self, b):
        if self.licence[b] is None:
            order, _ = licensing_service().purchase(
                session=self.s,
                organization_id=self.buyers[b],
                offer_id=self.metered.offer_id,
                accept_terms_sha256=self.metered.terms_sha256,
                idempotency_key=uuid.uuid4().hex,
                client_id="test",
            )
            self.licence[b] = order.licence_id

    @rule(b=BUYERS, calls=st.integers(1, 30))
    def use(self, b, calls):
        if self.licence[b] is None:
            return
        for _ in range(calls):
            try:
                ent = entitlements.check_entitlement(
                    session=self.s,
                    organization_id=self.buyers[b],
                    listing_id=self.metered.listing_id,
                    version_id=self.metered.version_id,
                )
                if ent.kind != "per_inference":
                    return
                entitlements.record_successful_call(
                    session=self.s, entitlement=ent, reserve_calls=RESERVE_CALLS
                )
            except PaymentRequired:
                return

    @rule()
    def settle(self):
        metering.settle(session=self.s)

    @invariant()
    def ledger_is_sound(self):
        assert ledger.check_invariants(self.s) == []

    @invariant()
    def wallets_match_the_model(self):
        for b in (0, 1):
            (balance,) = ledger.balances(self.s, account_ids=[self.wallet(b)])
            assert balance.available >= 0
            assert balance.available == self.expected_available(b)
            if self.licence[b] is not None:
                lic = self.s.get(License, self.licence[b])
                assert lic.calls_settled <= lic.calls_used <= lic.calls_reserved


def test_random_money_sequences(db_session):
    run_state_machine_as_test(
        lambda: MoneyMachine(db_session),
        settings=settings(
            max_examples=10,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
