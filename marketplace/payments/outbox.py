"""The payments outbox: every call to the payment provider, sent at least once, applied once.

A row is written in the same database transaction as the change it belongs to (a top-up, a
ledger hold for a payout or a refund), so a call is never lost and never made for a change that
rolled back. A worker then:

1. claims due rows with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL so that several nodes
   take different rows; on SQLite the claim runs under the database's write lock);
2. calls the provider outside any database transaction, with the row's idempotency key;
3. records the answer in one transaction with the domain change it causes (post or void a
   hold, credit a wallet), unless another worker already recorded it.

A crash or a timeout anywhere between 2 and 3 leaves the row pending; once the lease expires a
worker sends the same request with the same key, the provider replays its first answer, and
step 3 applies it once. Transient errors back off exponentially; after
``payments_outbox_attempts_max`` tries the row is ``failed`` (visible, untouched, money still
held) until an administrator retries it. A definitive refusal is recorded at once: the handler
undoes what the row's transaction held.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlmodel import Session, select

from marketplace.config import FromSettings, setting
from marketplace.db import lock_row, utcnow
from marketplace.errors import Conflict, NotFound
from marketplace.ledger import services as ledger
from marketplace.payments.gateway import (
    PaymentGateway,
    ProviderConflict,
    ProviderRefused,
    ProviderUnavailable,
)
from marketplace.payments.models import (
    OUTBOX_DONE,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    PaymentOutbox,
)
from marketplace.payments.models import outbox_t as _t

log = logging.getLogger(__name__)

BACKOFF_CAP_S = 3600.0


@dataclass(frozen=True)
class OutboxPolicy(FromSettings):
    """How the worker retries: from the settings."""

    attempts_max: int = field(default=10, metadata=setting("payments_outbox_attempts_max"))
    backoff_s: float = field(default=2.0, metadata=setting("payments_outbox_backoff_s"))
    lease_s: float = field(default=120.0, metadata=setting("payments_outbox_lease_s"))

    def delay_s(self, attempts: int) -> float:
        """Exponential backoff with jitter (half to full), capped at an hour."""
        base = min(self.backoff_s * 2 ** max(attempts - 1, 0), BACKOFF_CAP_S)
        return base * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Sent:
    """What one attempt came to: done, refused, retry, failed or already_recorded."""

    outcome: str
    result: object | None = None


ProviderCall = Callable[[PaymentGateway], object]


class Handler(Protocol):
    """What one kind of outbox row does to its subject (the top-up, payout or refund it names):
    prepare the call, then record its outcome."""

    def prepare(self, session: Session, subject_id: int, idempotency_key: str, /) -> ProviderCall:
        """Read what the call needs; the returned call runs outside any transaction."""
        ...

    def record(self, session: Session, subject_id: int, result: Any, /) -> object:
        """Apply the provider's answer (inside the recording transaction)."""
        ...

    def refused(self, session: Session, subject_id: int, error: ProviderRefused, /) -> None:
        """Undo what the row's transaction held, since nothing happened at the provider."""
        ...


def _handlers() -> dict[str, Handler]:
    # Imported here: the handlers' modules enqueue rows through this one.
    from marketplace.payments import payouts, refunds, services

    return {
        "top_up": services.TopUpHandler(),
        "top_up_cancel": services.TopUpCancelHandler(),
        "transfer": payouts.TransferHandler(),
        "refund": refunds.RefundHandler(),
    }


def enqueue(session: Session, *, kind: str, subject_id: int, reference: str) -> PaymentOutbox:
    """Add a provider call to the caller's transaction (no commit)."""
    message = PaymentOutbox(
        kind=kind,
        subject_id=subject_id,
        idempotency_key=f"jishi-{kind}-{subject_id}-{reference}",
    )
    session.add(message)
    session.flush()
    return message


def find(session: Session, *, kind: str, subject_id: int) -> PaymentOutbox | None:
    return session.exec(
        select(PaymentOutbox).where(
            PaymentOutbox.kind == kind, PaymentOutbox.subject_id == subject_id
        )
    ).first()


def _claim(session: Session, ids: list[int] | None, limit: int, lease_s: float) -> list[int]:
    """Lease due rows (the given ones, or the oldest ``limit``) to this worker; their ids."""
    token = secrets.token_hex(8)

    def work(s: Session) -> list[int]:
        now = utcnow()
        due = sa.and_(
            _t.c.status == OUTBOX_PENDING,
            _t.c.next_attempt_at <= now,
            sa.or_(_t.c.lease_expires_at.is_(None), _t.c.lease_expires_at < now),
        )
        query = sa.select(_t.c.id).where(due).order_by(_t.c.id).limit(limit)
        if ids is not None:
            query = query.where(_t.c.id.in_(ids))
        # Rows another node is claiming right now are skipped, not waited for.
        candidates = list(s.execute(query.with_for_update(skip_locked=True)).scalars())
        if not candidates:
            return []
        s.execute(
            sa.update(_t)
            .where(_t.c.id.in_(candidates), due)
            .values(
                lease_token=token,
                lease_expires_at=now + dt.timedelta(seconds=lease_s),
                attempts=_t.c.attempts + 1,
            )
        )
        return list(
            s.execute(
                sa.select(_t.c.id).where(_t.c.id.in_(candidates), _t.c.lease_token == token)
            ).scalars()
        )

    return ledger.run_in_transaction(session, work)


def process_due(
    session: Session, gateway: PaymentGateway, policy: OutboxPolicy, *, limit: int
) -> dict[str, int]:
    """Send every due provider call (up to ``limit``); counts of outcomes."""
    outcomes: dict[str, int] = {}
    now = utcnow()
    # Look before taking the write lock: an idle pass on every node must not queue writers.
    anything_due = session.execute(
        sa.select(_t.c.id)
        .where(
            _t.c.status == OUTBOX_PENDING,
            _t.c.next_attempt_at <= now,
            sa.or_(_t.c.lease_expires_at.is_(None), _t.c.lease_expires_at < now),
        )
        .limit(1)
    ).first()
    session.commit()
    if anything_due is None:
        return outcomes
    for message_id in _claim(session, None, limit, policy.lease_s):
        outcome = _process_claimed(session, gateway, policy, message_id).outcome
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def process_now(
    session: Session, gateway: PaymentGateway, policy: OutboxPolicy, message_id: int
) -> Sent | None:
    """Send one row now if it is due and free (a request that wants its answer)."""
    if not _claim(session, [message_id], 1, policy.lease_s):
        return None
    return _process_claimed(session, gateway, policy, message_id)


def _process_claimed(
    session: Session, gateway: PaymentGateway, policy: OutboxPolicy, message_id: int
) -> Sent:
    handler_map = _handlers()
    message = session.get(PaymentOutbox, message_id, populate_existing=True)
    assert message is not None
    handler = handler_map[message.kind]
    call = handler.prepare(session, message.subject_id, message.idempotency_key)
    session.commit()  # no transaction stays open while the provider is called
    try:
        result = call(gateway)
    except ProviderUnavailable as exc:
        error = exc.detail
        return Sent(_record(session, message_id, lambda s, m: _retry_later(m, policy, error)))
    except ProviderRefused as exc:
        err = exc

        def refused(s: Session, m: PaymentOutbox) -> str:
            handler.refused(s, m.subject_id, err)
            _finish(m, OUTBOX_DONE, f"refused: {err.code}: {err.detail}")
            return "refused"

        return Sent(_record(session, message_id, refused))
    except ProviderConflict as exc:
        conflict = exc

        def park(s: Session, m: PaymentOutbox) -> str:
            log.error("payment outbox %s needs a person: %s", m.id, conflict.detail)
            _finish(m, OUTBOX_FAILED, f"conflict: {conflict.detail}")
            return "failed"

        return Sent(_record(session, message_id, park))

    def done(s: Session, m: PaymentOutbox) -> str:
        handler.record(s, m.subject_id, result)
        _finish(m, OUTBOX_DONE, "")
        return "done"

    return Sent(_record(session, message_id, done), result)


def _record(
    session: Session, message_id: int, apply: Callable[[Session, PaymentOutbox], str]
) -> str:
    def work(s: Session) -> str:
        message = lock_row(s, PaymentOutbox, message_id)
        if message.status != OUTBOX_PENDING:
            # Another worker (whose lease ran out on us, or the other way round) recorded the
            # same idempotent answer first.
            return "already_recorded"
        outcome = apply(s, message)
        s.add(message)
        return outcome

    return ledger.run_in_transaction(session, work)


def _finish(message: PaymentOutbox, status: str, error: str) -> None:
    message.status = status
    message.last_error = error[:500]
    message.lease_token = None
    message.lease_expires_at = None
    message.completed_at = utcnow()


def _retry_later(message: PaymentOutbox, policy: OutboxPolicy, error: str) -> str:
    message.lease_token = None
    message.lease_expires_at = None
    message.last_error = f"unavailable: {error}"[:500]
    if message.attempts >= policy.attempts_max:
        message.status = OUTBOX_FAILED
        message.completed_at = utcnow()
        log.error(
            "payment outbox %s (%s %s) failed after %s attempts: %s",
            message.id,
            message.kind,
            message.subject_id,
            message.attempts,
            error,
        )
        return "failed"
    message.next_attempt_at = utcnow() + dt.timedelta(seconds=policy.delay_s(message.attempts))
    return "retry"


def retry(session: Session, message_id: int) -> PaymentOutbox:
    """An administrator sends a failed row again (same key: at most one effect at the provider)."""

    def work(s: Session) -> PaymentOutbox:
        message = s.get(PaymentOutbox, message_id, with_for_update=True, populate_existing=True)
        if message is None:
            raise NotFound("No such provider call.", code="outbox_not_found")
        if message.status != OUTBOX_FAILED:
            raise Conflict("Only a failed provider call can be retried.", code="outbox_not_failed")
        message.status = OUTBOX_PENDING
        message.attempts = 0
        message.next_attempt_at = utcnow()
        message.completed_at = None
        s.add(message)
        return message

    return ledger.run_in_transaction(session, work)


def listing(session: Session, *, status: str | None, limit: int) -> list[PaymentOutbox]:
    query = select(PaymentOutbox).order_by(PaymentOutbox.id.desc()).limit(limit)  # type: ignore[union-attr]
    if status is not None:
        query = query.where(PaymentOutbox.status == status)
    return list(session.exec(query).all())
