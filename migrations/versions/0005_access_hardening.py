"""access hardening: client provenance and use, organisation verification, verified-only trials

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 11:40:00.000000

Besides the columns, two data steps close holes for rows written before this release:
- clients:manage became a scope of its own. Each organisation's oldest active client is given
  it (as registration now gives it to the first client), so that every organisation can still
  make and revoke clients; its ordinary tokens do not carry it unless asked for.
- Model cards stored before images were limited to this origin are rendered again, so stored
  HTML loads no remote image (tracking pixel).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import marketplace.db


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLIENTS_MANAGE = "clients:manage"


def upgrade() -> None:
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verified_at', marketplace.db.UTCDateTime(timezone=True), nullable=True))

    with op.batch_alter_table('oauth_clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_by_user_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('created_by_client_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', marketplace.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key('fk_oauth_clients_created_by_user_id_users', 'users', ['created_by_user_id'], ['id'])

    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trial_requires_verified_org', sa.Boolean(), nullable=False, server_default=sa.false()))

    _give_first_clients_clients_manage()
    _render_model_cards_again()


def _give_first_clients_clients_manage() -> None:
    connection = op.get_bind()
    clients = sa.table(
        'oauth_clients',
        sa.column('id', sa.Integer()),
        sa.column('organization_id', sa.Integer()),
        sa.column('scope', sa.String()),
        sa.column('revoked_at', sa.DateTime()),
    )
    firsts = (
        sa.select(sa.func.min(clients.c.id))
        .where(clients.c.revoked_at.is_(None))
        .group_by(clients.c.organization_id)
    )
    rows = connection.execute(
        sa.select(clients.c.id, clients.c.scope).where(clients.c.id.in_(firsts))
    ).all()
    for client_id, scope in rows:
        scopes = set((scope or "").split())
        if CLIENTS_MANAGE in scopes:
            continue
        connection.execute(
            clients.update()
            .where(clients.c.id == client_id)
            .values(scope=" ".join(sorted(scopes | {CLIENTS_MANAGE})))
        )


def _render_model_cards_again() -> None:
    # The current renderer: re-rendering is idempotent, and a later release that changes the
    # renderer again renders with its own version.
    from marketplace.catalog.markdown import render_model_card

    connection = op.get_bind()
    listings = sa.table(
        'listings',
        sa.column('id', sa.Integer()),
        sa.column('description_md', sa.Text()),
        sa.column('description_html', sa.Text()),
    )
    rows = connection.execute(sa.select(listings.c.id, listings.c.description_md)).all()
    for listing_id, markdown in rows:
        connection.execute(
            listings.update()
            .where(listings.c.id == listing_id)
            .values(description_html=render_model_card(markdown or ""))
        )


def downgrade() -> None:
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.drop_column('trial_requires_verified_org')

    with op.batch_alter_table('oauth_clients', schema=None) as batch_op:
        batch_op.drop_constraint('fk_oauth_clients_created_by_user_id_users', type_='foreignkey')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('created_by_client_id')
        batch_op.drop_column('created_by_user_id')

    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('verified_at')
