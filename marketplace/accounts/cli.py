"""``jishi orgs``: what administrators do to organisations from the command line."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from marketplace.bounds import ID_MAX

orgs_cli = AppGroup("orgs", help="Organisations.")


@orgs_cli.command("verify")
@click.argument("organization_id", type=click.IntRange(1, ID_MAX))
def verify(organization_id: int) -> None:
    """Mark ORGANIZATION_ID as verified (offers may keep their trials for verified ones)."""
    from marketplace.accounts import services
    from marketplace.db import get_session
    from marketplace.errors import DomainError

    try:
        org = services.verify_organization(session=get_session(), org_id=organization_id)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(
        f"organization {org.id} ({org.name}) verified at {org.verified_at:%Y-%m-%d %H:%M} UTC"
    )
