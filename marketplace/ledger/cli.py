"""``jishi ledger ...``: settlement of metered royalties and a consistency check."""

from __future__ import annotations

import click
from flask.cli import AppGroup

ledger_cli = AppGroup("ledger", help="The double-entry ledger.")


@ledger_cli.command("settle")
@click.option(
    "--batch", "batch_licenses", default=200, show_default=True, help="Licences per transaction."
)
def settle(batch_licenses: int) -> None:
    """Charge every per-inference licence's unsettled calls (safe to rerun after a crash)."""
    from marketplace.db import get_session
    from marketplace.metering.services import settle as settle_all

    report = settle_all(session=get_session(), batch_licenses=batch_licenses)
    charged = ", ".join(f"{amount} {cur}" for cur, amount in sorted(report.charged_minor.items()))
    click.echo(
        f"settled {report.calls} calls on {report.licenses} licences"
        + (f"; charged (minor units) {charged}" if charged else "")
    )


@ledger_cli.command("check")
def check() -> None:
    """Replay the ledger against the cached balances, and find every ledger transaction's
    record in the audit journal; exit 1 on any difference."""
    from marketplace.audit.services import ledger_transactions_without_record
    from marketplace.db import get_session
    from marketplace.ledger.services import check_invariants

    session = get_session()
    problems = check_invariants(session)
    unrecorded = ledger_transactions_without_record(session)
    if unrecorded:
        problems.append(f"ledger transactions without an audit journal record: {unrecorded}")
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise SystemExit(1)
    click.echo("ledger consistent")
