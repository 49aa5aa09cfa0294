"""Stripe webhooks: signature check, then each event applied once, in any order.

The signature is Stripe's documented scheme (``Stripe-Signature: t=...,v1=...``, HMAC-SHA256 of
``t.body``), checked with the SDK against every configured secret, so that a secret can be
rolled without losing events. An event id is recorded in the same transaction as its effect, so
a repeated delivery changes nothing. Effects are monotonic state moves (see
:func:`marketplace.payments.services.apply_intent`), so late and out-of-order deliveries
converge on the provider's latest state; a delivery that never comes is made up for by
reconciliation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe
from sqlmodel import Session

from marketplace.errors import DomainError
from marketplace.ledger import services as ledger
from marketplace.payments.gateway import ProviderConflict
from marketplace.payments.models import PaymentRefund, StripeEvent, TopUp
from marketplace.payments.provider_rows import REFUND_ID_KEY, TOP_UP_ID_KEY, row_for
from marketplace.payments.stripe_gateway import intent_from_stripe, refund_from_stripe

log = logging.getLogger(__name__)

_INTENT_EVENTS = {
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
}
_REFUND_EVENTS = {"refund.created", "refund.updated", "refund.failed"}


@dataclass(frozen=True)
class _Tracked:
    """A kind of provider object we keep a row for: how to read it, our row's model and the
    metadata key naming it, and how to apply what the provider reports."""

    read: Callable[[Any], Any]
    model: Any
    id_key: str
    apply: Callable[[Session, int, Any], object]


def _tracked_by_event() -> dict[str, _Tracked]:
    # Imported here: the payments service, in the services module, receives the webhooks.
    from marketplace.payments import refunds, services

    top_ups = _Tracked(intent_from_stripe, TopUp, TOP_UP_ID_KEY, services.apply_intent)
    payment_refunds = _Tracked(
        refund_from_stripe, PaymentRefund, REFUND_ID_KEY, refunds.apply_refund
    )
    return {
        **dict.fromkeys(_INTENT_EVENTS, top_ups),
        **dict.fromkeys(_REFUND_EVENTS, payment_refunds),
    }


class SignatureInvalid(DomainError, code="signature_invalid"): ...


class SignatureStale(DomainError, code="signature_stale"): ...


def verify(payload: bytes, header: str | None, secrets: list[str], tolerance_s: int) -> Any:
    """The event in ``payload`` if one of ``secrets`` signed it within ``tolerance_s``."""
    if not secrets:
        raise SignatureInvalid("No webhook secret is configured.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureInvalid("The body is not UTF-8.") from None
    timestamp = _header_timestamp(header or "")
    for secret in secrets:
        try:
            # Tolerance is checked below in both directions; the SDK only checks the past.
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance=None)
            break
        except stripe.SignatureVerificationError:
            continue
    else:
        raise SignatureInvalid("The Stripe-Signature header does not match the body.")
    if abs(time.time() - timestamp) > tolerance_s:
        raise SignatureStale(f"The signature is more than {tolerance_s} s from now.")
    try:
        event = json.loads(text)
    except ValueError:
        raise SignatureInvalid("The signed body is not JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise SignatureInvalid("The signed body is not an event.")
    return event


# Seconds since 1970 in decimal: twelve digits reach the year 33658.
_TIMESTAMP_DIGITS_MAX = 12


def _header_timestamp(header: str) -> int:
    """The header's one timestamp, read as the SDK reads it: the part named exactly ``t``.

    The SDK checks the signature against the first such part; the age must be judged on the
    same one. A header that names ``t`` twice, or with spaces around the name, is refused: a
    decoy `` t=<now>`` beside a replayed ``t=<old>`` made an old delivery look fresh.
    """
    parts = [part.split("=", 1) for part in header.split(",")]
    named = [part for part in parts if part[0].strip() == "t"]
    if len(named) != 1 or named[0][0] != "t" or len(named[0]) != 2:
        raise SignatureInvalid("The Stripe-Signature header must hold one timestamp t=<seconds>.")
    value = named[0][1]
    if not (value.isascii() and value.isdigit() and len(value) <= _TIMESTAMP_DIGITS_MAX):
        raise SignatureInvalid("The Stripe-Signature timestamp is not a number of seconds.")
    return int(value)


@dataclass(frozen=True)
class Applied:
    event_id: str
    outcome: str  # applied | ignored | unmatched | duplicate


# The stripe_events columns' lengths, in characters.
EVENT_ID_CHARS_MAX = 255
EVENT_TYPE_CHARS_MAX = 100


def _stored_text(value: Any, length_max: int) -> str:
    # PostgreSQL text cannot hold NUL; no Stripe id has one, but a signed body is still input.
    return str(value).replace("\x00", "\ufffd")[:length_max]


def apply_event(session: Session, event: dict[str, Any]) -> Applied:
    """Apply a verified event once; a repeat of an applied event id changes nothing."""
    tracked = _tracked_by_event().get(str(event.get("type", "")))
    event_id = _stored_text(event["id"], EVENT_ID_CHARS_MAX)
    event_type = _stored_text(event.get("type", ""), EVENT_TYPE_CHARS_MAX)
    # A signed event of another shape (data or its object not a JSON object) is kept and
    # acknowledged like any unreadable one below, not answered with a crash and redelivered.
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        obj = {}
    object_id = obj.get("id")

    def work(s: Session) -> str:
        if s.get(StripeEvent, event_id) is not None:
            return "duplicate"
        outcome = "ignored"
        try:
            if tracked is not None:
                reported = tracked.read(obj)
                ours = row_for(
                    s,
                    tracked.model,
                    provider_ref=reported.provider_ref,
                    metadata=reported.metadata,
                    id_key=tracked.id_key,
                )
                outcome = "unmatched"
                if ours is not None and ours.id is not None:
                    tracked.apply(s, ours.id, reported)
                    outcome = "applied"
        except (KeyError, TypeError, ValueError, ProviderConflict) as exc:
            # A signed event we cannot read is Stripe's or a compatible server's oddity, not a
            # reason to have it redelivered for days; keep its id and say so in the log.
            log.error("webhook event %s (%s) could not be applied: %r", event_id, event_type, exc)
            outcome = "unreadable"
        s.add(
            StripeEvent(
                id=event_id,
                type=event_type,
                object_id=_stored_text(object_id, EVENT_ID_CHARS_MAX) if object_id else None,
                outcome=outcome,
            )
        )
        s.flush()  # a twin delivery racing this one fails here and is retried as a duplicate
        return outcome

    return Applied(event_id, ledger.run_in_transaction(session, work))
