"""The ledger's unit of work: one database transaction, retried on transient conflicts."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session

from marketplace.db import begin_write

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_ATTEMPTS_MAX = 12
RETRY_BACKOFF_S = 0.002


def _is_retryable(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    if isinstance(exc, IntegrityError):
        # Two writers raced for the same idempotency key or account; the retry sees the winner.
        text = str(orig)
        return "UNIQUE constraint failed" in text or getattr(orig, "sqlstate", None) == "23505"
    if isinstance(exc, OperationalError | DBAPIError):
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate in {"40001", "40P01"}:  # serialization_failure, deadlock_detected
            return True
        if isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig):
            return True
    return False


def run_in_transaction(
    session: Session, work: Callable[[Session], T], *, attempts_max: int = RETRY_ATTEMPTS_MAX
) -> T:
    """Run ``work`` in one database transaction and commit; retry transient conflicts."""
    for attempt in range(1, attempts_max + 1):
        try:
            begin_write(session)
            result = work(session)
            session.commit()
            return result
        except Exception as exc:
            session.rollback()
            if attempt == attempts_max or not _is_retryable(exc):
                raise
            log.debug("retrying ledger unit of work after %s (attempt %d)", type(exc), attempt)
            time.sleep(random.uniform(0, RETRY_BACKOFF_S * 2 ** min(attempt, 6)))
    raise AssertionError("unreachable")
