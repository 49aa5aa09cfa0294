"""Alembic environment: targets SQLModel.metadata with every table module imported."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import marketplace.tables  # noqa: F401  (registers every table on the metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from marketplace.config import Settings
        from marketplace.db import make_engine

        settings = Settings.load()
        if not settings.database_url:
            raise SystemExit("Set MARKETPLACE_DATABASE_URL, or use `jishi db upgrade`.")
        engine = make_engine(settings.database_url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("Offline (SQL script) migrations are not supported; run against a database.")
run_migrations_online()
