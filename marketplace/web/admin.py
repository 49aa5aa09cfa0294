"""The administrator's page: listings to suspend or reinstate, organisations to verify, refunds,
payout runs and failed payment-provider calls to retry, sandbox health."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response as BaseResponse

from marketplace.accounts import services as accounts
from marketplace.accounts.scopes import ADMIN
from marketplace.accounts.services import Viewer
from marketplace.api import validate
from marketplace.catalog import services as catalog
from marketplace.catalog.models import LISTING_ACTIVE, LISTING_STATUSES, LISTING_SUSPENDED
from marketplace.db import get_session
from marketplace.errors import DomainError, Forbidden
from marketplace.evaluation import services as evaluation
from marketplace.licensing import licensing_service
from marketplace.licensing.models import Order
from marketplace.licensing.schemas import RefundCreate
from marketplace.payments import outbox, payments_service
from marketplace.payments.models import OUTBOX_FAILED, PAYOUT_FAILED
from marketplace.web import formatting
from marketplace.web.dashboard import payout_status_text
from marketplace.web.forms import EmptyForm, PayoutRunForm, RefundForm, ledger_key
from marketplace.web.views import (
    _exponents,
    bp,
    error_text,
    login_required,
    money_text,
    refusal_flashed,
)

ADMIN_PAGE_SIZE = 25
FAILED_CALLS_SHOWN = 25


def require_admin() -> Viewer:
    """The API's rule for administrators: an organisation with the admin role and scope."""
    from marketplace.web.views import current_viewer

    viewer = current_viewer()
    if viewer is None or not (viewer.has_role("admin") and viewer.may(ADMIN)):
        raise Forbidden(_("Only administrators may open this page."), code="forbidden")
    return viewer


@bp.get("/admin")
@login_required
def admin_page() -> Any:
    require_admin()
    status = request.args.get("status")
    try:
        page_number = max(1, min(int(request.args.get("page", "1")), 100_000))
    except ValueError:
        page_number = 1
    listings = catalog.all_listings(
        session=get_session(),
        status=status if status in LISTING_STATUSES else None,
        page=page_number,
        page_size=ADMIN_PAGE_SIZE,
    )
    verified = {"yes": True, "no": False}.get(request.args.get("verified", "no"))
    organizations, organizations_total = accounts.list_organizations(
        session=get_session(), verified=verified, page=1, page_size=ADMIN_PAGE_SIZE
    )
    refund_form = RefundForm()
    refund_form.idempotency_key.data = uuid.uuid4().hex
    lazy = current_app.extensions["sandbox_pool"]
    health = evaluation.health(lazy, detailed=True) if lazy.started else None
    return render_template(
        "admin.html",
        listings=listings,
        status=status,
        action_form=EmptyForm(),
        refund_form=refund_form,
        health=health,
        organizations=organizations,
        organizations_total=organizations_total,
        verified_filter=request.args.get("verified", "no"),
        payout_run_form=PayoutRunForm(),
        failed_calls=outbox.listing(get_session(), status=OUTBOX_FAILED, limit=FAILED_CALLS_SHOWN),
    )


def _set_status(model_id: int, status: str) -> BaseResponse:
    require_admin()
    with refusal_flashed():
        detail = catalog.set_listing_status(
            session=get_session(), listing_id=model_id, status=status
        )
        message = (
            _("“%(name)s” is suspended.")
            if status == LISTING_SUSPENDED
            else _("“%(name)s” is active again.")
        )
        flash(message % {"name": detail.name}, "ok")
    return redirect(url_for("web.admin_page") + "#listings")


@bp.post("/admin/listings/<int:model_id>/suspend")
@login_required
def admin_suspend(model_id: int) -> BaseResponse:
    return _set_status(model_id, LISTING_SUSPENDED)


@bp.post("/admin/listings/<int:model_id>/reinstate")
@login_required
def admin_reinstate(model_id: int) -> BaseResponse:
    return _set_status(model_id, LISTING_ACTIVE)


@bp.post("/admin/organizations/<int:org_id>/verify")
@login_required
def admin_verify(org_id: int) -> BaseResponse:
    require_admin()
    with refusal_flashed():
        org = accounts.verify_organization(session=get_session(), org_id=org_id)
        flash(_("“%(name)s” is verified.") % {"name": org.name}, "ok")
    return redirect(url_for("web.admin_page") + "#organizations")


@bp.post("/admin/refunds")
@login_required
def admin_refund() -> BaseResponse:
    require_admin()
    form = RefundForm()
    back = redirect(url_for("web.admin_page") + "#refunds")
    if not form.validate_on_submit():
        if form.reason.errors:
            flash(_("The reason is at most 500 characters."), "error")
        else:
            flash(_("Type the order number."), "error")
        return back
    session = get_session()
    try:
        amount = None
        if form.amount.data:
            order = session.get(Order, form.order_id.data)
            currency = order.currency if order is not None else "CNY"
            amount = formatting.parse_amount(form.amount.data, _exponents().get(currency, 2))
        body = validate(RefundCreate, {"amount_minor": amount, "reason": form.reason.data or ""})
        refund, _created = licensing_service(current_app).refund_order(
            session=session,
            order_id=form.order_id.data,
            request=body,
            idempotency_key=ledger_key(form.idempotency_key.data),
        )
        flash(
            _(
                "Refunded %(amount)s of order %(id)s.",
                amount=money_text(refund.amount_minor, refund.currency),
                id=refund.order_id,
            ),
            "ok",
        )
    except ValueError:
        flash(_("Type an amount such as 100 or 99.50."), "error")
    except DomainError as exc:
        flash(error_text(exc), "error")
    return back


@bp.post("/admin/payouts/run")
@login_required
def admin_run_payouts() -> BaseResponse:
    require_admin()
    form = PayoutRunForm()
    back = redirect(url_for("web.admin_page") + "#payouts")
    if not form.validate_on_submit():
        flash(_("Type an organisation number, or leave it empty for every vendor."), "error")
        return back
    try:
        done = payments_service(current_app).pay_out(
            session=get_session(), organization_id=form.organization_id.data
        )
    except DomainError as exc:
        flash(error_text(exc), "error")
        return back
    status = payout_status_text()
    flash(_("Payout run: %(n)d payouts.", n=len(done)), "ok")
    for p in done:
        flash(
            _(
                "Payout %(id)s: %(amount)s to organisation %(org)s, %(status)s.",
                id=p.id,
                amount=money_text(p.amount_minor, p.currency),
                org=p.organization_id,
                status=status.get(p.status, p.status),
            ),
            "error" if p.status == PAYOUT_FAILED else "ok",
        )
    return back


@bp.post("/admin/payments/outbox/<int:message_id>/retry")
@login_required
def admin_retry_call(message_id: int) -> BaseResponse:
    require_admin()
    with refusal_flashed():
        sent = payments_service(current_app).retry_call(get_session(), message_id)
        flash(
            _(
                "Provider call %(id)s sent again: %(outcome)s.",
                id=message_id,
                outcome=_(sent.outcome) if sent else _("queued"),
            ),
            "ok",
        )
    return redirect(url_for("web.admin_page") + "#payments")


@bp.post("/admin/sandbox/check")
@login_required
def admin_sandbox_check() -> BaseResponse:
    require_admin()
    # Starting the pool on this node is what the first evaluation would do; only an
    # administrator may make the page do it.
    current_app.extensions["sandbox_pool"].get()
    return redirect(url_for("web.admin_page") + "#sandbox")
