"""The auditor's page: the latest signed checkpoint, the journal's public keys, exports, the
platform's ledger totals, and how to verify an export offline.

It reads what the auditor API reads, for the same people (``audit:read`` or ``admin``), and its
export is the API's own streamed response (:func:`marketplace.audit.views.export_response`), so
a file downloaded here has the same bytes as ``GET /api/v1/audit/export`` for the same range.
"""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _

from marketplace.accounts.services import Viewer
from marketplace.audit import journal, platform, services
from marketplace.audit import views as audit_api
from marketplace.audit.errors import CheckpointNotFound
from marketplace.audit.schemas import LedgerQuery
from marketplace.db import get_session
from marketplace.errors import DomainError, Forbidden
from marketplace.web.forms import AuditExportForm
from marketplace.web.views import bp, current_viewer, error_text, login_required

REVENUE_PERIODS_SHOWN = 12


def may_audit(viewer: Viewer | None) -> bool:
    """The auditor API's rule: a scope of :data:`marketplace.audit.views.READERS`."""
    return viewer is not None and any(viewer.may(scope) for scope in audit_api.READERS)


def require_auditor() -> Viewer:
    viewer = current_viewer()
    if viewer is None or not may_audit(viewer):
        raise Forbidden(_("Only auditors and administrators may open this page."), code="forbidden")
    return viewer


@bp.app_context_processor
def _audit_helpers() -> dict[str, Any]:
    return {"may_audit": may_audit(current_viewer())}


@bp.get("/audit")
@login_required
def audit_page() -> Any:
    require_auditor()
    session = get_session()
    store = audit_api.keys()
    head = journal.read_head(session)
    try:
        latest: services.CheckpointView | None = services.latest_checkpoint(session)
    except CheckpointNotFound:
        latest = None
    public_keys = store.public_keys(session)
    revenue = platform.platform_revenue(
        session=session, currency=None, period="month", start=None, end=None
    )
    # The totals are over every transaction; the page itself is not shown.
    totals = audit_api.pages().ledger_transactions(session, LedgerQuery(page_size=1)).totals
    form = AuditExportForm()
    if not form.is_submitted():
        form.format.data = "jsonl"
    return render_template(
        "audit.html",
        origin=store.origin,
        tree_size=0 if head is None else head.size,
        pending=journal.pending_count(session),
        latest=latest,
        public_keys=public_keys,
        current_key=next(k for k in public_keys if k.current),
        revenue_periods=revenue.items[-REVENUE_PERIODS_SHOWN:],
        revenue_totals=revenue.totals,
        account_totals=totals,
        export_form=form,
    )


@bp.post("/audit/export")
@login_required
def audit_export() -> Any:
    require_auditor()
    form = AuditExportForm()
    back = redirect(url_for("web.audit_page") + "#export")
    if not form.validate_on_submit():
        flash(
            "; ".join(f"{form[k].label.text}: {' '.join(v)}" for k, v in form.errors.items()),
            "error",
        )
        return back
    try:
        return audit_api.export_response(
            from_seq=form.from_seq.data, to_size=form.to_size.data, fmt=form.format.data
        )
    except DomainError as exc:
        flash(error_text(exc), "error")
        return back
