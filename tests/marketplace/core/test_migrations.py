"""Migrations upgrade an empty database to head, and the models and migrations agree."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import marketplace.tables  # noqa: F401
from marketplace import migrate


def test_upgrade_from_empty_reaches_head_without_drift(db_backend, scratch_databases):
    _url, engine = scratch_databases.create(db_backend, migrated=False)
    assert migrate.current_revisions(engine) == set()
    migrate.upgrade(engine)
    assert migrate.current_revisions(engine) == migrate.head_revisions(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == [], f"models and migrations differ: {diff}"
    tables = set(sa.inspect(engine).get_table_names())
    assert set(SQLModel.metadata.tables) <= tables


def test_upgrade_is_idempotent(db_backend, scratch_databases):
    _url, engine = scratch_databases.create(db_backend)
    before = migrate.current_revisions(engine)
    migrate.upgrade(engine)
    assert migrate.current_revisions(engine) == before
