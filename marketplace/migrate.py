"""Schema migrations with Alembic, driven from code (``jishi db upgrade``) and checked at start-up."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy.engine import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class SchemaNotCurrent(RuntimeError):
    """The database is not at the migrations' head revision."""


def alembic_config(engine: Engine) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # env.py uses this engine instead of building its own from a URL (the URL's password would
    # be masked when rendered back to a string).
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "heads") -> None:
    command.upgrade(alembic_config(engine), revision)


def head_revisions(engine: Engine) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def require_current_schema(app: Flask) -> None:
    """Production refuses to serve a database that is not migrated to head."""
    engine = app.extensions["db"].engine
    current, heads = current_revisions(engine), head_revisions(engine)
    if current != heads:
        raise SchemaNotCurrent(
            f"The database schema is at revision {', '.join(sorted(current)) or 'none'} but this "
            f"release needs {', '.join(sorted(heads))}. Run `jishi db upgrade` before starting."
        )
