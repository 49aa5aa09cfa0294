"""Imports every table module so that ``SQLModel.metadata`` is complete (for Alembic and tests)."""

from marketplace.accounts import models as accounts_models
from marketplace.audit import models as audit_models
from marketplace.catalog import models as catalog_models
from marketplace.jobs import models as jobs_models
from marketplace.ledger import models as ledger_models
from marketplace.licensing import models as licensing_models
from marketplace.metering import models as metering_models
from marketplace.payments import models as payments_models

__all__ = [
    "accounts_models",
    "audit_models",
    "catalog_models",
    "jobs_models",
    "ledger_models",
    "licensing_models",
    "metering_models",
    "payments_models",
]
