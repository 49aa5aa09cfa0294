"""The pages' blueprint: the logged-in viewer, CSRF, security headers, and the reading pages
(catalog, model page) with login, registration and preferences.

The dashboards are in :mod:`marketplace.web.dashboard`, the administrator's page in
:mod:`marketplace.web.admin` and the auditor's in :mod:`marketplace.web.audit`; they add their
routes to the same blueprint.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import get_locale, get_timezone
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from sqlmodel import Session
from werkzeug.wrappers import Response as BaseResponse
from wtforms import SelectChoice

from marketplace.accounts import services as accounts
from marketplace.accounts.oauth import forget_token
from marketplace.accounts.schemas import RegisterRequest
from marketplace.accounts.scopes import LICENSES_WRITE, SANDBOX_RUN
from marketplace.accounts.services import Viewer
from marketplace.api import validate
from marketplace.audit.actor import Actor, set_actor
from marketplace.catalog import catalog_service
from marketplace.catalog import services as catalog
from marketplace.catalog.errors import ListingNotFound
from marketplace.catalog.markdown import render_model_card
from marketplace.catalog.schemas import ListingQuery
from marketplace.db import get_session
from marketplace.errors import DomainError, Forbidden, ValidationFailed
from marketplace.ledger import services as ledger
from marketplace.licensing import licensing_service
from marketplace.licensing import services as licensing
from marketplace.licensing.schemas import AcceptTerms
from marketplace.ratelimit import WindowLimiter
from marketplace.web import LANG_COOKIE, LANGUAGES, SESSION_COOKIE, TZ_COOKIE, csrf, formatting
from marketplace.web.forms import (
    AcceptTermsForm,
    EmptyForm,
    LoginForm,
    PreferencesForm,
    RegisterForm,
    ledger_key,
)

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint(
    "web",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CATALOG_PAGE_SIZE = 12
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart headers and the other fields beside a file


# --- the viewer, CSRF and headers ------------------------------------------------------------


def current_viewer() -> Viewer | None:
    return g.get("viewer")


@bp.before_request
def _load_viewer() -> None:
    if request.endpoint == "web.static":
        g.viewer = None  # stylesheets and scripts need no database round trip
        return
    token = request.cookies.get(SESSION_COOKIE, "")
    g.viewer = accounts.web_session_viewer(session=get_session(), token=token) if token else None
    if g.viewer is not None:
        # What a page changes is recorded in the audit journal as done by its organisation.
        set_actor(
            Actor(
                organization_id=g.viewer.organization_id,
                client_id=f"{accounts.PAGE_CLIENT_PREFIX}{g.viewer.session_id}",
                via="web",
            )
        )
    if request.method not in SAFE_METHODS:
        # Bound the body before the CSRF check parses the form: only an upload may be large.
        settings = current_app.extensions["settings"]
        request.max_content_length = {
            "web.upload_version": settings.model_bytes_max + FORM_OVERHEAD_BYTES,
            "web.attach_sample": settings.sample_bytes_max + FORM_OVERHEAD_BYTES,
        }.get(request.endpoint or "", settings.json_body_bytes_max)
        csrf.protect()


@bp.after_request
def _headers(response: Response) -> Response:
    # Pages load nothing from elsewhere; model cards may show https images.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' https: data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if current_viewer() is not None:
        response.headers.setdefault("Cache-Control", "private, no-store")
    lang = request.args.get("lang")
    if lang in LANGUAGES and request.cookies.get(LANG_COOKIE) != lang:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=365 * 86400, samesite="Lax", secure=_secure_cookies()
        )
    return response


def _secure_cookies() -> bool:
    return not current_app.extensions["settings"].is_development


def login_required(view: F) -> F:
    """Anonymous visitors go to the login page and come back afterwards."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_viewer() is None:
            # A form's target may answer only POST: after logging in, come back to the page
            # the form was on instead (``_safe_next`` keeps it on this site).
            if request.method == "GET":
                back = request.full_path.rstrip("?")
            else:
                referrer = urlsplit(request.referrer or "")
                back = referrer.path + (f"?{referrer.query}" if referrer.query else "")
            return redirect(url_for("web.login", next=back or None))
        return view(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def requires(scope: str) -> Viewer:
    """The viewer if their organisation's roles allow ``scope`` (the API's rule); 403 otherwise."""
    viewer = current_viewer()
    if viewer is None or not viewer.may(scope):
        raise Forbidden(_("Your organisation may not do this."), code="insufficient_scope")
    return viewer


@bp.errorhandler(DomainError)
def _domain_error(exc: DomainError) -> tuple[str, int]:
    return render_template("error.html", status=exc.status, code=exc.code, detail=exc.detail), (
        exc.status
    )


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> tuple[str, int]:
    detail = _("The form was not sent from this site or has expired; reload the page and retry.")
    return render_template("error.html", status=400, code="csrf_failed", detail=detail), 400


def error_text(exc: DomainError) -> str:
    """A domain error as one line for a form, with the fields a schema refused."""
    fields = exc.extra.get("errors") or []
    if fields:
        return "; ".join(f"{e['field']}: {e['message']}" for e in fields)
    return exc.detail


@contextlib.contextmanager
def refusal_flashed() -> Iterator[None]:
    """Run a page's action; a refusal is shown on the next page instead of an error page."""
    try:
        yield
    except DomainError as exc:
        flash(error_text(exc), "error")


# --- formatting for templates ------------------------------------------------------------------


def _exponents() -> dict[str, int]:
    if "currency_exponents" not in g:
        g.currency_exponents = ledger.currency_exponents(get_session())
    return g.currency_exponents  # type: ignore[no-any-return]


def viewer_zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(str(get_timezone()))


def money_text(amount_minor: int, currency: str) -> str:
    return formatting.money(
        amount_minor, currency, _exponents().get(currency, 2), str(get_locale() or "en")
    )


def money(amount_minor: int, currency: str) -> Markup:
    text = money_text(amount_minor, currency)
    return Markup('<span class="money" title="{}">{}</span>').format(currency, text)


def when(value: Any) -> Markup:
    if value is None:
        return Markup("—")
    text = formatting.local_time(value, viewer_zone(), str(get_locale() or "en"))
    return Markup('<time datetime="{}">{}</time>').format(value.isoformat(), text)


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {
        "viewer": current_viewer(),
        "money": money,
        "when": when,
        "lang": str(get_locale() or "en"),
        "logout_form": EmptyForm(),
        "current_zone": str(get_timezone()),
        "example_shape": example_shape,
    }


def example_shape(shape: list[Any] | None) -> list[int]:
    """A concrete shape for a signature's placeholder: symbolic or unknown dimensions become 1."""
    return [d if isinstance(d, int) and d > 0 else 1 for d in (shape or [1])]


# --- login, registration, logout ----------------------------------------------------------------


def _login_limiter() -> WindowLimiter:
    return current_app.extensions["login_failure_limiter"]  # type: ignore[no-any-return]


def _safe_next(target: str | None) -> str:
    """Only a path on this site: an open redirect would lend our name to a phishing page."""
    if not target:
        return url_for("web.dashboard")
    # Control characters and spaces have no place in a path: CR and LF would split the
    # Location header, and browsers drop tabs and newlines, turning "/\t/host" into "//host".
    if any(ch <= " " or ch == "\x7f" for ch in target):
        return url_for("web.dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("web.dashboard")
    return target


def _web_sessions() -> accounts.WebSessions:
    sessions: accounts.WebSessions = current_app.extensions["web_sessions"]
    return sessions


def _start_session(user: Any) -> BaseResponse:
    # The response first: nothing about it can fail once the session exists.
    response = redirect(_safe_next(request.args.get("next")))
    sessions = _web_sessions()
    token, g.viewer = sessions.start(session=get_session(), user=user)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=sessions.session_ttl_s,
        httponly=True,
        samesite="Lax",
        secure=_secure_cookies(),
    )
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    form = LoginForm()
    error = None
    status = 200
    if form.validate_on_submit():
        limiter = _login_limiter()
        keys = (f"addr:{request.remote_addr}", f"email:{form.email.data.strip().lower()}")
        wait_s = max(limiter.retry_after_s(k) for k in keys)
        if wait_s:
            error = _("Too many failed logins; try again in %(s)d seconds.", s=wait_s)
            status = 429
        else:
            try:
                user = accounts.authenticate(
                    session=get_session(),
                    email=form.email.data,
                    password=form.password.data,
                    hashing=current_app.extensions["password_hashing"],
                )
                return _start_session(user)
            except DomainError as exc:
                if exc.code == "invalid_credentials":
                    for key in keys:
                        limiter.record(key)
                    error = _("The e-mail address or password is wrong.")
                else:
                    error = exc.detail
                status = exc.status
    elif form.is_submitted():
        status = 422
    return render_template("login.html", form=form, error=error), status


@bp.route("/register", methods=["GET", "POST"])
def register() -> Any:
    form = RegisterForm()
    error = None
    if form.validate_on_submit():
        try:
            body = validate(
                RegisterRequest,
                {
                    "email": form.email.data,
                    "password": form.password.data,
                    "organization_name": form.organization_name.data,
                    "organization_roles": form.organization_roles.data,
                },
            )
            accounts.admit_registration(
                limiter=current_app.extensions["registration_limiter"],
                address=request.remote_addr or "",
            )
            result = accounts.register(
                session=get_session(),
                request=body,
                hashing=current_app.extensions["password_hashing"],
            )
        except DomainError as exc:
            error = error_text(exc)
        else:
            user = accounts.authenticate(
                session=get_session(),
                email=body.email,
                password=body.password,
                hashing=current_app.extensions["password_hashing"],
            )
            response = _start_session(user)
            # The API client's secret exists only in this response: show it once, here.
            page = render_template("welcome.html", client=result.client)
            return Response(page, headers=response.headers)
    status = 422 if form.is_submitted() else 200
    return render_template("register.html", form=form, error=error), status


@bp.post("/logout")
def logout() -> BaseResponse:
    viewer = current_viewer()
    if viewer is not None:
        revoked = accounts.end_web_session(session=get_session(), session_id=viewer.session_id)
        for token_hash in revoked:
            forget_token(token_hash)
    response = redirect(url_for("web.catalog_page"))
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="Lax", secure=_secure_cookies())
    return response


@bp.post("/session/api-token")
def page_token() -> Any:
    """A short-lived ``sandbox:run`` token for the page's try-it script (see the package doc)."""
    viewer = current_viewer()
    if viewer is None:
        return jsonify({"code": "login_required", "detail": _("Log in first.")}), 401
    try:
        token, row = _web_sessions().page_token(
            session=get_session(), viewer=viewer, scopes=[SANDBOX_RUN]
        )
    except DomainError as exc:
        return jsonify({"code": exc.code, "detail": exc.detail}), exc.status
    response = jsonify(
        {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": row.expires_in,
            "scope": row.scope,
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/preferences", methods=["GET", "POST"])
def preferences() -> Any:
    form = PreferencesForm()
    form.timezone.choices = [SelectChoice(z, z) for z in sorted(zoneinfo.available_timezones())]
    if form.validate_on_submit():
        response = redirect(url_for("web.preferences"))
        secure = _secure_cookies()
        response.set_cookie(
            LANG_COOKIE, form.language.data, max_age=365 * 86400, samesite="Lax", secure=secure
        )
        tz = formatting.zone(form.timezone.data).key
        response.set_cookie(TZ_COOKIE, tz, max_age=365 * 86400, samesite="Lax", secure=secure)
        return response
    form.language.data = str(get_locale() or "en")
    form.timezone.data = str(get_timezone())
    return render_template("preferences.html", form=form)


# --- catalog --------------------------------------------------------------------------------------


def _query_args() -> dict[str, str]:
    return {k: v for k, v in request.args.items() if k in ListingQuery.model_fields and v}


@bp.get("/")
def catalog_page() -> Any:
    session = get_session()
    viewer = current_viewer()
    viewer_org = viewer.organization_id if viewer else None
    args = _query_args()
    try:
        query = validate(ListingQuery, {**args, "page_size": CATALOG_PAGE_SIZE})
    except ValidationFailed:
        query = ListingQuery(page_size=CATALOG_PAGE_SIZE)
        args = {}
    page = catalog_service(current_app).search_listings(
        session=session, query=query, viewer_org_id=viewer_org
    )
    summaries = catalog.offer_summaries(session=session, listing_ids=[i.id for i in page.items])
    facets = catalog.facets(session=session, viewer_org_id=viewer_org)
    pages = max(1, -(-page.total // page.page_size))

    def page_url(number: int) -> str:
        values: dict[str, Any] = {**args, "page": number}
        return url_for("web.catalog_page", **values)

    return render_template(
        "catalog.html",
        page=page,
        query=query,
        summaries=summaries,
        facets=facets,
        pages=pages,
        page_url=page_url,
    )


# --- the model page -----------------------------------------------------------------------------


def _offer_forms(offers: list[Any]) -> dict[int, AcceptTermsForm]:
    forms = {}
    for offer in offers:
        form = AcceptTermsForm(prefix=f"offer{offer.id}")
        form.accept_terms_sha256.data = offer.terms_sha256
        # A new key per page view: submitting the same page twice buys once.
        form.idempotency_key.data = uuid.uuid4().hex
        forms[offer.id] = form
    return forms


@bp.get("/models/<int:model_id>")
def model_page(model_id: int) -> Any:
    session = get_session()
    viewer = current_viewer()
    viewer_org = viewer.organization_id if viewer else None
    try:
        detail = catalog.get_listing_detail(
            session=session, listing_id=model_id, viewer_org_id=viewer_org
        )
    except ListingNotFound:
        name = (
            licensing.suspended_for_licensee(
                session=session, organization_id=viewer_org, listing_id=model_id
            )
            if viewer_org is not None
            else None
        )
        if name is None:
            raise
        return render_template("suspended.html", name=name), 403
    licences = []
    if viewer is not None:
        licences = [
            lic
            for lic in licensing.list_licenses(session=session, organization_id=viewer_org or 0)
            if lic.listing_id == model_id
        ]
    is_owner = viewer is not None and viewer.organization_id == detail.vendor.id
    active_licences = [lic for lic in licences if lic.status == "active"]
    can_run = viewer is not None and viewer.may(SANDBOX_RUN) and (is_owner or bool(active_licences))
    return render_template(
        "model.html",
        detail=detail,
        report_keys=_verifier_keys(session) if detail.reports else {},
        terms_html={o.id: Markup(render_model_card(o.terms_md)) for o in detail.offers},
        offer_forms=_offer_forms(detail.offers),
        samples=catalog.samples_of(session=session, listing_id=model_id),
        licences=licences,
        is_owner=is_owner,
        can_buy=viewer is not None and viewer.may(LICENSES_WRITE) and not is_owner,
        can_run=can_run,
        trial_offer_ids={lic.offer_id for lic in licences if lic.kind == "trial"},
    )


def _verifier_keys(session: Session) -> dict[tuple[str, str], str]:
    """The journal's public keys by (name, hash), shown beside the reports they signed: anyone
    reading a published report can check it without an auditor's access to the journal."""
    keys = current_app.extensions["audit_keys"].public_keys(session)
    return {(k.name, k.key_hash): k.verifier_key for k in keys}


def _accepted(offer_id: int) -> tuple[AcceptTermsForm, AcceptTerms | None]:
    form = AcceptTermsForm(prefix=f"offer{offer_id}")
    if not form.validate_on_submit():
        flash(_("Tick the box to accept the terms first."), "error")
        return form, None
    return form, validate(AcceptTerms, {"accept_terms_sha256": form.accept_terms_sha256.data})


def _acceptance_client(viewer: Viewer) -> str:
    """Who accepted, as the terms record keeps it: the page session (like an API client id)."""
    return f"{accounts.PAGE_CLIENT_PREFIX}{viewer.session_id}"


@bp.post("/models/<int:model_id>/offers/<int:offer_id>/trial")
@login_required
def start_trial(model_id: int, offer_id: int) -> BaseResponse:
    viewer = requires(LICENSES_WRITE)
    _form, accepted = _accepted(offer_id)
    if accepted is not None:
        with refusal_flashed():
            lic = licensing.start_trial(
                session=get_session(),
                organization_id=viewer.organization_id,
                offer_id=offer_id,
                accept_terms_sha256=accepted.accept_terms_sha256,
                client_id=_acceptance_client(viewer),
            )
            flash(_("Your trial has started: %(n)s calls.", n=lic.calls_remaining or "∞"), "ok")
    return redirect(url_for("web.model_page", model_id=model_id) + "#try-it")


@bp.post("/models/<int:model_id>/offers/<int:offer_id>/purchase")
@login_required
def purchase(model_id: int, offer_id: int) -> BaseResponse:
    viewer = requires(LICENSES_WRITE)
    form, accepted = _accepted(offer_id)
    if accepted is not None:
        try:
            order, _created = licensing_service(current_app).purchase(
                session=get_session(),
                organization_id=viewer.organization_id,
                offer_id=offer_id,
                accept_terms_sha256=accepted.accept_terms_sha256,
                idempotency_key=ledger_key(form.idempotency_key.data),
                client_id=_acceptance_client(viewer),
            )
            flash(
                _(
                    "Bought: order %(id)s, %(amount)s.",
                    id=order.id,
                    amount=money_text(order.amount_minor, order.currency),
                ),
                "ok",
            )
            return redirect(url_for("web.dashboard") + "#licences")
        except DomainError as exc:
            if exc.code == "insufficient_funds":
                flash(
                    _(
                        "Your wallet lacks %(amount)s for this purchase; top it up first.",
                        amount=money_text(exc.extra["missing_minor"], exc.extra["currency"]),
                    ),
                    "error",
                )
            else:
                flash(error_text(exc), "error")
    return redirect(url_for("web.model_page", model_id=model_id) + "#offers")


from marketplace.web import admin as _admin  # noqa: E402,F401  (adds its routes to bp)
from marketplace.web import audit as _audit  # noqa: E402,F401
from marketplace.web import dashboard as _dashboard  # noqa: E402,F401
