"""Helpers for journal tests: platform users, records as data, a quick stream of activity."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from sqlmodel import Session

from marketplace.accounts import services as accounts
from marketplace.audit import journal
from marketplace.audit.models import AuditPending, AuditRecord
from marketplace.ledger import services as ledger
from marketplace.ledger.models import PAYMENT_CLEARING, WALLET
from tests.conftest import Org


def platform_org(client: FlaskClient, session: Session, role: str) -> Org:
    """An auditor or administrator organisation with its API client, as `jishi users` makes."""
    user, org, creds = accounts.create_platform_user(
        session=session,
        email=f"{role}-{uuid.uuid4().hex[:8]}@example.test",
        password="Platform-Password-2026",
        role=role,
    )
    assert org.id is not None and user.id is not None
    return Org(client, org.id, user.id, user.email, creds.client_id, creds.client_secret,
               creds.scopes)  # fmt: skip


@pytest.fixture
def auditor(client: FlaskClient, db_session: Session) -> Org:
    return platform_org(client, db_session, "auditor")


@pytest.fixture
def admin(client: FlaskClient, db_session: Session) -> Org:
    return platform_org(client, db_session, "admin")


def records(session: Session) -> list[dict[str, Any]]:
    """Every sequenced record, after sequencing what has committed."""
    journal.sequence(session)
    rows = session.execute(
        sa.select(AuditRecord.__table__.c.record).order_by(AuditRecord.__table__.c.seq)  # type: ignore[attr-defined]
    ).scalars()
    return [json.loads(bytes(r)) for r in rows]


def pending(session: Session) -> int:
    return int(
        session.execute(
            sa.select(sa.func.count()).select_from(AuditPending.__table__)  # type: ignore[attr-defined]
        ).scalar_one()
    )


def top_up(session: Session, organization_id: int, amount: int, key: str | None = None) -> int:
    """A two-leg ledger transaction (clearing -> wallet) in its own unit of work; its id."""

    def work(s: Session) -> int:
        clearing = ledger.ensure_account(
            s, organization_id=None, code=PAYMENT_CLEARING, currency="CNY"
        )
        wallet = ledger.ensure_account(
            s, organization_id=organization_id, code=WALLET, currency="CNY"
        )
        (tx,) = ledger.apply_transfers(
            s,
            [
                ledger.Transfer(
                    idempotency_key=key or f"test:{uuid.uuid4().hex}",
                    kind="top_up",
                    legs=(ledger.Leg.debit(clearing, amount), ledger.Leg.credit(wallet, amount)),
                )
            ],
        )
        return tx.id

    return ledger.run_in_transaction(session, work)
