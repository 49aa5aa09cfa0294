"""Metered royalties: reservations on the wallet, usage events, settlement in batches.

How a per-inference licence pays (all amounts integer minor units, ``r`` the offer's
``royalty_per_1k_minor``, ``due(n) = floor(n * r / 1000)``):

* **Reservation.** Before a call is counted the licence must hold a reservation: a pending
  ledger hold on the buyer's wallet (credit side: the platform's ``royalty_accrual``) worth
  ``due(calls_reserved) - due(calls_settled)``. A call is counted by an atomic conditional
  ``UPDATE ... SET calls_used = calls_used + 1 WHERE calls_used < calls_reserved``, so no
  number of concurrent callers can count more calls than the hold covers, and the wallet can
  never be spent twice (the hold's amount is not available to purchases or other licences).
* **Usage events.** Each counted call inserts a usage event with a unique id and its sequence
  number within the licence (``seq`` = the new ``calls_used``), in the same transaction.
* **Settlement** of a licence, in one database transaction with the licence row locked: void
  the hold, charge ``due(calls_used) - due(calls_settled)`` from the wallet to the vendor's
  payable and the platform's revenue (largest-remainder split on the licence's fee), and move
  the watermark ``calls_settled`` to ``calls_used``. The charge's idempotency key names the
  range of calls it covers, so a batch is charged at most once; because watermark and charge
  commit together, a crash at any point leaves either both or neither, and the next run picks
  up exactly where the last commit ended. After N calls and a settlement the buyer has paid
  ``due(N)`` in total, whatever the batch boundaries were.
* **Triggers.** Settlement runs automatically whenever a licence's reservation is used up
  (every ``metering_reserve_calls`` calls, or earlier when the wallet covered fewer): the same
  transaction settles and reserves the next block. ``jishi ledger settle`` settles every
  licence with unsettled calls (for statements and payouts), releasing the reservations; the
  next call reserves again.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler
from sqlmodel import Session, select

from marketplace.audit import events as audit_events
from marketplace.db import epoch_hour, hour_start, table, utcnow
from marketplace.errors import Forbidden
from marketplace.ledger import bulk
from marketplace.ledger import services as ledger
from marketplace.ledger.errors import InsufficientFunds
from marketplace.ledger.models import ROYALTY_ACCRUAL, WALLET
from marketplace.ledger.money import calls_affordable, royalty_due, split_increment
from marketplace.licensing.models import PER_INFERENCE, License
from marketplace.metering.models import UsageEvent

DEFAULT_RESERVE_CALLS = 1000
SETTLE_BATCH_LICENSES = 200

_licenses_t = table(License)
_usage_t = table(UsageEvent)


@dataclass
class SettlementReport:
    licenses: int = 0
    calls: int = 0
    charged_minor: dict[str, int] = field(default_factory=dict)


def _lock_licenses(session: Session, license_ids: list[int]) -> list[License]:
    return list(
        session.exec(
            select(License)
            .where(License.id.in_(sorted(license_ids)))  # type: ignore[union-attr]
            .order_by(License.id)  # type: ignore[arg-type]
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
    )


def _wallet(session: Session, lic: License) -> int:
    return ledger.ensure_account(
        session, organization_id=lic.organization_id, code=WALLET, currency=lic.currency
    )


def _void(hold_id: int) -> ledger.Transfer:
    return ledger.void_transfer(f"release:{hold_id}", hold_id, kind="reservation_release")


def _settlement_transfers(session: Session, lic: License) -> tuple[list[ledger.Transfer], int]:
    """The transfers that settle ``lic`` (release its hold, charge the unsettled calls)."""
    transfers: list[ledger.Transfer] = []
    if lic.reservation_id is not None:
        transfers.append(_void(lic.reservation_id))
    r = lic.royalty_per_1k_minor
    charged_before = royalty_due(lic.calls_settled, r)
    charged_after = royalty_due(lic.calls_used, r)
    due = charged_after - charged_before
    if due > 0:
        # Split the running total, not the batch: many small batches then add up to exactly
        # the split of the whole, instead of rounding in the vendor's favour every time.
        legs = ledger.sale_legs(
            session,
            buyer_organization_id=lic.organization_id,
            vendor_organization_id=lic.vendor_organization_id,
            currency=lic.currency,
            split=split_increment(charged_before, charged_after, lic.platform_fee_bps),
        )
        transfers.append(
            ledger.Transfer(
                idempotency_key=f"royalty:{lic.id}:{lic.calls_settled}-{lic.calls_used}",
                kind="royalty",
                legs=legs,
                memo=f"royalties for calls {lic.calls_settled + 1}..{lic.calls_used} "
                f"of licence {lic.id}",
            )
        )
        audit_events.usage_settled(session, lic, amount_minor=due)
    return transfers, due


def _mark_settled(lic: License) -> None:
    lic.calls_settled = lic.calls_used
    lic.calls_reserved = lic.calls_used
    lic.reservation_id = None


def _reserve(session: Session, lic: License, reserve_calls: int) -> None:
    """Reserve up to ``reserve_calls`` further calls on a settled licence; 402 if none."""
    r = lic.royalty_per_1k_minor
    if r == 0:
        lic.calls_reserved = lic.calls_used + reserve_calls
        return
    wallet = _wallet(session, lic)
    (balance,) = ledger.balances(session, account_ids=[wallet])
    base = royalty_due(lic.calls_settled, r)
    target = min(lic.calls_used + reserve_calls, calls_affordable(base + balance.available, r))
    if target <= lic.calls_used:
        raise InsufficientFunds(
            account_id=wallet,
            currency=lic.currency,
            missing_minor=royalty_due(lic.calls_used + 1, r) - base - balance.available,
        )
    hold = royalty_due(target, r) - base
    if hold > 0:
        accrual = ledger.ensure_account(
            session, organization_id=None, code=ROYALTY_ACCRUAL, currency=lic.currency
        )
        lic.reservation_id = ledger.place_hold(
            session,
            # Resolved holds never come back, so a fresh key per reservation is right; the
            # surrounding unit of work is what makes a retry safe.
            idempotency_key=f"reserve:{lic.id}:{uuid.uuid4().hex}",
            kind="reservation",
            from_account=wallet,
            to_account=accrual,
            amount=hold,
            memo=f"reserves calls {lic.calls_used + 1}..{target} of licence {lic.id}",
        )
    lic.calls_reserved = target


def missing_for_next_call(session: Session, lic: License) -> int:
    """Minor units the wallet lacks to pay for one more call (0 when it is covered)."""
    if lic.calls_used < lic.calls_reserved or lic.royalty_per_1k_minor == 0:
        return 0
    wallet = ledger.find_account(
        session, organization_id=lic.organization_id, code=WALLET, currency=lic.currency
    )
    available = 0 if wallet is None else ledger.balances(session, account_ids=[wallet])[0].available
    r = lic.royalty_per_1k_minor
    # Settling releases the hold (due(reserved) - due(settled)) and charges
    # due(used) - due(settled); what is left must cover due(used + 1) - due(used).
    return max(
        0, royalty_due(lic.calls_used + 1, r) - royalty_due(lic.calls_reserved, r) - available
    )


# Built once: every metered call runs it, and building the expression cost more than running it.
_COUNT_RESERVED = (
    sa.update(_licenses_t)
    .where(
        _licenses_t.c.id == sa.bindparam("license_id"),
        _licenses_t.c.revoked_at.is_(None),
        _licenses_t.c.calls_used + sa.bindparam("calls") <= _licenses_t.c.calls_reserved,
    )
    .values(calls_used=_licenses_t.c.calls_used + sa.bindparam("calls"))
    .returning(_licenses_t.c.calls_used)
)


def _count_calls(session: Session, license_id: int, calls: int) -> int | None:
    """Count ``calls`` more calls if the reservation covers them; the new ``calls_used``."""
    row = session.execute(_COUNT_RESERVED, {"license_id": license_id, "calls": calls}).first()
    return None if row is None else int(row[0])


def count_calls(
    session: Session,
    *,
    license_id: int,
    version_ids: list[int],
    reserve_calls: int = DEFAULT_RESERVE_CALLS,
) -> tuple[int, list[str]]:
    """Count one successful call per entry of ``version_ids`` inside the caller's transaction.

    Returns the licence's new ``calls_used`` and the usage events' ids; the calls are ``seq``
    ``used - n + 1 .. used`` in the order given. The fast path is one conditional ``UPDATE`` and has no effect when it
    fails; when the reservation is used up the licence is settled and the next block reserved
    first. Raises :class:`InsufficientFunds` (402) or ``license_inactive`` (403) when the calls
    cannot be counted; after the slow path has started, the caller must roll back (a
    savepoint is enough) to undo its partial work.
    """
    counted = count_reserved_calls(session, license_id=license_id, version_ids=version_ids)
    if counted is not None:
        return counted
    calls = len(version_ids)
    (lic,) = _lock_licenses(session, [license_id])
    if lic.kind != PER_INFERENCE or lic.revoked_at is not None:
        raise Forbidden("The licence is not active.", code="license_inactive")
    transfers, _due = _settlement_transfers(session, lic)
    ledger.apply_transfers(session, transfers)
    _mark_settled(lic)
    _reserve(session, lic, max(reserve_calls, calls))
    session.add(lic)
    session.flush()
    used = _count_calls(session, license_id, calls)
    if used is None:
        raise InsufficientFunds(
            account_id=_wallet(session, lic),
            currency=lic.currency,
            missing_minor=royalty_due(lic.calls_used + calls, lic.royalty_per_1k_minor)
            - royalty_due(lic.calls_reserved, lic.royalty_per_1k_minor),
        )
    return used, _insert_usage(session, license_id, version_ids, used)


def count_reserved_calls(
    session: Session, *, license_id: int, version_ids: list[int]
) -> tuple[int, list[str]] | None:
    """:func:`count_calls`'s fast path alone: the calls counted if the licence's reservation
    covers them all, else None with no effect (nothing to roll back)."""
    calls = len(version_ids)
    if calls <= 0:
        raise ValueError("calls must be positive")
    used = _count_calls(session, license_id, calls)
    if used is None:
        return None
    return used, _insert_usage(session, license_id, version_ids, used)


_USAGE_COLUMNS = ("id", "license_id", "version_id", "seq", "created_at")


def _usage_rows(
    license_id: int, version_ids: list[int], used: int, now: Any
) -> list[tuple[Any, ...]]:
    """One usage event per call, ``seq`` ``used - n + 1 .. used``, in ``_USAGE_COLUMNS``."""
    calls = len(version_ids)
    # 128 random bits per event, drawn in one system call for the whole batch.
    raw = os.urandom(16 * calls).hex()
    return [
        (raw[32 * i : 32 * i + 32], license_id, version_id, used - calls + 1 + i, now)
        for i, version_id in enumerate(version_ids)
    ]


def _insert_usage(
    session: Session, license_id: int, version_ids: list[int], used: int
) -> list[str]:
    """Insert the usage events of the calls counted up to ``used``; the events' ids."""
    rows = _usage_rows(license_id, version_ids, used, utcnow())
    bulk.insert_rows(session, _usage_t, _USAGE_COLUMNS, rows)
    return [row[0] for row in rows]


class DriverStatement:
    """A Core statement compiled once for a dialect and run on the driver's own cursor."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect, **compile_kw: Any):
        compiled = statement.compile(dialect=dialect, **compile_kw)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self._names: list[str] | None = (
            list(compiled.positiontup or ()) if compiled.positional else None
        )

    def params(self, values: dict[str, Any]) -> Any:
        if self._names is None:
            return values
        return tuple(values[name] for name in self._names)


class _NotCovered(Exception):
    """A licence's reservation does not cover its calls: undo the batch's writes."""


class ReservedCallCounter:
    """:func:`count_reserved_calls` for a batch of licences, as driver statements.

    Every metered call ends here, and through the ORM recording one cost about 0.3 ms of the
    server's CPU against 0.17 ms this way (SQLite), the difference being the ORM's building,
    compiling and bookkeeping around the same statements. These are the same statements and rows, compiled once for the dialect, with the
    stored columns processed by their own column types, run on the cursor the database's
    ``driver_transaction`` gives (which takes the write lock up front on SQLite).

    Only the plain case is handled: every licence's reservation covers its calls. Otherwise,
    or on any database error before the commit, the transaction is rolled back with no effect
    and :meth:`count` answers None, so the caller takes the full path (settlement, retries).
    Any other exception is a fault of the code and propagates.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        self._count = DriverStatement(_COUNT_RESERVED, dialect)
        self._insert = DriverStatement(
            sa.insert(_usage_t),
            dialect,
            column_keys=list(_USAGE_COLUMNS),
        )
        stored_time = _usage_t.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        self._stored_time = stored_time or (lambda value: value)
        # What the driver and the connection pool raise when the database refuses or fails.
        self._database_errors = (dialect.loaded_dbapi.Error, sa.exc.DBAPIError, _NotCovered)

    def count(
        self,
        transaction: Callable[[], AbstractContextManager[Any]],
        batches: list[tuple[int, list[int]]],
    ) -> list[int] | None:
        """Count each ``(license_id, version_ids)`` in a ``transaction()`` (a driver cursor,
        committed when its block ends); each licence's new ``calls_used`` in order, or None
        with nothing written."""
        written = False
        try:
            with transaction() as cursor:
                used_after = self._write(cursor, batches)
                if used_after is None:
                    raise _NotCovered
                written = True
        except self._database_errors:
            if written:
                # The commit failed: whether it took effect is unknown, so never count again.
                raise
            return None
        return used_after

    def _write(self, cursor: Any, batches: list[tuple[int, list[int]]]) -> list[int] | None:
        now = self._stored_time(utcnow())
        used_after: list[int] = []
        rows: list[Any] = []
        for license_id, version_ids in batches:
            values = {"license_id": license_id, "calls": len(version_ids)}
            cursor.execute(self._count.sql, self._count.params(values))
            row = cursor.fetchone()
            if row is None:
                return None
            used = int(row[0])
            used_after.append(used)
            rows.extend(
                self._insert.params(dict(zip(_USAGE_COLUMNS, event, strict=True)))
                for event in _usage_rows(license_id, version_ids, used, now)
            )
        cursor.executemany(self._insert.sql, rows)
        return used_after


# --- calls paid from a hold of their own (evaluation jobs) ----------------------------------
#
# A batch of calls known in advance (a job's samples) holds its own money before any of them
# runs, so that nothing else the buyer does can spend it meanwhile. Each part of the batch is
# then counted and charged at once, in one transaction: the hold is voided, the calls counted
# (usage events as for single calls), the licence settled, and what the rest of the batch may
# still cost held again. Settling charges due(used) - due(settled) on the licence's running
# total, so the buyer pays exactly floor(N * r / 1000) for all its calls whatever their order.


def hold_bound(royalty_per_1k_minor: int, part_calls: list[int]) -> int:
    """The most that parts of ``part_calls`` calls can cost when each is settled on its own.

    A part of n calls settled at any point of the licence's count costs
    due(u + n) - due(u) <= ceil(n * r / 1000); the bound is the sum over the parts.
    """
    r = royalty_per_1k_minor
    return sum(-(-n * r // 1000) for n in part_calls)


def hold_for_calls(
    session: Session, *, lic: License, amount_minor: int, key: str, memo: str
) -> int | None:
    """Hold ``amount_minor`` of the buyer's wallet for calls on ``lic``; the hold's id.

    Raises :class:`InsufficientFunds` (402) naming the amount the wallet lacks.
    """
    if amount_minor <= 0:
        return None
    wallet = _wallet(session, lic)
    (balance,) = ledger.balances(session, account_ids=[wallet])
    if balance.available < amount_minor:
        raise InsufficientFunds(
            account_id=wallet,
            currency=lic.currency,
            missing_minor=amount_minor - balance.available,
        )
    accrual = ledger.ensure_account(
        session, organization_id=None, code=ROYALTY_ACCRUAL, currency=lic.currency
    )
    return ledger.place_hold(
        session,
        idempotency_key=key,
        kind="reservation",
        from_account=wallet,
        to_account=accrual,
        amount=amount_minor,
        memo=memo,
    )


@dataclass(frozen=True)
class HeldCalls:
    """A part of a reserved batch to count: ``calls`` calls of ``version_id`` paid from the hold
    ``hold_id``, and ``rehold_minor`` held again (under ``rehold_key``) for the rest of the batch."""

    license_id: int
    version_id: int
    calls: int
    hold_id: int | None
    rehold_minor: int
    rehold_key: str


def count_held_calls(session: Session, part: HeldCalls) -> tuple[int, int | None]:
    """Count and charge a part of a batch paid from its hold, inside the caller's transaction;
    hold again what the rest of the batch needs.

    Returns what these calls were charged and the new hold's id (None when nothing is held).
    The caller's hold bound (:func:`hold_bound`) guarantees the wallet covers both.
    """
    (lic,) = _lock_licenses(session, [part.license_id])
    transfers = [] if part.hold_id is None else [_void(part.hold_id)]
    charged = 0
    if part.calls > 0:
        # Calls counted earlier (over HTTP) are settled first, so that what this part costs is
        # known: due(used + calls) - due(used) on a settled licence.
        before, _due = _settlement_transfers(session, lic)
        transfers += before
        _mark_settled(lic)
        lic.calls_used += part.calls
        _insert_usage(session, part.license_id, [part.version_id] * part.calls, lic.calls_used)
        after, charged = _settlement_transfers(session, lic)
        transfers += after
        _mark_settled(lic)
    if part.rehold_minor > 0:
        # Applied with the void and the charges: one ledger write per part, and the ledger's
        # own limit on the wallet (402 with the missing amount) guards the new hold.
        transfers.append(
            ledger.hold_transfer(
                part.rehold_key,
                "reservation",
                _wallet(session, lic),
                ledger.ensure_account(
                    session, organization_id=None, code=ROYALTY_ACCRUAL, currency=lic.currency
                ),
                part.rehold_minor,
                f"holds the rest of a batch of calls of licence {lic.id}",
            )
        )
    posted = ledger.apply_transfers(session, transfers)
    session.add(lic)
    session.flush()
    return charged, posted[-1].id if part.rehold_minor > 0 else None


def release_hold(session: Session, *, hold_id: int) -> None:
    """Void a batch's hold: what it held is the buyer's again."""
    ledger.apply_transfers(session, [_void(hold_id)])


def record_calls(
    *,
    session: Session,
    license_id: int,
    version_id: int,
    calls: int = 1,
    reserve_calls: int = DEFAULT_RESERVE_CALLS,
) -> tuple[int, list[str]]:
    """Count ``calls`` successful calls on a per-inference licence in a unit of work of its own.

    Returns the licence's new ``calls_used`` and the events' ids. When the reservation is used
    up, the same transaction settles the licence and reserves the next block; when the wallet
    cannot cover the calls, :class:`InsufficientFunds` (402) is raised and nothing is counted.
    """
    if calls <= 0:
        raise ValueError("calls must be positive")

    def work(s: Session) -> tuple[int, list[str]]:
        return count_calls(
            s, license_id=license_id, version_ids=[version_id] * calls, reserve_calls=reserve_calls
        )

    return ledger.run_in_transaction(session, work)


def settle(
    *,
    session: Session,
    license_ids: list[int] | None = None,
    batch_licenses: int = SETTLE_BATCH_LICENSES,
) -> SettlementReport:
    """Settle every per-inference licence with unsettled calls (or the given ones), in batches.

    Each batch is one database transaction; a crash loses at most the batch in flight, which
    the next run settles from the committed watermarks.
    """
    query = sa.select(_licenses_t.c.id).where(
        _licenses_t.c.kind == PER_INFERENCE,
        sa.or_(
            _licenses_t.c.calls_used > _licenses_t.c.calls_settled,
            _licenses_t.c.reservation_id.is_not(None),
        ),
    )
    if license_ids is not None:
        query = query.where(_licenses_t.c.id.in_(license_ids))
    pending_ids = list(session.execute(query.order_by(_licenses_t.c.id)).scalars())
    session.commit()
    report = SettlementReport()
    for start in range(0, len(pending_ids), batch_licenses):
        chunk = pending_ids[start : start + batch_licenses]

        def work(s: Session, chunk: list[int] = chunk) -> SettlementReport:
            part = SettlementReport()
            transfers: list[ledger.Transfer] = []
            for lic in _lock_licenses(s, chunk):
                more, due = _settlement_transfers(s, lic)
                transfers.extend(more)
                part.licenses += 1
                part.calls += lic.calls_used - lic.calls_settled
                if due:
                    part.charged_minor[lic.currency] = part.charged_minor.get(lic.currency, 0) + due
                _mark_settled(lic)
                s.add(lic)
            ledger.apply_transfers(s, transfers)
            s.flush()
            return part

        part = ledger.run_in_transaction(session, work)
        report.licenses += part.licenses
        report.calls += part.calls
        for currency, amount in part.charged_minor.items():
            report.charged_minor[currency] = report.charged_minor.get(currency, 0) + amount
    return report


def usage_by_hour(
    *, session: Session, vendor_organization_id: int, since: dt.datetime
) -> list[tuple[dt.datetime, int]]:
    """Metered calls per hour (UTC start) on the vendor's licences since ``since``."""
    events = table(UsageEvent)
    hour = epoch_hour(events.c.created_at)
    rows = session.execute(
        sa.select(hour, sa.func.count())
        .select_from(events.join(_licenses_t, _licenses_t.c.id == events.c.license_id))
        .where(
            _licenses_t.c.vendor_organization_id == vendor_organization_id,
            events.c.created_at >= since,
        )
        .group_by(hour)
        .order_by(hour)
    ).all()
    return [(hour_start(h), int(n)) for h, n in rows]
