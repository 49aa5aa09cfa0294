"""Eight writers and racing sequencers and checkpointers: one chain, no gaps, no forks."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from marketplace.audit import journal, services
from marketplace.audit.keys import AuditKeyStore
from marketplace.audit.models import AuditCheckpoint, AuditRecord
from marketplace.ledger import services as ledger
from marketplace.ledger.models import LedgerTransaction
from tests.marketplace.audit.conftest import top_up
from tests.marketplace.ledger.test_concurrency import THREADS, run_threads
from tests.marketplace.licensing.builders import make_organization


@pytest.mark.slow
def test_concurrent_writers_sequencers_and_checkpoints_make_one_chain(
    fresh_database, db_backend, tmp_path: Path
):
    _url, engine = fresh_database()
    journal.install()
    keys = AuditKeyStore(tmp_path / "audit.key", "jishi.test/log", generate=True)
    setup = Session(engine, expire_on_commit=False)
    orgs = [make_organization(setup) for _ in range(THREADS)]
    hot = make_organization(setup)
    ops = 40 if db_backend == "postgresql" else 12
    stop = threading.Event()
    background_errors: list[BaseException] = []

    def background(task):
        session = Session(engine, expire_on_commit=False)
        try:
            while not stop.is_set():
                task(session)
                time.sleep(0.002)
        except BaseException as exc:
            background_errors.append(exc)
        finally:
            session.close()

    helpers = [
        threading.Thread(target=background, args=(lambda s: journal.sequence(s, wait=False),)),
        threading.Thread(target=background, args=(lambda s: journal.sequence(s, batch_max=7),)),
        threading.Thread(target=background, args=(lambda s: services.create_checkpoint(s, keys),)),
    ]
    for helper in helpers:
        helper.start()

    def writer(i):
        session = Session(engine, expire_on_commit=False)
        for n in range(ops):
            # Half on the writer's own wallet, half on one hot wallet shared by all.
            top_up(session, orgs[i] if n % 2 else hot, 1 + n, key=f"w{i}-{n}-{uuid.uuid4().hex}")
        session.close()

    try:
        run_threads(writer)
    finally:
        stop.set()
        for helper in helpers:
            helper.join(60)
    assert not background_errors, background_errors[0]

    check = Session(engine, expire_on_commit=False)
    journal.sequence(check)
    services.create_checkpoint(check, keys)
    rows = check.execute(
        sa.select(AuditRecord.__table__.c.seq, AuditRecord.__table__.c.record).order_by(  # type: ignore[attr-defined]
            AuditRecord.__table__.c.seq  # type: ignore[attr-defined]
        )
    ).all()
    # No gaps: seq 0..n-1. No forks: each record's prev is the hash of the one before.
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    prev = "0" * 64
    recorded: list[int] = []
    for _seq, raw in rows:
        record = json.loads(bytes(raw))
        assert record["prev"] == prev
        prev = hashlib.sha256(bytes(raw)).hexdigest()
        if record["kind"] == "ledger.transaction":
            recorded.append(record["subject"]["ledger_transaction_id"])
    # Every ledger transaction has exactly one record.
    all_ids = check.execute(sa.select(LedgerTransaction.id)).scalars().all()
    assert sorted(recorded) == sorted(all_ids)
    assert len(all_ids) == THREADS * ops + 0  # the writers' top-ups, nothing else
    assert services.ledger_transactions_without_record(check) == []
    # Every checkpoint taken while writers ran is a prefix of the final tree.
    assert services.check_journal(check) == []
    sizes = check.execute(sa.select(AuditCheckpoint.size)).scalars().all()
    assert len(sizes) >= 1 and max(sizes) == len(rows)
    assert ledger.check_invariants(check) == []
    check.close()
    engine.dispose()  # give the run's other tests their connections back


def test_checkpoints_made_at_once_on_several_nodes_store_one_note(fresh_database, tmp_path: Path):
    _url, engine = fresh_database()
    journal.install()
    keys = AuditKeyStore(tmp_path / "audit.key", "jishi.test/log", generate=True)
    setup = Session(engine, expire_on_commit=False)
    top_up(setup, make_organization(setup), 5)
    journal.sequence(setup)
    notes: list[str] = []

    def node(_i):
        session = Session(engine, expire_on_commit=False)
        notes.append(services.create_checkpoint(session, keys).note)
        session.close()

    run_threads(node, count=4)
    assert len(set(notes)) == 1
    assert setup.execute(sa.select(sa.func.count()).select_from(AuditCheckpoint)).scalar_one() == 1
    setup.close()
    engine.dispose()
