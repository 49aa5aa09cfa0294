"""``jishi reports ...``: offline checks of signed evaluation reports.

Reports are signed by the server only, so there is no command that signs one. ``verify`` needs
no app, database or network: it runs on a machine that has only this package and a public key.
"""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

reports_cli = AppGroup("reports", help="Signed evaluation reports.")


@reports_cli.command("verify", with_appcontext=False)
@click.argument("report_file", metavar="REPORT", type=click.Path(dir_okay=False))
@click.option(
    "--public-key",
    required=True,
    help="A verifier key (name+hash+base64) or a file holding one or more of them, as "
    "`jishi audit verify` takes.",
)
def verify_command(report_file: str, public_key: str) -> None:
    """Verify a signed report offline; print its figures. Exit 0 verified, 1 not, 2 usage."""
    from marketplace.jobs.reports import run

    sys.exit(run(report_file, public_key))
