"""The ``jishi`` command: Flask's CLI plus the marketplace's own commands.

Start-up is kept light: listing the commands (``jishi --help``) and client commands such as
``jishi models push`` build no app and import neither onnx, onnxruntime, numpy nor the
database layer; a command that needs the app builds it when it runs.
"""

from __future__ import annotations

import secrets

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext

db_cli = AppGroup("db", help="Database schema migrations.")
users_cli = AppGroup("users", help="People and platform roles.")


@db_cli.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database schema to REVISION."""
    from marketplace import migrate

    engine = current_app.extensions["db"].engine
    migrate.upgrade(engine, revision)
    click.echo(f"database at revision {', '.join(sorted(migrate.current_revisions(engine)))}")


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
def db_revision(message: str) -> None:
    """Autogenerate a migration from the difference between the models and the database."""
    from alembic import command

    from marketplace import migrate

    command.revision(
        migrate.alembic_config(current_app.extensions["db"].engine),
        message=message,
        autogenerate=True,
    )


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["auditor", "admin"]), required=True)
@click.option("--password", default=None, help="Generated and printed when omitted.")
def users_create(email: str, role: str, password: str | None) -> None:
    """Create an auditor or administrator with an API client of their own."""
    from marketplace.accounts import services
    from marketplace.db import get_session

    generated = password is None
    password = password or secrets.token_urlsafe(18)
    _user, org, creds = services.create_platform_user(
        session=get_session(), email=email.strip().lower(), password=password, role=role
    )
    click.echo(f"created {role} {email} (organization {org.id})")
    if generated:
        click.echo(f"password: {password}")
    click.echo(f"client_id: {creds.client_id}")
    click.echo(f"client_secret: {creds.client_secret}  (shown once)")


@click.command("demo-data")
@with_appcontext
def demo_data() -> None:
    """Load demonstration organisations, listings and offers (idempotent; never in production)."""
    from marketplace.demo import demo_data_refusal, load_demo_data

    refusal = demo_data_refusal(current_app.extensions["settings"])
    if refusal:
        raise click.ClickException(f"demo data not loaded: {refusal}")
    for line in load_demo_data(current_app._get_current_object()):  # type: ignore[attr-defined]
        click.echo(line)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True)
@click.option("--demo/--no-demo", default=True, show_default=True, help="Load demo data first.")
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=None,
    help="Server processes [one per core].",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    help="Threads per process [8, or one more than EVAL_CONCURRENCY_MAX].",
)
@click.option("--dev", is_flag=True, help="Werkzeug's development server, with the reloader.")
@click.option("--debugger", is_flag=True, help="With --dev: the interactive debugger (local only).")
@with_appcontext
def serve(
    host: str,
    port: int,
    demo: bool,
    processes: int | None,
    threads: int | None,
    dev: bool,
    debugger: bool,
) -> None:
    """Migrate, load demo data (not in production) and serve with gunicorn (--dev: Werkzeug)."""
    from marketplace import migrate, serving
    from marketplace.demo import demo_data_refusal, load_demo_data

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    migrate.upgrade(app.extensions["db"].engine)
    refusal = demo_data_refusal(app.extensions["settings"])
    if demo and refusal:
        click.echo(f"demo data not loaded: {refusal}")
    elif demo:
        for line in load_demo_data(app):
            click.echo(line)
    if debugger and not dev:
        raise click.UsageError("--debugger needs --dev")
    from marketplace.jobs.queue import describe_broker

    settings = app.extensions["settings"]
    threads_embedded = settings.job_embedded_worker_threads
    click.echo(
        f"evaluation jobs: broker {describe_broker(settings)}; "
        + (
            f"a worker with {threads_embedded} threads runs in one server process"
            if threads_embedded
            else "no worker here (run `jishi worker` nodes)"
        )
    )
    click.echo(f"serving on http://{host}:{port}")
    if dev:
        serving.serve_dev(app, host=host, port=port, debugger=debugger)
        return
    # The workers build apps of their own; this one's connections must not cross the fork.
    app.extensions["db"].engine.dispose()
    from marketplace import create_app

    serving.serve(
        create_app,
        host=host,
        port=port,
        processes=processes or serving.default_processes(),
        threads=threads or serving.default_threads(settings.eval_concurrency_max),
        graceful_timeout_s=settings.eval_timeout_s + 5.0,
    )


def _commands() -> list[click.Command]:
    from marketplace.accounts.cli import orgs_cli
    from marketplace.audit.cli import audit_cli
    from marketplace.catalog.cli import models_cli
    from marketplace.jobs.cli import worker
    from marketplace.jobs.reports_cli import reports_cli
    from marketplace.ledger.cli import ledger_cli
    from marketplace.payments.cli import payments_cli, payouts_cli

    return [
        db_cli,
        users_cli,
        orgs_cli,
        demo_data,
        serve,
        ledger_cli,
        models_cli,
        payments_cli,
        payouts_cli,
        audit_cli,
        reports_cli,
        worker,
    ]


def init_app(app: Flask) -> None:
    """The commands on ``app.cli`` too, for ``flask --app app ...``."""
    for command in _commands():
        app.cli.add_command(command)


class _JishiGroup(FlaskGroup):
    """Finds and lists its own commands without building the app (Flask's group builds it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return click.Group.list_commands(self, ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return click.Group.get_command(self, ctx, name)


def _create_app() -> Flask:
    from marketplace import create_app

    return create_app()


def main() -> None:
    from marketplace.audit.actor import Actor, set_actor

    # What an operator's command changes is recorded in the journal as done from the CLI.
    set_actor(Actor(via="cli"))
    group = _JishiGroup(create_app=_create_app, add_version_option=False, load_dotenv=False)
    for command in _commands():
        group.add_command(command)
    group(prog_name="jishi")
