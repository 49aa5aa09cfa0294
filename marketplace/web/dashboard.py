"""The dashboard (one URL, sections by the organisation's roles): a vendor's listings, uploads,
offers and charts; a buyer's licences, wallet, statement and orders."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections import defaultdict
from typing import Any

from flask import Response, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from werkzeug.wrappers import Response as BaseResponse
from wtforms import SelectChoice

from marketplace.accounts.scopes import LEDGER_READ, LICENSES_WRITE, MODELS_WRITE, PAYOUTS_WRITE
from marketplace.api import validate
from marketplace.catalog import catalog_service, upload_context
from marketplace.catalog import services as catalog
from marketplace.catalog.schemas import ListingCreate, OfferCreate
from marketplace.db import get_session, utcnow
from marketplace.errors import DomainError, ValidationFailed
from marketplace.ledger import services as ledger
from marketplace.ledger import statement_service
from marketplace.ledger.models import VENDOR_PAYABLE
from marketplace.ledger.statements import credits_by_hour
from marketplace.licensing import licensing_service
from marketplace.licensing import services as licensing
from marketplace.licensing.schemas import OrderQuery
from marketplace.metering import services as metering
from marketplace.payments import payments_service, payouts
from marketplace.payments import services as payments
from marketplace.payments.models import PAYOUT_FAILED, PAYOUT_PAID, PAYOUT_PENDING
from marketplace.payments.schemas import PayoutAccountSet, TopUpCreate
from marketplace.web import charts, formatting
from marketplace.web.forms import (
    ListingForm,
    OfferForm,
    PayoutAccountForm,
    SampleForm,
    TopUpForm,
    UploadForm,
    ledger_key,
)
from marketplace.web.views import (
    EmptyForm,
    _exponents,
    bp,
    current_viewer,
    error_text,
    login_required,
    money_text,
    refusal_flashed,
    requires,
    viewer_zone,
)

CHART_DAYS = 30
STATEMENT_DAYS = 90
ORDERS_SHOWN = 20
PAYOUTS_SHOWN = 20


def _currency_choices() -> list[SelectChoice]:
    return [SelectChoice(code, code) for code in sorted(_exponents())]


@bp.get("/dashboard")
@login_required
def dashboard() -> Any:
    viewer = current_viewer()
    assert viewer is not None
    context: dict[str, Any] = {}
    if viewer.has_role("vendor"):
        context.update(_vendor_context(viewer.organization_id))
        context["payout_account_form"] = PayoutAccountForm() if viewer.may(PAYOUTS_WRITE) else None
    if viewer.has_role("buyer"):
        context.update(_buyer_context(viewer.organization_id))
    return render_template("dashboard.html", **context)


def _orders(organization_id: int, role: str) -> list[Any]:
    page = licensing_service(current_app).list_orders(
        session=get_session(),
        organization_id=organization_id,
        query=OrderQuery(role=role, page_size=ORDERS_SHOWN),  # type: ignore[arg-type]
    )
    return page.items


def _chart_window() -> tuple[dt.date, dt.datetime]:
    tz = viewer_zone()
    today = utcnow().astimezone(tz).date()
    first = today - dt.timedelta(days=CHART_DAYS - 1)
    since = dt.datetime.combine(first, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    return today, since


def _money_series(title: str, currency: str, points: list[tuple[dt.datetime, int]]) -> Any:
    today, _since = _chart_window()
    dates, values = charts.daily(points, viewer_zone(), CHART_DAYS, today)
    return charts.Series(
        title=f"{title} ({currency})",
        labels=charts.short_dates(dates),
        values=values,
        value_text=lambda v: money_text(v, currency),
    )


def payout_status_text() -> dict[str, str]:
    """What a payout's status means to the vendor (the money of a pending one is held)."""
    return {
        PAYOUT_PENDING: _("held: being paid"),
        PAYOUT_PAID: _("paid"),
        PAYOUT_FAILED: _("failed: payable again"),
    }


def _vendor_context(organization_id: int) -> dict[str, Any]:
    session = get_session()
    today, since = _chart_window()
    sales = licensing.sales_by_hour(
        session=session, vendor_organization_id=organization_id, since=since
    )
    royalties = credits_by_hour(
        session=session,
        organization_id=organization_id,
        code=VENDOR_PAYABLE,
        kind="royalty",
        since=since,
    )
    usage = metering.usage_by_hour(
        session=session, vendor_organization_id=organization_id, since=since
    )
    by_currency: dict[str, list[tuple[dt.datetime, int]]] = defaultdict(list)
    for point in sales:
        by_currency[point.currency].append((point.hour, point.amount_minor))
    royalty_by_currency: dict[str, list[tuple[dt.datetime, int]]] = defaultdict(list)
    for hour, currency, amount in royalties:
        royalty_by_currency[currency].append((hour, amount))
    dates, calls = charts.daily(usage, viewer_zone(), CHART_DAYS, today)
    usage_series = charts.Series(
        title=_("Metered calls per day"),
        labels=charts.short_dates(dates),
        values=calls,
        value_text=lambda v: f"{v:,}",
    )
    money_series = [
        _money_series(_("Sales per day"), c, p) for c, p in sorted(by_currency.items())
    ] + [
        _money_series(_("Royalties per day"), c, p) for c, p in sorted(royalty_by_currency.items())
    ]
    if not money_series:
        money_series = [_money_series(_("Sales per day"), "CNY", [])]
    series = [*money_series, usage_series]
    balances = [
        b
        for b in ledger.balances(session, organization_id=organization_id)
        if b.code == VENDOR_PAYABLE
    ]
    return {
        "listings": catalog.vendor_listings(session=session, organization_id=organization_id),
        "charts": [(s, charts.bar_chart(s)) for s in series],
        "payable": balances,
        "sales": _orders(organization_id, "vendor"),
        "payouts": payouts.list_payouts(
            session=session, organization_id=organization_id, limit=PAYOUTS_SHOWN
        ),
        "payout_account": payouts.get_payout_account(
            session=session, organization_id=organization_id
        ),
        "payout_status": payout_status_text(),
    }


def _buyer_context(organization_id: int) -> dict[str, Any]:
    session = get_session()
    form = TopUpForm()
    form.currency.choices = _currency_choices()
    form.currency.data = form.currency.data or "CNY"
    form.idempotency_key.data = uuid.uuid4().hex
    since = utcnow() - dt.timedelta(days=STATEMENT_DAYS)
    entries = statement_service(current_app).statement(
        session=session,
        organization_id=organization_id,
        currency=None,
        start=since,
        end=None,
    )
    return {
        "licences": licensing.list_licenses(session=session, organization_id=organization_id),
        "listing_names": licensing.licensed_listing_names(
            session=session, organization_id=organization_id
        ),
        "wallet": payments.wallet(session=session, organization_id=organization_id),
        "top_up_form": form,
        "statement": entries,
        "statement_days": STATEMENT_DAYS,
        "purchases": _orders(organization_id, "buyer"),
        "payments_simulated": current_app.extensions["payment_gateway"].simulated,
    }


# --- buyer actions ---------------------------------------------------------------------------


@bp.post("/dashboard/top-up")
@login_required
def top_up() -> BaseResponse:
    viewer = requires(LICENSES_WRITE)
    form = TopUpForm()
    form.currency.choices = _currency_choices()
    if form.validate_on_submit():
        try:
            amount = formatting.parse_amount(form.amount.data, _exponents()[form.currency.data])
            body = validate(TopUpCreate, {"amount_minor": amount, "currency": form.currency.data})
            result, _created = payments_service(current_app).create_top_up(
                session=get_session(),
                organization_id=viewer.organization_id,
                request=body,
                idempotency_key=ledger_key(form.idempotency_key.data),
            )
            shown = money_text(result.amount_minor, result.currency)
            if result.status == "succeeded":
                note = _(" (simulated: no real money moved)") if result.payment.simulated else ""
                flash(_("Topped up %(amount)s.", amount=shown) + note, "ok")
            else:
                # A card payment completes with the payment provider; the wallet is credited
                # when the provider confirms it.
                flash(
                    _(
                        "A payment of %(amount)s was started; your wallet is credited when the "
                        "payment provider confirms it.",
                        amount=shown,
                    ),
                    "ok",
                )
        except ValueError:
            flash(_("Type an amount such as 100 or 99.50."), "error")
        except DomainError as exc:
            flash(error_text(exc), "error")
    else:
        flash(_("Type an amount and choose a currency."), "error")
    return redirect(url_for("web.dashboard") + "#wallet")


def _csv_safe(text: str) -> str:
    # A cell starting with = + - @ is a formula to a spreadsheet; quote it as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@bp.get("/dashboard/statement.csv")
@login_required
def statement_csv() -> Response:
    viewer = requires(LEDGER_READ)

    def day(name: str) -> dt.datetime | None:
        raw = request.args.get(name)
        if not raw:
            return None
        try:
            return dt.datetime.combine(
                dt.date.fromisoformat(raw), dt.time(), tzinfo=viewer_zone()
            ).astimezone(dt.UTC)
        except (ValueError, OverflowError):
            # OverflowError: a day near year 1 or 9999 shifted by the viewer's zone.
            raise ValidationFailed(_("Dates are YYYY-MM-DD."), code="invalid_date") from None

    result = statement_service(current_app).statement(
        session=get_session(),
        organization_id=viewer.organization_id,
        currency=request.args.get("currency") or None,
        start=day("from"),
        end=day("to"),
    )
    exponents = _exponents()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["entry_id", "created_at_utc", "transaction_id", "kind", "account", "currency", "side",
         "amount", "amount_minor", "pending", "memo"]
    )  # fmt: skip
    for e in result.entries:
        exponent = exponents.get(e.currency, 2)
        amount = (
            f"{e.amount_minor / 10**exponent:.{exponent}f}" if exponent else str(e.amount_minor)
        )
        writer.writerow(
            [e.id, e.created_at.isoformat(), e.transaction_id, e.kind, e.account_code, e.currency,
             e.side, amount, e.amount_minor, e.pending, _csv_safe(e.memo)]
        )  # fmt: skip
    if result.truncated:
        writer.writerow(["# truncated: narrow from/to for the rest"])
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = 'attachment; filename="statement.csv"'
    return response


# --- vendor actions --------------------------------------------------------------------------


@bp.post("/dashboard/payout-account")
@login_required
def set_payout_account() -> BaseResponse:
    viewer = requires(PAYOUTS_WRITE)
    form = PayoutAccountForm()
    if form.validate_on_submit():
        with refusal_flashed():
            body = validate(PayoutAccountSet, {"account_id": form.account_ref.data.strip()})
            linked = payments_service(current_app).set_payout_account(
                session=get_session(),
                organization_id=viewer.organization_id,
                viewer_organization_id=viewer.organization_id,
                account_ref=body.account_id,
            )
            flash(_("Payouts go to %(account)s from now on.", account=linked.account_ref), "ok")
    else:
        flash(_("Type the connected account's id."), "error")
    return redirect(url_for("web.dashboard") + "#payouts")


def _owned(model_id: int) -> Any:
    viewer = requires(MODELS_WRITE)
    return viewer, catalog.get_owned_listing(
        session=get_session(), listing_id=model_id, organization_id=viewer.organization_id
    )


@bp.route("/dashboard/listings/new", methods=["GET", "POST"])
@login_required
def new_listing() -> Any:
    viewer = requires(MODELS_WRITE)
    form = ListingForm()
    error = None
    if form.validate_on_submit():
        try:
            body = validate(
                ListingCreate,
                {
                    "name": form.name.data,
                    "summary": form.summary.data or "",
                    "task": form.task.data,
                    "tags": [t for t in (form.tags.data or "").split(",") if t.strip()],
                    "filing_number": form.filing_number.data or None,
                    "description_md": form.description_md.data or "",
                },
            )
            listing = catalog.create_listing(
                session=get_session(), organization_id=viewer.organization_id, request=body
            )
            flash(_("Listing created. Upload its first version."), "ok")
            return redirect(url_for("web.manage_listing", model_id=listing.id))
        except DomainError as exc:
            error = error_text(exc)
    status = 422 if form.is_submitted() else 200
    return render_template("listing_new.html", form=form, error=error), status


def _offer_form() -> OfferForm:
    form = OfferForm()
    form.currency.choices = _currency_choices()
    if not form.is_submitted():
        form.currency.data = "CNY"
    return form


@bp.get("/dashboard/listings/<int:model_id>")
@login_required
def manage_listing(model_id: int) -> Any:
    viewer, listing = _owned(model_id)
    session = get_session()
    detail = catalog.listing_detail(session, listing)
    detail.offers = catalog.list_offers(
        session=session,
        listing_id=model_id,
        viewer_org_id=viewer.organization_id,
        include_retired=True,
    )
    return render_template(
        "listing_manage.html",
        detail=detail,
        samples=catalog.samples_of(session=session, listing_id=model_id),
        upload_form=UploadForm(),
        sample_form=SampleForm(),
        offer_form=_offer_form(),
        retire_form=EmptyForm(),
        upload_bytes_max=upload_context(current_app).size_max,
    )


def _wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


@bp.post("/dashboard/listings/<int:model_id>/versions")
@login_required
def upload_version(model_id: int) -> Any:
    _viewer, listing = _owned(model_id)
    session = get_session()
    form = UploadForm()
    back = url_for("web.manage_listing", model_id=model_id)
    try:
        if not form.validate_on_submit():
            raise ValidationFailed(_("Choose an ONNX file and type its version."))
        version = catalog.parse_version(form.version.data.strip())
        catalog.ensure_version_free(session=session, listing=listing, version=version)
        published = catalog.publish_version(
            session=session,
            listing=listing,
            version=version,
            body=form.model.data.stream,
            context=upload_context(current_app),
        )
    except DomainError as exc:
        findings = exc.extra.get("findings", [])
        if _wants_json():
            return jsonify({"code": exc.code, "detail": error_text(exc), "findings": findings}), (
                exc.status
            )
        flash(error_text(exc), "error")
        for finding in findings:
            flash(f"{finding.get('code')}: {finding.get('message')}", "error")
        return redirect(back + "#versions")
    if _wants_json():
        return jsonify({**published.model_dump(mode="json"), "location": back + "#versions"}), 201
    flash(_("Version %(v)s published.", v=published.version), "ok")
    return redirect(back + "#versions")


@bp.post("/dashboard/listings/<int:model_id>/versions/<version>/sample")
@login_required
def attach_sample(model_id: int, version: str) -> BaseResponse:
    viewer, _listing = _owned(model_id)
    samples = catalog_service(current_app)
    form = SampleForm()
    with refusal_flashed():
        if not form.validate_on_submit():
            raise ValidationFailed(_("Choose an .npz file."))
        data = form.sample.data.stream.read(samples.sample_bytes_max + 1)
        samples.attach_sample(
            session=get_session(),
            listing_id=model_id,
            version=version,
            organization_id=viewer.organization_id,
            data=data,
        )
        flash(_("Sample input attached to %(v)s.", v=version), "ok")
    return redirect(url_for("web.manage_listing", model_id=model_id) + "#versions")


@bp.post("/dashboard/listings/<int:model_id>/offers")
@login_required
def create_offer(model_id: int) -> BaseResponse:
    viewer, _listing = _owned(model_id)
    form = _offer_form()
    with refusal_flashed():
        if not form.validate_on_submit():
            raise ValidationFailed(
                "; ".join(f"{form[k].label.text}: {' '.join(v)}" for k, v in form.errors.items())
            )
        exponent = _exponents()[form.currency.data]
        try:
            price = formatting.parse_amount(form.price.data or "0", exponent)
            royalty = formatting.parse_amount(form.royalty_per_1k.data or "0", exponent)
        except ValueError:
            raise ValidationFailed(_("Prices are amounts such as 100 or 99.50.")) from None
        body = validate(
            OfferCreate,
            {
                "name": form.name.data,
                "kind": form.kind.data,
                "currency": form.currency.data,
                "price_minor": price,
                "royalty_per_1k_minor": royalty,
                "trial_calls": form.trial_calls.data or 0,
                "trial_days": form.trial_days.data or 0,
                "term_days": form.term_days.data,
                "trial_requires_verified_org": bool(form.trial_requires_verified_org.data),
                "allow_download": bool(form.allow_download.data),
                "commercial_use": bool(form.commercial_use.data),
                "terms_md": form.terms_md.data or "",
            },
        )
        offer = catalog.create_offer(
            session=get_session(),
            listing_id=model_id,
            organization_id=viewer.organization_id,
            request=body,
        )
        flash(_("Offer “%(name)s” published.", name=offer.name), "ok")
    return redirect(url_for("web.manage_listing", model_id=model_id) + "#offers")


@bp.post("/dashboard/listings/<int:model_id>/offers/<int:offer_id>/retire")
@login_required
def retire_offer(model_id: int, offer_id: int) -> BaseResponse:
    viewer, _listing = _owned(model_id)
    with refusal_flashed():
        catalog.retire_offer(
            session=get_session(),
            listing_id=model_id,
            offer_id=offer_id,
            organization_id=viewer.organization_id,
        )
        flash(_("Offer retired; existing licences keep their terms."), "ok")
    return redirect(url_for("web.manage_listing", model_id=model_id) + "#offers")
