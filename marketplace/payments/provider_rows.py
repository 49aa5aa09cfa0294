"""Our rows (top-ups, payouts, payment refunds) found from what a provider says of its objects.

Each row records the provider's id once the create call answers, and the metadata we sent
names the row (``jishi_<row>_id``) and its random ``jishi_reference``. The metadata path matters
when the provider's answer to our create call was lost: the object exists there, its webhook
arrives, and only our row's reference ties it to us.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlmodel import Session, select

from marketplace.db import lock_row
from marketplace.payments.gateway import metadata_id

log = logging.getLogger(__name__)

Row = TypeVar("Row")

# The metadata keys naming our rows, one per kind of provider object.
TOP_UP_ID_KEY = "jishi_top_up_id"
PAYOUT_ID_KEY = "jishi_payout_id"
REFUND_ID_KEY = "jishi_payment_refund_id"
REFERENCE_KEY = "jishi_reference"


def row_named(s: Session, model: type[Row], metadata: Mapping[str, str], id_key: str) -> Row | None:
    """The row the metadata names under ``id_key``, if its reference matches too; None for
    another installation's object on a shared provider account, or one made elsewhere."""
    row_id = metadata_id(metadata, id_key)
    if row_id is None:
        return None
    row = s.get(model, row_id)
    if row is None or getattr(row, "reference", None) != metadata.get(REFERENCE_KEY):
        return None
    return row


def row_for(
    s: Session, model: Any, *, provider_ref: str, metadata: Mapping[str, str], id_key: str
) -> Any:
    """Our row for a provider object: by the provider's id, or by the metadata we gave it (a
    row that records another provider object is not it)."""
    found = s.exec(select(model).where(model.provider_ref == provider_ref)).first()
    if found is not None:
        return found
    found = row_named(s, model, metadata, id_key)
    if found is None or found.provider_ref not in (None, provider_ref):
        return None
    return found


def lock_reported(s: Session, model: Any, row_id: int, provider_ref: str) -> tuple[Any, bool]:
    """Lock the row a provider object is reported for, and say whether the object is the row's
    own: the first report records the object's id; a report of another object (a second
    payment made for one top-up) changes nothing and is logged for a person."""
    row = lock_row(s, model, row_id)
    if row.provider_ref is None:
        row.provider_ref = provider_ref
    elif row.provider_ref != provider_ref:
        log.error(
            "%s %s is %s, not %s", model.__tablename__, row.id, row.provider_ref, provider_ref
        )
        return row, False
    return row, True
