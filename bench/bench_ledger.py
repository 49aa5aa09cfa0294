"""Ledger and metering throughput on PostgreSQL, with 1, 4 and 8 concurrent writer processes.

Run: .venv/bin/python -m bench.bench_ledger [--seconds 2] [--pg postgresql+psycopg://...]

Creates a scratch database next to the given one, migrates it, and prints:
  * ledger transactions/s, two-leg and three-leg (a sale split between vendor and platform),
    on one hot set of accounts (every writer hits the same wallet and the same platform
    revenue) and on spread accounts (each writer its own), each
      - "single": one post_transaction per database transaction (the API's path), and
      - "batch N": apply_transfers with N transfers per database transaction (--batches);
  * usage events/s recorded (one call per transaction as the evaluate endpoint records them,
    and metering.record_calls in batches) and the settlement of all of them.
Writers are processes (no shared GIL); PostgreSQL runs on the same machine with its default,
durable settings (synchronous_commit on).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from bench.scratch import DEFAULT_PG, scratch_database
from marketplace.db import make_engine
from marketplace.ledger import services as ledger
from marketplace.ledger.models import PAYMENT_CLEARING, PLATFORM_REVENUE, VENDOR_PAYABLE, WALLET
from marketplace.ledger.services import Leg, Transfer

WRITERS = (1, 4, 8)
FUNDS = 10**15


def _setup_accounts(url: str, writers: int) -> dict[str, Any]:
    """Organisations and funded accounts for every scenario."""
    from tests.marketplace.licensing.builders import fund_wallet, make_organization

    engine = make_engine(url)
    s = Session(engine, expire_on_commit=False)
    hot_buyer = make_organization(s, "buyer")
    hot_vendor = make_organization(s, "vendor")
    buyers = [make_organization(s, "buyer") for _ in range(writers)]
    sinks = [make_organization(s, "buyer") for _ in range(writers)]
    vendors = [make_organization(s, "vendor") for _ in range(writers)]

    def accounts(x: Session) -> dict[str, Any]:
        def acct(org: int | None, code: str) -> int:
            return ledger.ensure_account(x, organization_id=org, code=code, currency="CNY")

        return {
            "hot_wallet": acct(hot_buyer, WALLET),
            "hot_vendor": acct(hot_vendor, VENDOR_PAYABLE),
            "revenue": acct(None, PLATFORM_REVENUE),
            "clearing": acct(None, PAYMENT_CLEARING),
            "wallets": [acct(b, WALLET) for b in buyers],
            "sinks": [acct(b, WALLET) for b in sinks],
            "vendors": [acct(v, VENDOR_PAYABLE) for v in vendors],
        }

    ids = ledger.run_in_transaction(s, accounts)
    fund_wallet(s, hot_buyer, FUNDS)
    for b in buyers:
        fund_wallet(s, b, FUNDS)
    s.close()
    engine.dispose()
    return ids


def _legs(ids: dict[str, Any], worker: int, hot: bool, three: bool) -> tuple[Leg, ...]:
    if hot:
        if three:
            return (
                Leg.debit(ids["hot_wallet"], 100),
                Leg.credit(ids["hot_vendor"], 90),
                Leg.credit(ids["revenue"], 10),
            )
        return (Leg.debit(ids["hot_wallet"], 100), Leg.credit(ids["revenue"], 100))
    if three:
        return (
            Leg.debit(ids["wallets"][worker], 100),
            Leg.credit(ids["vendors"][worker], 90),
            Leg.credit(ids["sinks"][worker], 10),
        )
    return (Leg.debit(ids["wallets"][worker], 100), Leg.credit(ids["sinks"][worker], 100))


def _ledger_worker(
    url: str,
    ids: dict[str, Any],
    worker: int,
    hot: bool,
    three: bool,
    batch: int,
    start_at: float,
    seconds: float,
    out: Any,
) -> None:
    engine = make_engine(url)
    session = Session(engine, expire_on_commit=False)
    legs = _legs(ids, worker, hot, three)
    prefix = f"b{uuid.uuid4().hex[:12]}"
    done = n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    while time.time() < deadline:
        if batch == 1:
            ledger.post_transaction(
                session, idempotency_key=f"{prefix}-{n}", kind="bench", legs=legs
            )
            done += 1
            n += 1
        else:
            transfers = [
                Transfer(idempotency_key=f"{prefix}-{n + i}", kind="bench", legs=legs)
                for i in range(batch)
            ]
            ledger.run_in_transaction(session, lambda s, t=transfers: ledger.apply_transfers(s, t))
            done += batch
            n += batch
    elapsed = time.time() - start_at
    out.put((done, elapsed))
    session.close()
    engine.dispose()


def _run_parallel(
    target: Callable[..., None], writers: int, args: tuple[Any, ...], seconds: float
) -> float:
    """Start ``writers`` processes together; the total operations per second."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [
        ctx.Process(target=target, args=(*args[:2], w, *args[2:], start_at, seconds, out))
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    total = sum(done for done, _ in results)
    elapsed = max(el for _, el in results)
    return total / elapsed


def bench_ledger(url: str, seconds: float, batches: list[int]) -> None:
    ids = _setup_accounts(url, max(WRITERS))
    print("\nledger transactions/s (PostgreSQL, durable commits)")
    print(f"{'legs':>5} {'accounts':>8} {'mode':>12} " + " ".join(f"{w:>8}w" for w in WRITERS))
    for three in (False, True):
        for hot in (True, False):
            for size in (1, *batches):
                rates = [
                    _run_parallel(_ledger_worker, w, (url, ids, hot, three, size), seconds)
                    for w in WRITERS
                ]
                mode = "single" if size == 1 else f"batch {size}"
                print(
                    f"{3 if three else 2:>5} {'hot' if hot else 'spread':>8} {mode:>12} "
                    + " ".join(f"{r:>9,.0f}" for r in rates),
                    flush=True,
                )


def _usage_setup(url: str, writers: int) -> list[tuple[int, int, int]]:
    """One metered licence per writer: (buyer, license_id, version_id)."""
    from tests.marketplace.licensing.builders import (
        fund_wallet,
        licensing_service,
        make_offer,
        make_organization,
    )

    engine = make_engine(url)
    s = Session(engine, expire_on_commit=False)
    vendor = make_organization(s, "vendor")
    out = []
    for _ in range(writers):
        buyer = make_organization(s, "buyer")
        catalog = make_offer(
            s, vendor, kind="per_inference", price_minor=0, royalty_per_1k_minor=37
        )
        fund_wallet(s, buyer, FUNDS)
        order, _ = licensing_service().purchase(
            session=s,
            organization_id=buyer,
            offer_id=catalog.offer_id,
            accept_terms_sha256=catalog.terms_sha256,
            idempotency_key="bench",
            client_id="bench",
        )
        assert order.licence_id is not None
        out.append((buyer, order.licence_id, catalog.version_id))
    s.close()
    engine.dispose()
    return out


def _usage_worker(
    url: str,
    licences: list[tuple[int, int, int]],
    worker: int,
    batch: int,
    reserve_calls: int,
    start_at: float,
    seconds: float,
    out: Any,
) -> None:
    from marketplace.licensing import entitlements
    from marketplace.metering import services as metering

    engine = make_engine(url)
    session = Session(engine, expire_on_commit=False)
    buyer, license_id, version_id = licences[worker]
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    ent = None
    while time.time() < deadline:
        if batch == 1:
            if ent is None:
                from marketplace.licensing.models import License

                lic = session.get(License, license_id)
                assert lic is not None
                ent = entitlements.check_entitlement(
                    session=session,
                    organization_id=buyer,
                    listing_id=lic.listing_id,
                    version_id=version_id,
                )
            entitlements.record_successful_call(
                session=session, entitlement=ent, reserve_calls=reserve_calls
            )
            done += 1
        else:
            metering.record_calls(
                session=session,
                license_id=license_id,
                version_id=version_id,
                calls=batch,
                reserve_calls=reserve_calls,
            )
            done += batch
    out.put((done, time.time() - start_at))
    session.close()
    engine.dispose()


def bench_usage(url: str, seconds: float, batch: int, reserve_calls: int) -> None:
    from marketplace.metering import services as metering

    print(f"\nusage events/s (per-inference licences, reservation {reserve_calls} calls)")
    print(f"{'mode':>22} " + " ".join(f"{w:>8}w" for w in WRITERS))
    for size in (1, batch):
        rates = []
        for w in WRITERS:
            licences = _usage_setup(url, w)
            rates.append(
                _run_parallel(_usage_worker, w, (url, licences, size, reserve_calls), seconds)
            )
        mode = "recorded, 1 per tx" if size == 1 else f"recorded, {size} per tx"
        print(f"{mode:>22} " + " ".join(f"{r:>9,.0f}" for r in rates), flush=True)

    engine = make_engine(url)
    with engine.connect() as conn:
        events = conn.execute(sa.text("SELECT count(*) FROM usage_events")).scalar_one()
        unsettled = conn.execute(
            sa.text("SELECT coalesce(sum(calls_used - calls_settled), 0) FROM licenses")
        ).scalar_one()
    session = Session(engine, expire_on_commit=False)
    started = time.perf_counter()
    report = metering.settle(session=session)
    elapsed = time.perf_counter() - started
    print(
        f"{'settled':>22} {report.calls:,} unsettled calls of {report.licenses} licences in "
        f"{elapsed * 1000:.1f} ms ({report.calls / elapsed:,.0f} events/s; "
        f"{events:,} events recorded in all, {unsettled:,} were unsettled)"
    )
    problems = ledger.check_invariants(session)
    print(f"{'ledger check':>22} {'consistent' if not problems else problems[:3]}")
    session.close()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument(
        "--batches", default="100,1000", help="transfers per transaction, comma-separated"
    )
    parser.add_argument("--usage-batch", type=int, default=1000)
    parser.add_argument("--reserve-calls", type=int, default=10_000)
    args = parser.parse_args()

    with scratch_database(args.pg, "jishi_bench") as url:
        print(
            f"PostgreSQL scratch database {url.rsplit('/', 1)[1]}; {os.cpu_count()} CPUs; "
            f"{args.seconds} s per cell"
        )
        bench_ledger(url, args.seconds, [int(b) for b in args.batches.split(",")])
        bench_usage(url, args.seconds, args.usage_batch, args.reserve_calls)


if __name__ == "__main__":
    main()
