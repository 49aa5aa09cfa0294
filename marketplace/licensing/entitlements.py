"""Entitlement enforcement: may this organisation run (or download) this model version?

Contract for the evaluate endpoint, in this order:

1. ``ent = check_entitlement(session=..., organization_id=..., listing_id=..., version_id=...)``
   before the model runs. It reads only. It raises a :class:`~marketplace.errors.DomainError`
   coded ``no_entitlement``, ``version_revoked`` or ``listing_suspended`` when no active,
   unexpired, unrevoked licence or trial covers the version, and
   :class:`~marketplace.errors.PaymentRequired` (code ``insufficient_funds``, with
   ``missing_minor`` and ``currency``) when the only cover is a per-inference licence whose
   buyer's wallet cannot pay for the next call. Prefers a paid-up licence (perpetual,
   subscription) over a per-inference one over a trial.
2. Run the model. If the run fails, do nothing: failed calls are never counted or charged.
3. ``usage = record_successful_call(session=..., entitlement=ent)`` after a successful run and
   **before** returning the outputs; put ``usage`` in the response as ``usage``
   (``record_successful_calls`` counts many calls in one transaction, for group commit). This is the
   authoritative, atomic step: a trial call is counted by a conditional ``UPDATE`` (exactly
   once per successful call, never below zero, also under concurrency) and a per-inference
   call consumes one call of the wallet reservation and writes a usage event. If a concurrent
   call used the last trial call or the reservation cannot be renewed, it raises 403/402 like
   step 1; the caller then discards the outputs, so nobody ever receives more results than
   their entitlement or wallet covers. ``usage`` is ``{"licence_id", "kind",
   "calls_remaining"?, "calls_used"?, "accrued_minor"?, "call_accrued_minor"?}``:
   ``calls_remaining`` for trials; for per-inference, ``calls_used`` (this call's number within
   the licence, as its usage event records it), ``accrued_minor`` (royalties owed for calls
   1..calls_used, ``floor(N * royalty_per_1k_minor / 1000)``) and ``call_accrued_minor`` (this
   call's share of it). The names are the licence's own (``GET /licenses/{id}``): accrued is
   owed, settled is charged to the wallet, which happens at settlement, not per call.

``may_download(...)`` answers the registry's artifact endpoint: True when the organisation
holds an active, non-trial licence from an offer with ``allow_download`` for the listing and
the version is not revoked. (A vendor's access to its own artifacts is the registry's rule.)

Each function runs its own unit of work on ``session``; the session must not hold
uncommitted writes of the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from marketplace.catalog.errors import ListingSuspended, VersionRevoked
from marketplace.catalog.models import LISTING_ACTIVE, Listing, ModelVersion, Offer
from marketplace.db import table, utcnow
from marketplace.errors import DomainError, Forbidden, NotFound, PaymentRequired
from marketplace.ledger import services as ledger
from marketplace.ledger.errors import InsufficientFunds
from marketplace.ledger.money import royalty_due
from marketplace.licensing.models import (
    PER_INFERENCE,
    PERPETUAL,
    SUBSCRIPTION,
    TRIAL,
    License,
)
from marketplace.metering import services as metering
from marketplace.metering.services import HeldCalls
from marketplace.rows import attributes

# Which licence pays for a call when several cover it: paid-up first, the trial last.
_PREFERENCE = {PERPETUAL: 0, SUBSCRIPTION: 1, PER_INFERENCE: 2, TRIAL: 3}

_licenses_t = table(License)


@dataclass(frozen=True)
class Entitlement:
    """The licence that covers a call, as found by :func:`check_entitlement`."""

    license_id: int
    kind: str
    organization_id: int
    listing_id: int
    version_id: int
    offer_id: int
    expires_at: dt.datetime | None
    calls_remaining: int | None
    royalty_per_1k_minor: int
    currency: str


def _active_licenses(
    session: Session, organization_id: int, listing_id: int, now: dt.datetime
) -> list[License]:
    rows = session.exec(
        select(License).where(
            License.organization_id == organization_id,
            License.listing_id == listing_id,
            col(License.revoked_at).is_(None),
            sa.or_(col(License.expires_at).is_(None), col(License.expires_at) > now),
        )
    ).all()
    return sorted(rows, key=lambda lic: (_PREFERENCE[lic.kind], lic.id))


def _check_version(session: Session, listing_id: int, version_id: int) -> None:
    version = session.get(ModelVersion, version_id)
    if version is None or version.listing_id != listing_id:
        raise NotFound("No such model version.", code="version_not_found")
    if version.revoked_at is not None:
        raise VersionRevoked("The vendor revoked this version.")
    listing = session.get(Listing, listing_id)
    if listing is None or listing.status != LISTING_ACTIVE:
        raise ListingSuspended("The listing is suspended.")


def check_entitlement(
    *, session: Session, organization_id: int, listing_id: int, version_id: int
) -> Entitlement:
    """The licence that lets ``organization_id`` run ``version_id`` now; 403/402 otherwise."""
    try:
        _check_version(session, listing_id, version_id)
        payment_error: PaymentRequired | None = None
        for lic in _active_licenses(session, organization_id, listing_id, utcnow()):
            assert lic.id is not None
            if lic.kind == TRIAL and lic.calls_remaining is not None and lic.calls_remaining <= 0:
                continue
            if lic.kind == PER_INFERENCE:
                missing = metering.missing_for_next_call(session, lic)
                if missing > 0:
                    payment_error = payment_error or InsufficientFunds(
                        account_id=0, currency=lic.currency, missing_minor=missing
                    )
                    continue
            return Entitlement(
                license_id=lic.id,
                version_id=version_id,
                **attributes(
                    lic,
                    "kind organization_id listing_id offer_id expires_at calls_remaining "
                    "royalty_per_1k_minor currency",
                ),
            )
    finally:
        session.commit()  # end the read transaction; the model run may take a while
    if payment_error is not None:
        raise payment_error
    raise Forbidden(
        "Your organisation holds no active licence or trial for this model.",
        code="no_entitlement",
    )


def _no_longer_covered() -> Forbidden:
    return Forbidden("The licence or trial no longer covers this call.", code="no_entitlement")


def _count_paid_or_trial(session: Session, ent: Entitlement, now: dt.datetime) -> dict[str, Any]:
    active = sa.and_(
        _licenses_t.c.id == ent.license_id,
        _licenses_t.c.revoked_at.is_(None),
        sa.or_(_licenses_t.c.expires_at.is_(None), _licenses_t.c.expires_at > now),
    )
    if ent.kind == TRIAL:
        statement = (
            sa.update(_licenses_t)
            .where(
                active,
                sa.or_(_licenses_t.c.calls_remaining.is_(None), _licenses_t.c.calls_remaining > 0),
            )
            .values(
                calls_used=_licenses_t.c.calls_used + 1,
                calls_remaining=_licenses_t.c.calls_remaining - 1,  # NULL stays NULL
            )
            .returning(_licenses_t.c.calls_remaining)
        )
    else:
        statement = (
            sa.update(_licenses_t)
            .where(active)
            .values(calls_used=_licenses_t.c.calls_used + 1)
            .returning(_licenses_t.c.calls_remaining)
        )
    row = session.execute(statement).first()
    if row is None:
        raise _no_longer_covered()
    usage: dict[str, Any] = {"licence_id": ent.license_id, "kind": ent.kind}
    if ent.kind == TRIAL:
        usage["calls_remaining"] = row[0]
    return usage


def _metered_usage(ent: Entitlement, seq: int) -> dict[str, Any]:
    r = ent.royalty_per_1k_minor
    return {
        "licence_id": ent.license_id,
        "kind": ent.kind,
        # The call's number within the licence, as its usage event records it.
        "calls_used": seq,
        "accrued_minor": royalty_due(seq, r),
        "call_accrued_minor": royalty_due(seq, r) - royalty_due(seq - 1, r),
    }


def _count_metered(
    session: Session, ents: list[Entitlement], reserve_calls: int
) -> list[dict[str, Any] | DomainError]:
    """Count calls of one per-inference licence: all at once, or one by one when funds run out."""
    license_id = ents[0].license_id
    # Most batches fit the licence's reservation: one UPDATE that changes nothing when it
    # fails, so it needs no savepoint (which costs as much again).
    counted = metering.count_reserved_calls(
        session, license_id=license_id, version_ids=[e.version_id for e in ents]
    )
    if counted is not None:
        used = counted[0]
        return [_metered_usage(e, used - len(ents) + 1 + i) for i, e in enumerate(ents)]
    try:
        with session.begin_nested():
            used, _ids = metering.count_calls(
                session,
                license_id=license_id,
                version_ids=[e.version_id for e in ents],
                reserve_calls=reserve_calls,
            )
        return [_metered_usage(e, used - len(ents) + 1 + i) for i, e in enumerate(ents)]
    except DomainError as exc:
        if len(ents) == 1:
            return [exc]
    # The wallet covers fewer calls than the batch holds: count as many as it covers, in order.
    results: list[dict[str, Any] | DomainError] = []
    for ent in ents:
        try:
            with session.begin_nested():
                used, _ids = metering.count_calls(
                    session,
                    license_id=license_id,
                    version_ids=[ent.version_id],
                    reserve_calls=reserve_calls,
                )
            results.append(_metered_usage(ent, used))
        except DomainError as exc:
            results.append(exc)
    return results


def record_reserved_calls(
    transaction: Callable[[], AbstractContextManager[Any]],
    counter: metering.ReservedCallCounter,
    entitlements: list[Entitlement],
) -> list[dict[str, Any]] | None:
    """:func:`record_successful_calls` committed by ``counter`` when every call is metered and
    its licence's reservation covers it; None, with nothing written, otherwise."""
    by_license: dict[int, list[int]] = {}
    for index, ent in enumerate(entitlements):
        if ent.kind != PER_INFERENCE:
            return None
        by_license.setdefault(ent.license_id, []).append(index)
    groups = list(by_license.values())
    used_after = counter.count(
        transaction,
        [(entitlements[g[0]].license_id, [entitlements[i].version_id for i in g]) for g in groups],
    )
    if used_after is None:
        return None
    # A licence's calls are numbered up to its new count, in the batch's order.
    seq = {
        index: used - len(group) + 1 + offset
        for group, used in zip(groups, used_after, strict=True)
        for offset, index in enumerate(group)
    }
    return [_metered_usage(ent, seq[index]) for index, ent in enumerate(entitlements)]


def record_successful_calls(
    session: Session,
    entitlements: list[Entitlement],
    *,
    reserve_calls: int = metering.DEFAULT_RESERVE_CALLS,
) -> list[dict[str, Any] | DomainError]:
    """Count many successful calls inside the caller's (writing) transaction; no commit.

    One result per entitlement, in order: the call's ``usage`` object, or the 403/402 error
    that refuses it (a concurrent call took the last trial call, the wallet ran out, the
    licence was revoked). A refused call leaves no trace; the others still count. This is
    what lets concurrent calls share one commit (see ``marketplace.evaluation.batching``).
    """
    results: list[dict[str, Any] | DomainError | None] = [None] * len(entitlements)
    metered: dict[int, list[int]] = {}
    now = utcnow()
    for index, ent in enumerate(entitlements):
        if ent.kind == PER_INFERENCE:
            metered.setdefault(ent.license_id, []).append(index)
            continue
        try:
            results[index] = _count_paid_or_trial(session, ent, now)
        except DomainError as exc:
            results[index] = exc
    for indexes in metered.values():
        counted = _count_metered(session, [entitlements[i] for i in indexes], reserve_calls)
        for index, result in zip(indexes, counted, strict=True):
            results[index] = result
    return [r if r is not None else _no_longer_covered() for r in results]


def record_successful_call(
    *,
    session: Session,
    entitlement: Entitlement,
    reserve_calls: int = metering.DEFAULT_RESERVE_CALLS,
) -> dict[str, Any]:
    """Count one successful call against ``entitlement`` in a unit of work of its own.

    ``reserve_calls`` is how many calls a per-inference licence reserves from the wallet at a
    time (the ``metering_reserve_calls`` setting). Returns the ``usage`` object for the response.
    """

    def work(s: Session) -> dict[str, Any]:
        (result,) = record_successful_calls(s, [entitlement], reserve_calls=reserve_calls)
        if isinstance(result, DomainError):
            raise result
        return result

    return ledger.run_in_transaction(session, work)


# --- batches of calls taken up front (evaluation jobs) -------------------------------------


class TrialCallsInsufficient(Forbidden):
    code = "trial_calls_insufficient"


@dataclass(frozen=True)
class BatchCover:
    """What was taken up front for a batch of calls: trial calls, or a hold on the wallet."""

    kind: str
    license_id: int
    calls_reserved: int
    hold_id: int | None
    hold_minor: int


def reserve_batch(
    session: Session, *, entitlement: Entitlement, calls: int, hold_minor: int, key: str
) -> BatchCover:
    """Take what ``calls`` calls need before any of them runs, inside the caller's transaction.

    A trial gives up ``calls`` of its calls at once (403 ``trial_calls_insufficient`` when it
    has fewer); a per-inference licence holds ``hold_minor`` of the wallet (402 with the
    missing amount); a paid-up licence needs nothing. What is not used goes back with
    :func:`release_batch`.
    """
    ent = entitlement
    now = utcnow()
    active = sa.and_(
        _licenses_t.c.id == ent.license_id,
        _licenses_t.c.revoked_at.is_(None),
        sa.or_(_licenses_t.c.expires_at.is_(None), _licenses_t.c.expires_at > now),
    )
    hold_id = None
    if ent.kind == TRIAL:
        row = session.execute(
            sa.update(_licenses_t)
            .where(
                active,
                sa.or_(
                    _licenses_t.c.calls_remaining.is_(None),
                    _licenses_t.c.calls_remaining >= calls,
                ),
            )
            .values(calls_remaining=_licenses_t.c.calls_remaining - calls)
            .returning(_licenses_t.c.id)
        ).first()
        if row is None:
            lic = session.get(License, ent.license_id)
            left = 0 if lic is None else lic.calls_remaining or 0
            raise TrialCallsInsufficient(
                f"The trial has {left} calls left; the job needs {calls}.",
                extra={"calls_remaining": left, "calls_needed": calls},
            )
    elif ent.kind == PER_INFERENCE:
        lic = session.exec(
            select(License).where(License.id == ent.license_id).with_for_update()
        ).one()
        if lic.revoked_at is not None or (lic.expires_at is not None and lic.expires_at <= now):
            raise _no_longer_covered()
        hold_id = metering.hold_for_calls(
            session,
            lic=lic,
            amount_minor=hold_minor,
            key=key,
            memo=f"holds {calls} calls of licence {lic.id} for a batch",
        )
    elif session.execute(sa.select(_licenses_t.c.id).where(active)).first() is None:
        raise _no_longer_covered()
    return BatchCover(
        kind=ent.kind,
        license_id=ent.license_id,
        calls_reserved=calls,
        hold_id=hold_id,
        hold_minor=hold_minor if hold_id is not None else 0,
    )


def count_batch_calls(session: Session, kind: str, part: HeldCalls) -> tuple[int, int | None]:
    """Count a part of a reserved batch inside the caller's transaction.

    Returns what they were charged and the hold that now covers the rest of the batch (see
    :func:`marketplace.metering.services.count_held_calls`). Trial calls were taken when the
    batch was reserved; every kind counts its calls in ``calls_used``.
    """
    if kind == PER_INFERENCE:
        return metering.count_held_calls(session, part)
    if part.calls > 0:
        session.execute(
            sa.update(_licenses_t)
            .where(_licenses_t.c.id == part.license_id)
            .values(calls_used=_licenses_t.c.calls_used + part.calls)
        )
    return 0, None


def release_batch(
    session: Session, *, kind: str, license_id: int, hold_id: int | None, unused_calls: int
) -> None:
    """Give back what a batch took and did not use, inside the caller's transaction."""
    if kind == TRIAL and unused_calls > 0:
        session.execute(
            sa.update(_licenses_t)
            .where(_licenses_t.c.id == license_id, _licenses_t.c.calls_remaining.is_not(None))
            .values(calls_remaining=_licenses_t.c.calls_remaining + unused_calls)
        )
    if hold_id is not None:
        metering.release_hold(session, hold_id=hold_id)


def may_download(
    *, session: Session, organization_id: int, listing_id: int, version_id: int
) -> bool:
    """True when the organisation may download the version's artifact."""
    version = session.get(ModelVersion, version_id)
    if version is None or version.listing_id != listing_id or version.revoked_at is not None:
        return False
    now = utcnow()
    found = session.exec(
        select(License.id)
        .join(Offer, Offer.id == License.offer_id)  # type: ignore[arg-type]
        .where(
            License.organization_id == organization_id,
            License.listing_id == listing_id,
            License.kind != TRIAL,
            col(License.revoked_at).is_(None),
            sa.or_(col(License.expires_at).is_(None), col(License.expires_at) > now),
            Offer.allow_download.is_(True),  # type: ignore[attr-defined]
        )
    ).first()
    return found is not None
