"""The ``jishi`` command: Flask's CLI plus the marketplace's own commands."""

from __future__ import annotations

import secrets

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext

from marketplace import migrate

db_cli = AppGroup("db", help="Database schema migrations.")
users_cli = AppGroup("users", help="People and platform roles.")


@db_cli.command("upgrade")
@click.option("--revision", default="heads", show_default=True)
def db_upgrade(revision: str) -> None:
    """Migrate the database schema to REVISION."""
    engine = current_app.extensions["db"].engine
    migrate.upgrade(engine, revision)
    click.echo(f"database at revision {', '.join(sorted(migrate.current_revisions(engine)))}")


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
def db_revision(message: str) -> None:
    """Autogenerate a migration from the difference between the models and the database."""
    from alembic import command

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
@with_appcontext
def serve(host: str, port: int, demo: bool) -> None:
    """Migrate, load demo data (not in production) and serve: the single-machine way to run."""
    from marketplace.demo import demo_data_refusal, load_demo_data

    migrate.upgrade(current_app.extensions["db"].engine)
    refusal = demo_data_refusal(current_app.extensions["settings"])
    if demo and refusal:
        click.echo(f"demo data not loaded: {refusal}")
    elif demo:
        for line in load_demo_data(current_app._get_current_object()):  # type: ignore[attr-defined]
            click.echo(line)
    # Werkzeug's threaded server directly: Flask ignores app.run() inside a CLI command.
    from werkzeug.serving import run_simple

    click.echo(f"serving on http://{host}:{port}")
    run_simple(host, port, current_app._get_current_object(), threaded=True)  # type: ignore[attr-defined]


def init_app(app: Flask) -> None:
    from marketplace.accounts.cli import orgs_cli
    from marketplace.catalog.cli import models_cli
    from marketplace.ledger.cli import ledger_cli
    from marketplace.payments.cli import payments_cli, payouts_cli

    for command in (
        db_cli,
        users_cli,
        orgs_cli,
        demo_data,
        serve,
        ledger_cli,
        models_cli,
        payments_cli,
        payouts_cli,
    ):
        app.cli.add_command(command)


def main() -> None:
    from marketplace import create_app

    FlaskGroup(create_app=create_app, add_version_option=False, load_dotenv=False)(
        prog_name="jishi"
    )
