"""The journal record of each change that moves money or rights, in one place.

Each domain calls one of these inside the transaction of its change (ledger transactions are
recorded by the ledger hook in :mod:`marketplace.audit.journal`). They read the rows the
change wrote, flushing first where an id is still unknown, and record ids, terms hashes and
amounts; never secrets. The kinds and subjects here are what auditors read, so keep them
stable: add fields, never rename them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session

from marketplace.audit.journal import Money, append, format_at
from marketplace.rows import attributes


def _id(session: Session, row: Any) -> int:
    if row.id is None:
        session.flush()
    return int(row.id)


def _at(moment: dt.datetime | None) -> str | None:
    return None if moment is None else format_at(moment)


# What each subject holds of its row under the attributes' own names, besides the row's id; a
# builder adds what the row names otherwise or does not hold.
_OFFER = "listing_id terms_sha256 trial_calls trial_days term_days allow_download commercial_use"
_VERSION = "version sha256"
_TERMS = "organization_id offer_id terms_sha256 purpose client_id"
_LICENSE = "organization_id vendor_organization_id offer_id listing_id"
_USAGE = "organization_id vendor_organization_id royalty_per_1k_minor"
_PAYOUT = (
    "organization_id status provider simulated destination reference provider_ref "
    "hold_transaction_id resolve_transaction_id failure_code"
)


def _subject(session: Session, row: Any, id_name: str, names: str, **values: Any) -> dict[str, Any]:
    """``row``'s id as ``id_name``, its attributes ``names`` and ``values``."""
    return {id_name: _id(session, row), **attributes(row, names), **values}


# --- Catalog ----------------------------------------------------------------------------------


def offer_created(session: Session, offer: Any) -> None:
    append(
        session,
        kind="offer.created",
        subject=_subject(session, offer, "offer_id", _OFFER, offer_kind=offer.kind),
        money=Money(
            offer.currency,
            offer.price_minor,
            extra={"royalty_per_1k_minor": offer.royalty_per_1k_minor},
        ),
    )


def offer_retired(session: Session, offer: Any) -> None:
    append(
        session,
        kind="offer.retired",
        subject=_subject(session, offer, "offer_id", "listing_id"),
        at=offer.retired_at,
    )


def _version_subject(session: Session, version: Any, listing: Any) -> dict[str, Any]:
    return _subject(
        session,
        version,
        "version_id",
        _VERSION,
        listing_id=listing.id,
        vendor_organization_id=listing.organization_id,
    )


def version_published(session: Session, version: Any, listing: Any) -> None:
    subject = _version_subject(session, version, listing)
    subject["size_bytes"] = version.size_bytes
    append(session, kind="version.published", subject=subject)


def version_revoked(session: Session, version: Any, listing: Any) -> None:
    subject = _version_subject(session, version, listing)
    append(session, kind="version.revoked", subject=subject, at=version.revoked_at)


def listing_status_changed(session: Session, listing: Any) -> None:
    """``listing.suspended`` or ``listing.reinstated`` (listing.active)."""
    kind = "listing.suspended" if listing.status == "suspended" else "listing.reinstated"
    append(
        session,
        kind=kind,
        subject=_subject(
            session, listing, "listing_id", "status", vendor_organization_id=listing.organization_id
        ),
    )


# --- Licensing ----------------------------------------------------------------------------------


def terms_accepted(session: Session, acceptance: Any) -> None:
    append(
        session,
        kind="terms.accepted",
        subject=_subject(session, acceptance, "terms_acceptance_id", _TERMS),
        at=acceptance.accepted_at,
    )


def _license_subject(session: Session, lic: Any) -> dict[str, Any]:
    return _subject(
        session, lic, "license_id", _LICENSE, license_kind=lic.kind, expires_at=_at(lic.expires_at)
    )


def trial_started(session: Session, lic: Any) -> None:
    subject = _license_subject(session, lic)
    subject["calls_remaining"] = lic.calls_remaining
    append(session, kind="trial.started", subject=subject, at=lic.created_at)


def license_granted(session: Session, lic: Any, order: Any) -> None:
    subject = _license_subject(session, lic)
    subject["order_id"] = _id(session, order)
    subject["ledger_transaction_id"] = order.ledger_transaction_id
    subject["platform_fee_bps"] = order.platform_fee_bps
    append(
        session,
        kind="license.granted",
        subject=subject,
        money=Money(order.currency, order.amount_minor),
        at=order.created_at,
    )


def refund_issued(session: Session, refund: Any, order: Any) -> None:
    append(
        session,
        kind="refund.issued",
        subject=_subject(
            session,
            refund,
            "refund_id",
            "ledger_transaction_id reason",
            **attributes(order, "organization_id vendor_organization_id"),
            order_id=order.id,
            order_status=order.status,
        ),
        money=Money(refund.currency, refund.amount_minor),
    )


# --- Metering -----------------------------------------------------------------------------------


def usage_settled(session: Session, lic: Any, *, amount_minor: int) -> None:
    """Calls ``calls_settled + 1 .. calls_used`` of a metered licence were charged."""
    append(
        session,
        kind="usage.settled",
        subject=_subject(
            session,
            lic,
            "license_id",
            _USAGE,
            calls_from=lic.calls_settled + 1,
            calls_to=lic.calls_used,
        ),
        money=Money(lic.currency, amount_minor),
    )


# --- Payments -----------------------------------------------------------------------------------

_PAYOUT_KINDS = {"pending": "payout.started", "paid": "payout.paid", "failed": "payout.failed"}


def payout_changed(session: Session, payout: Any) -> None:
    """``payout.started`` (the vendor's money is held), ``payout.paid`` or ``payout.failed``."""
    append(
        session,
        kind=_PAYOUT_KINDS.get(payout.status, "payout.updated"),
        subject=_subject(session, payout, "payout_id", _PAYOUT),
        money=Money(payout.currency, payout.amount_minor),
    )
