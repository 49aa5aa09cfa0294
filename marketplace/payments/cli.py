"""``jishi payments ...`` and ``jishi payouts ...``: the outbox worker, reconciliation, payouts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import AppGroup

from marketplace.bounds import ID_MAX

if TYPE_CHECKING:
    from sqlmodel import Session

    from marketplace.payments.services import PaymentsService

payments_cli = AppGroup("payments", help="Calls to the payment provider and reconciliation.")
payouts_cli = AppGroup("payouts", help="Vendor payouts.")


def _service() -> tuple[Session, PaymentsService]:
    from marketplace.db import get_session
    from marketplace.payments import payments_service

    return get_session(), payments_service(current_app)


@payments_cli.command("work")
@click.option("--once", is_flag=True, help="One pass over the due calls, then exit.")
def work(once: bool) -> None:
    """Send due provider calls (retries with backoff); runs until stopped unless --once."""
    session, payments = _service()
    interval_s = current_app.extensions["settings"].payments_outbox_interval_s
    while True:
        outcomes = payments.send_due(session)
        if outcomes or once:
            click.echo(
                "sent: " + (", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "none")
            )
        if once:
            return
        time.sleep(max(interval_s, 0.1))


@payments_cli.command("retry")
@click.argument("message_id", type=click.IntRange(1, ID_MAX))
def retry(message_id: int) -> None:
    """Send a failed provider call again, with its original idempotency key."""
    session, payments = _service()
    sent = payments.retry_call(session, message_id)
    click.echo(f"outbox {message_id}: {sent.outcome if sent else 'queued'}")


@payments_cli.command("reconcile")
@click.option(
    "--report", "with_report", is_flag=True, help="Compare every record; exit 1 on any mismatch."
)
def reconcile(with_report: bool) -> None:
    """Ask the provider about open payments and refunds; with --report, compare both sides."""
    from marketplace.payments import reconcile as rec

    session, payments = _service()
    result = payments.reconcile(session)
    click.echo(
        f"reconciled: {result.checked} checked, {result.changed} changed, "
        f"{result.unavailable} unavailable, {result.expired} expired"
    )
    if not with_report:
        return
    report = rec.report(session=session, gateway=payments.gateway)
    for line in report.lines():
        click.echo(line)
    if report.mismatches:
        raise SystemExit(1)


@payouts_cli.command("run")
@click.option(
    "--organization",
    "organization_id",
    type=click.IntRange(1, ID_MAX),
    default=None,
    help="Only this vendor.",
)
def run(organization_id: int | None) -> None:
    """Pay every linked vendor's payable balance at or above the minimum out."""
    session, payments = _service()
    items = payments.pay_out(session=session, organization_id=organization_id)
    for p in items:
        click.echo(
            f"payout {p.id}: {p.amount_minor} {p.currency} to organization {p.organization_id} "
            f"{p.status}"
            + (f" ({p.provider_ref})" if p.provider_ref else "")
            + (f" {p.failure_code}" if p.failure_code else "")
        )
    click.echo(f"{len(items)} payouts")
