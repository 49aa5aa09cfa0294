"""``jishi audit ...``: exports, checkpoints, keys and offline verification.

``verify`` and ``generate-key`` need no app, database or network: they are registered on the
``jishi`` command itself as well, so that they run on a machine that has only this package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from marketplace.bounds import INT64_MAX

audit_cli = AppGroup("audit", help="The tamper-evident journal: exports, checkpoints, keys.")


@audit_cli.command("export")
@click.option("--from-seq", type=click.IntRange(0, INT64_MAX), default=None, help="Default 0.")
@click.option("--to-size", type=click.IntRange(0, INT64_MAX), default=None, help="Default: all.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--sequence/--no-sequence",
    default=True,
    show_default=True,
    help="Sequence committed records first, so the export reaches the newest change.",
)
def export_command(
    from_seq: int | None, to_size: int | None, fmt: str, out: Path, sequence: bool
) -> None:
    """Write records [FROM_SEQ, TO_SIZE) to OUT: the same bytes as GET /api/v1/audit/export."""
    from marketplace.audit import export, journal
    from marketplace.audit.verify import ProgressBar
    from marketplace.db import get_session
    from marketplace.errors import DomainError
    from marketplace.files import replaced_atomically

    session = get_session()
    if sequence:
        journal.sequence(session)
    try:
        prepared = export.prepare_export(
            session,
            current_app.extensions["audit_keys"],
            from_seq=from_seq,
            to_size=to_size,
            fmt=fmt,
        )
    except DomainError as exc:
        raise click.ClickException(f"{exc.code}: {exc.detail}") from None
    bar = ProgressBar()
    expected = max(1, (prepared.to_size - prepared.from_seq) * 300)
    # A failed export leaves no partial file, and an earlier export at ``out`` as it was.
    with replaced_atomically(out) as handle:
        written = export.write_export(
            prepared, session, handle, lambda n: bar(min(n, expected - 1), expected)
        )
    bar(expected, expected)
    click.echo(
        f"exported records {prepared.from_seq}..{prepared.to_size - 1} "
        f"({prepared.to_size - prepared.from_seq} records, {written} bytes) to {out}"
    )


@audit_cli.command("checkpoint")
def checkpoint_command() -> None:
    """Sequence committed records and store a signed checkpoint of the whole tree; print it."""
    from marketplace.audit import journal, services
    from marketplace.db import get_session

    session = get_session()
    journal.sequence(session)
    view = services.create_checkpoint(session, current_app.extensions["audit_keys"])
    click.echo(view.note, nl=False)


@audit_cli.command("rotate-key")
def rotate_key_command() -> None:
    """Replace the journal's signing key; the old public key stays published."""
    from marketplace.db import get_session

    old, new = current_app.extensions["audit_keys"].rotate(get_session())
    click.echo(f"retired: {old.encode()}")
    click.echo(f"current: {new.encode()}")


@audit_cli.command("check")
def check_command() -> None:
    """Replay the chain, its tree and its checkpoints from the database; exit 1 on a problem."""
    from marketplace.audit.services import check_journal
    from marketplace.db import get_session

    problems = check_journal(get_session())
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise SystemExit(1)
    click.echo("journal consistent")


@audit_cli.command("generate-key", with_appcontext=False)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--origin",
    default=None,
    help="The journal's origin (default: MARKETPLACE_AUDIT_ORIGIN, or the host name + /jishi).",
)
def generate_key_command(out: Path, origin: str | None) -> None:
    """Write a new signing key to OUT (mode 0600) for MARKETPLACE_AUDIT_KEY_PATH; no database."""
    from marketplace.audit.keys import default_origin, write_private_key
    from marketplace.audit.notes import NoteError, Signer

    if out.exists():
        raise click.ClickException(f"{out} exists; a key is never overwritten")
    name = origin or os.environ.get("MARKETPLACE_AUDIT_ORIGIN") or default_origin()
    try:
        signer = Signer.generate(name)
    except NoteError as exc:
        raise click.ClickException(str(exc)) from None
    write_private_key(out, signer)
    click.echo(f"wrote the signing key to {out}")
    click.echo(f"verifier key: {signer.verifier().encode()}")


@audit_cli.command("verify", with_appcontext=False)
@click.argument("export_file", metavar="EXPORT", type=click.Path(dir_okay=False))
@click.option(
    "--public-key",
    required=True,
    help="A verifier key (name+hash+base64) or a file holding one or more of them.",
)
@click.option(
    "--previous",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A checkpoint you trusted before (a signed note file, or the earlier export holding "
    "it) at this export's first or last size.",
)
def verify_command(export_file: str, public_key: str, previous: str | None) -> None:
    """Verify a JSONL export offline: no database, no network. Exit 0 verified, 1 not, 2 usage."""
    from marketplace.audit.verify import run

    sys.exit(run(export_file, public_key, previous))
