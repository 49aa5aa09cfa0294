"""``jishi payments ...`` and ``jishi payouts ...``: the outbox worker, reconciliation, payouts."""

from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import AppGroup

payments_cli = AppGroup("payments", help="Calls to the payment provider and reconciliation.")
payouts_cli = AppGroup("payouts", help="Vendor payouts.")


def _context() -> tuple[object, object, object]:
    from marketplace.db import get_session
    from marketplace.payments.outbox import OutboxPolicy

    settings = current_app.extensions["settings"]
    return (
        get_session(),
        current_app.extensions["payment_gateway"],
        OutboxPolicy.from_settings(settings),
    )


@payments_cli.command("work")
@click.option("--once", is_flag=True, help="One pass over the due calls, then exit.")
def work(once: bool) -> None:
    """Send due provider calls (retries with backoff); runs until stopped unless --once."""
    from marketplace.payments.outbox import process_due

    session, gateway, policy = _context()
    settings = current_app.extensions["settings"]
    while True:
        outcomes = process_due(
            session,  # type: ignore[arg-type]
            gateway,  # type: ignore[arg-type]
            policy,  # type: ignore[arg-type]
            limit=settings.payments_outbox_batch_max,
        )
        if outcomes or once:
            click.echo(
                "sent: " + (", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "none")
            )
        if once:
            return
        time.sleep(max(settings.payments_outbox_interval_s, 0.1))


@payments_cli.command("retry")
@click.argument("message_id", type=int)
def retry(message_id: int) -> None:
    """Send a failed provider call again, with its original idempotency key."""
    from marketplace.payments import outbox

    session, gateway, policy = _context()
    outbox.retry(session, message_id)  # type: ignore[arg-type]
    sent = outbox.process_now(session, gateway, policy, message_id)  # type: ignore[arg-type]
    click.echo(f"outbox {message_id}: {sent.outcome if sent else 'queued'}")


@payments_cli.command("reconcile")
@click.option(
    "--report", "with_report", is_flag=True, help="Compare every record; exit 1 on any mismatch."
)
def reconcile(with_report: bool) -> None:
    """Ask the provider about open payments and refunds; with --report, compare both sides."""
    from marketplace.payments import reconcile as rec

    session, gateway, _policy = _context()
    settings = current_app.extensions["settings"]
    result = rec.reconcile(
        session=session,  # type: ignore[arg-type]
        gateway=gateway,  # type: ignore[arg-type]
        batch_max=settings.payments_reconcile_batch_max,
        top_up_expiry_s=settings.top_up_expiry_s,
    )
    click.echo(
        f"reconciled: {result.checked} checked, {result.changed} changed, "
        f"{result.unavailable} unavailable, {result.expired} expired"
    )
    if not with_report:
        return
    report = rec.report(session=session, gateway=gateway)  # type: ignore[arg-type]
    for line in report.lines():
        click.echo(line)
    if report.mismatches:
        raise SystemExit(1)


@payouts_cli.command("run")
@click.option("--organization", "organization_id", type=int, default=None, help="Only this vendor.")
def run(organization_id: int | None) -> None:
    """Pay every linked vendor's payable balance at or above the minimum out."""
    from marketplace.payments.payouts import pay_out

    session, gateway, policy = _context()
    settings = current_app.extensions["settings"]
    items = pay_out(
        session=session,  # type: ignore[arg-type]
        gateway=gateway,  # type: ignore[arg-type]
        policy=policy,  # type: ignore[arg-type]
        minimum_minor=settings.payout_minimum_minor,
        organization_id=organization_id,
    )
    for p in items:
        click.echo(
            f"payout {p.id}: {p.amount_minor} {p.currency} to organization {p.organization_id} "
            f"{p.status}"
            + (f" ({p.provider_ref})" if p.provider_ref else "")
            + (f" {p.failure_code}" if p.failure_code else "")
        )
    click.echo(f"{len(items)} payouts")
