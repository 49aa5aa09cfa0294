"""Imports every table module so that ``SQLModel.metadata`` is complete (for Alembic and tests)."""

from marketplace.accounts import models as accounts_models
from marketplace.catalog import models as catalog_models
from marketplace.ledger import models as ledger_models

__all__ = ["accounts_models", "catalog_models", "ledger_models"]
