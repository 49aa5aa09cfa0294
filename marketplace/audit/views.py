"""Auditor API: checkpoints, public keys, records, proofs, exports, platform ledger views.

Every route reads, and answers tokens with ``audit:read`` or ``admin``; the one write (an
on-demand checkpoint) is for administrators. Ranges are checked before a byte is streamed.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app
from pydantic import BaseModel

from marketplace.accounts.scopes import ADMIN, AUDIT_READ
from marketplace.api import API_PREFIX
from marketplace.audit import export, journal, platform, services
from marketplace.audit.errors import CheckpointNotFound, ExportsBusy
from marketplace.audit.keys import AuditKeyStore
from marketplace.audit.pages import AuditPages
from marketplace.audit.schemas import (
    CheckpointCreated,
    CheckpointQuery,
    ConsistencyProof,
    ConsistencyQuery,
    ExportQuery,
    InclusionProof,
    InclusionQuery,
    LedgerQuery,
    PlatformLedger,
    PublicKeyItem,
    PublicKeyList,
    RecordPage,
    RecordsQuery,
    RevenueQuery,
    RevenueReport,
    TreeStatus,
)
from marketplace.db import get_database, get_session
from marketplace.operation import operations

bp = Blueprint("audit", __name__, url_prefix=API_PREFIX)
M = TypeVar("M", bound=BaseModel)

READERS = (AUDIT_READ, ADMIN)
NOTE_MIME = "text/plain; charset=utf-8"
EXPORT_RETRY_AFTER_S = 10
# The example currency and period of the reports on the platform's books.
PERIOD_EXAMPLES = {"currency": "CNY", "from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}

operation = operations(tag="audit", scope=READERS)


def keys() -> AuditKeyStore:
    return current_app.extensions["audit_keys"]  # type: ignore[no-any-return]


def pages() -> AuditPages:
    return current_app.extensions["audit_pages"]  # type: ignore[no-any-return]


@bp.get("/audit/tree")
@operation("The journal's sequenced size, root and latest checkpoint")
def tree() -> TreeStatus:
    session = get_session()
    head = journal.read_head(session)
    assert head is not None
    try:
        latest: services.CheckpointView | None = services.latest_checkpoint(session)
    except CheckpointNotFound:
        latest = None
    return TreeStatus(
        origin=keys().origin,
        size=head.size,
        root_hash=head.root().hex(),
        pending=journal.pending_count(session),
        latest_checkpoint_size=None if latest is None else latest.size,
        latest_checkpoint_at=None if latest is None else latest.created_at,
    )


def _note(view: services.CheckpointView) -> Response:
    response = Response(view.note, mimetype="text/plain")
    response.headers["Content-Type"] = NOTE_MIME
    response.headers["X-Jishi-Tree-Size"] = str(view.size)
    return response


@bp.get("/audit/checkpoints/latest")
@operation(
    "The latest signed checkpoint (C2SP signed note, text/plain)",
    errors=["checkpoint_not_found"],
    response_media_types=("text/plain",),
)
def latest_checkpoint() -> Response:
    return _note(services.latest_checkpoint(get_session()))


@bp.get("/audit/checkpoints")
@operation(
    "The signed checkpoint of the tree at any size up to the sequenced one (text/plain)",
    response_media_types=("text/plain",),
    examples={"size": 1},
)
def checkpoint_at_size(query: CheckpointQuery) -> Response:
    return _note(services.checkpoint_at(get_session(), keys(), query.size))


@bp.post("/audit/checkpoints")
@operation(
    "Sequence committed records and sign a checkpoint now (administrator)", status=201, scope=ADMIN
)
def create_checkpoint() -> CheckpointCreated:
    session = get_session()
    journal.sequence(session)
    view = services.create_checkpoint(session, keys())
    return CheckpointCreated(
        size=view.size, root_hash=view.root.hex(), note=view.note, created_at=view.created_at
    )


@bp.get("/audit/public-keys")
@operation("Every key the journal has signed with, in the signed-note verifier-key format")
def public_keys() -> PublicKeyList:
    store = keys()
    items = [
        PublicKeyItem.model_validate(dataclasses.asdict(k))
        for k in store.public_keys(get_session())
    ]
    return PublicKeyList(origin=store.origin, items=items)


@bp.get("/audit/records")
@operation("Sequenced records from_seq..to_seq (inclusive), one page", examples={"to_seq": 9})
def records(query: RecordsQuery) -> RecordPage:
    return pages().records(
        get_session(), from_seq=query.from_seq, to_seq=query.to_seq, page_size=query.page_size
    )


def _proof(model: type[M], prove: Callable[..., object], **sizes: int | None) -> M:
    """An RFC 9162 proof over the journal, as the API shows it."""
    return model.model_validate(prove(get_session(), **sizes))


@bp.get("/audit/proofs/inclusion")
@operation(
    "RFC 9162 inclusion proof of record seq in the tree of size", examples={"seq": 0, "size": 1}
)
def inclusion_proof(query: InclusionQuery) -> InclusionProof:
    return _proof(InclusionProof, services.inclusion, seq=query.seq, size=query.size)


@bp.get("/audit/proofs/consistency")
@operation(
    "RFC 9162 consistency proof from the tree of size `from` to the tree of size `to`",
    examples={"from": 1, "to": 2},
)
def consistency_proof(query: ConsistencyQuery) -> ConsistencyProof:
    return _proof(ConsistencyProof, services.consistency, first=query.from_, second=query.to)


@bp.get("/audit/export")
@operation(
    "Export records [from_seq, to_size) as JSONL (with a signed manifest) or CSV, streamed",
    errors=["exports_busy"],
    response_media_types=("application/jsonl", "text/csv"),
    examples={"from_seq": 0, "to_size": 1},
)
def export_records(query: ExportQuery) -> Response:
    return export_response(from_seq=query.from_seq, to_size=query.to_size, fmt=query.format)


def export_response(*, from_seq: int | None, to_size: int | None, fmt: str) -> Response:
    """The export of records ``[from_seq, to_size)`` streamed as a download, within this node's
    export slots (503 when they are all busy); the API and the audit page both answer with it."""
    slots: threading.BoundedSemaphore = current_app.extensions["audit_export_slots"]
    if not slots.acquire(blocking=False):
        raise ExportsBusy(
            "Too many exports are running on this node; retry shortly.",
            headers={"Retry-After": str(EXPORT_RETRY_AFTER_S)},
        )
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            slots.release()

    try:
        prepared = export.prepare_export(
            get_session(), keys(), from_seq=from_seq, to_size=to_size, fmt=fmt
        )
    except BaseException:
        release()
        raise
    database = get_database()

    def generate() -> Any:
        # The request's session ends with the request; the stream reads with its own.
        session = database.session()
        try:
            yield from prepared.chunks(session)
        finally:
            session.close()

    response = Response(generate(), mimetype=prepared.media_type)
    response.headers["Content-Type"] = prepared.media_type
    response.headers["Content-Disposition"] = f'attachment; filename="{prepared.filename}"'
    response.headers["X-Jishi-From-Seq"] = str(prepared.from_seq)
    response.headers["X-Jishi-To-Size"] = str(prepared.to_size)
    response.call_on_close(release)
    return response


@bp.get("/audit/ledger/transactions")
@operation(
    "Every organisation's ledger transactions and entries, filtered, with totals per account code",
    examples={"organization_id": 2, "kind": "purchase", **PERIOD_EXAMPLES},
)
def ledger_transactions(query: LedgerQuery) -> PlatformLedger:
    return pages().ledger_transactions(get_session(), query)


@bp.get("/audit/revenue")
@operation("Platform fee revenue per currency and period", examples=PERIOD_EXAMPLES)
def revenue(query: RevenueQuery) -> RevenueReport:
    return platform.platform_revenue(
        session=get_session(),
        currency=query.currency,
        period=query.period,
        start=query.from_,
        end=query.to,
    )
