"""Pages through the Flask test client on both databases: login, CSRF, who may see what,
formatting, languages, and that page actions go through the domain's services and rules."""

from __future__ import annotations

import csv
import io
import re

import flask
import pytest
from flask.sessions import NullSession
from sqlmodel import select

from marketplace.accounts.models import OAuthToken, WebSession
from marketplace.catalog.models import Listing
from marketplace.ledger import services as ledger
from marketplace.licensing.models import License, Order, TermsAcceptance
from tests.marketplace.audit.conftest import records as journal_records
from tests.marketplace.licensing.builders import fund_wallet, make_offer, wallet_available
from tests.marketplace.web.conftest import PASSWORD, csrf_of, log_in

HOSTILE_CARD = """# Card
<script>alert('card')</script>
[click me](javascript:alert('link'))
<img src="x" onerror="alert('img')">
![pic](javascript:alert('src'))
"""


def accept_on_page(who, catalog, action: str):
    """Tick "I accept" for the offer on its model page and press Start trial or Buy."""
    page = f"/models/{catalog.listing_id}"
    prefix = f"offer{catalog.offer_id}"
    return who.post(
        f"{page}/offers/{catalog.offer_id}/{action}",
        {f"{prefix}-accept_terms_sha256": catalog.terms_sha256, f"{prefix}-accept": "y"},
        token_from=page,
    )


# --- login, sessions, CSRF -------------------------------------------------------------------


def test_login_sets_a_strict_cookie_and_logout_ends_the_session_on_the_server(
    app, client, make_org, db_session
):
    org = make_org(["buyer"])
    browser = log_in(app, org.email)
    cookie = browser.get_cookie("jishi_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert browser.get("/dashboard").status_code == 200
    stolen = cookie.value
    html = browser.get("/dashboard").get_data(as_text=True)
    assert browser.post("/logout", data={"csrf_token": csrf_of(html)}).status_code == 302
    assert browser.get("/dashboard").status_code == 302  # back to the login page
    # A copy of the cookie taken before logout no longer works either.
    thief = app.test_client()
    thief.set_cookie("jishi_session", stolen)
    assert thief.get("/dashboard").headers["Location"].startswith("/login")
    rows = db_session.exec(select(WebSession)).all()
    assert rows and all(r.revoked_at is not None for r in rows if r.token_hash)
    assert stolen not in {r.token_hash for r in rows}  # only the digest is stored


@pytest.mark.parametrize("email", ["known", "unknown@example.test"])
def test_wrong_credentials_say_the_same_thing(app, make_org, email):
    org = make_org(["buyer"])
    browser = app.test_client()
    html = browser.get("/login").get_data(as_text=True)
    resp = browser.post(
        "/login",
        data={
            "email": org.email if email == "known" else email,
            "password": "Wrong-Password-123",
            "csrf_token": csrf_of(html),
        },
    )
    assert resp.status_code == 401
    assert "The e-mail address or password is wrong." in resp.get_data(as_text=True)
    assert browser.get_cookie("jishi_session") is None


def test_repeated_failed_logins_are_slowed_down(app_config, app, make_org):
    org = make_org(["buyer"])
    app.extensions["login_failure_limiter"].events_max = 3
    browser = app.test_client()
    token = csrf_of(browser.get("/login").get_data(as_text=True))
    codes = [
        browser.post(
            "/login", data={"email": org.email, "password": "Nope-nope-1234", "csrf_token": token}
        ).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # Even the right password waits now: guessing cannot continue at full speed.
    resp = browser.post(
        "/login", data={"email": org.email, "password": PASSWORD, "csrf_token": token}
    )
    assert resp.status_code == 429


def test_login_redirects_only_to_this_site(app, make_org):
    org = make_org(["buyer"])
    browser = app.test_client()
    token = csrf_of(browser.get("/login").get_data(as_text=True))
    for target, expected in [
        ("//evil.example/x", "/dashboard"),
        ("https://evil.example", "/dashboard"),
        ("/models/1", "/models/1"),
        # Each of these was a 500 after the session had been stored: a header cannot hold CR/LF.
        ("/%0d%0aX-Injected:%20a", "/dashboard"),
        ("/%0aX-Injected:%20a", "/dashboard"),
        ("/%09/evil.example", "/dashboard"),
        ("/a%7fb", "/dashboard"),
    ]:
        fresh = app.test_client()
        token = csrf_of(fresh.get("/login").get_data(as_text=True))
        resp = fresh.post(
            f"/login?next={target}",
            data={"email": org.email, "password": PASSWORD, "csrf_token": token},
        )
        assert resp.status_code == 302, (target, resp.status_code)
        assert resp.headers["Location"] == expected
        assert "X-Injected" not in resp.headers


@pytest.mark.parametrize(
    ("path", "roles"),
    [
        ("/login", None),
        ("/register", None),
        ("/logout", ["buyer"]),
        ("/dashboard/top-up", ["buyer"]),
        ("/dashboard/listings/new", ["vendor"]),
        ("/session/api-token", ["buyer"]),
        ("/preferences", None),
    ],
)
def test_a_form_posted_without_its_csrf_token_is_refused(app, person, path, roles):
    browser = person(roles).browser if roles else app.test_client()
    resp = browser.post(path, data={"email": "a@b.test", "password": "x", "amount": "10"})
    assert resp.status_code == 400
    assert 'data-code="csrf_failed"' in resp.get_data(as_text=True)
    if roles:
        assert browser.get("/dashboard").status_code == 200  # still logged in


def test_a_page_action_without_csrf_changes_nothing(app, person, db_session):
    buyer = person(["buyer"])
    resp = buyer.browser.post("/dashboard/top-up", data={"amount": "100", "currency": "CNY"})
    assert resp.status_code == 400
    assert wallet_available(db_session, buyer.org.id) == 0


def test_registration_logs_in_and_shows_the_client_secret_once(app, db_session):
    browser = app.test_client()
    token = csrf_of(browser.get("/register").get_data(as_text=True))
    resp = browser.post(
        "/register",
        data={
            "email": "New.Vendor@Example.test",
            "password": PASSWORD,
            "organization_name": "New Vendor 新供应商",
            "organization_roles": ["vendor"],
            "csrf_token": token,
        },
    )
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert re.search(r"jcs_[\w-]{20,}", html)
    assert browser.get("/dashboard/listings/new").status_code == 200
    weak = app.test_client()
    token = csrf_of(weak.get("/register").get_data(as_text=True))
    resp = weak.post(
        "/register",
        data={"email": "x@example.test", "password": "short", "organization_name": "X",
              "organization_roles": ["buyer"], "csrf_token": token},
    )  # fmt: skip
    assert resp.status_code == 422 and "password" in resp.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/api/v1/me", "/oauth/token", "/.well-known/openid"])
def test_the_api_and_oauth_open_no_cookie_session(app, path):
    # The session cookie holds only the pages' CSRF secret; these paths never read it.
    with app.test_request_context(path, headers={"Cookie": "session=forged"}):
        assert isinstance(flask.session, NullSession)
    with app.test_request_context("/login"):
        assert not isinstance(flask.session, NullSession)


def test_production_cookies_are_secure(app, make_org):
    """A production app cannot be built in the tests (offline payments are refused there and no
    real gateway runs here), so the test app is given production's settings, as the CLI's
    production tests do; the cookie policy follows the settings."""
    import dataclasses

    from marketplace.web import session_cookie_policy

    production = dataclasses.replace(
        app.extensions["settings"], env="production", payments="stripe"
    )
    assert session_cookie_policy(production) == {
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": True,
    }
    app.extensions["settings"] = production
    app.config.update(session_cookie_policy(production))
    org = make_org(["buyer"])
    browser = app.test_client()
    page = browser.get("/login", base_url="https://localhost")
    token = csrf_of(page.get_data(as_text=True))
    resp = browser.post(
        "/login",
        data={"email": org.email, "password": PASSWORD, "csrf_token": token},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/login"},
    )
    cookies = resp.headers.getlist("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith("jishi_session="))
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie
    assert "SameSite=Lax" in session_cookie
    assert all("Secure" in c for c in page.headers.getlist("Set-Cookie"))
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


# --- who may see what --------------------------------------------------------------------------


def test_no_page_is_reachable_by_a_role_that_should_not_see_it(
    app, person, platform_person, db_session
):
    vendor, other_vendor, buyer = person(["vendor"]), person(["vendor"]), person(["buyer"])
    admin, auditor = platform_person("admin"), platform_person("auditor")
    catalog = make_offer(db_session, vendor.org.id)
    own = f"/dashboard/listings/{catalog.listing_id}"
    expectations = {
        "/admin": {admin: 200, vendor: 403, buyer: 403, auditor: 403},
        own: {vendor: 200, other_vendor: 404, buyer: 403, admin: 403, auditor: 403},
        "/dashboard/listings/new": {vendor: 200, buyer: 403, auditor: 403},
        "/dashboard/statement.csv": {buyer: 200, vendor: 200, auditor: 200},
    }
    for path, by_person in expectations.items():
        for who, status in by_person.items():
            assert who.browser.get(path).status_code == status, (path, who.email)
        assert app.test_client().get(path).status_code == 302  # anonymous: to the login page
    # Actions too, not only pages: a buyer cannot suspend, a vendor cannot refund.
    listing = f"/admin/listings/{catalog.listing_id}/suspend"
    assert buyer.post(listing).status_code == 403
    assert vendor.post("/admin/refunds", {"order_id": "1"}).status_code == 403
    assert (
        other_vendor.post(f"{own}/offers", {"name": "x"}, token_from="/dashboard").status_code
        == 404
    )
    assert db_session.get(Listing, catalog.listing_id).status == "active"
    assert admin.post(listing).status_code == 302
    db_session.expire_all()
    assert db_session.get(Listing, catalog.listing_id).status == "suspended"


def test_a_suspended_model_is_explained_to_its_licensees_and_hidden_from_others(
    app, client, person, platform_person, db_session
):
    vendor, buyer, stranger = person(["vendor"]), person(["buyer"]), person(["buyer"])
    catalog = make_offer(db_session, vendor.org.id, trial_calls=5)
    page = f"/models/{catalog.listing_id}"
    assert accept_on_page(buyer, catalog, "trial").status_code == 302
    platform_person("admin").post(f"/admin/listings/{catalog.listing_id}/suspend")
    notice = buyer.browser.get(page)
    assert notice.status_code == 403 and "suspended" in notice.get_data(as_text=True)
    assert stranger.browser.get(page).status_code == 404
    assert client.get(page).status_code == 404
    assert vendor.browser.get(page).status_code == 200


def test_hostile_markdown_in_a_model_card_renders_harmless(app, client, person):
    vendor = person(["vendor"])
    resp = client.post(
        "/api/v1/models",
        json={"name": "Hostile", "task": "test", "description_md": HOSTILE_CARD},
        headers=vendor.org.headers("models:write"),
    )
    html = client.get(f"/models/{resp.json['id']}").get_data(as_text=True)
    card = html.split('class="markdown">', 1)[1].split("</div>", 1)[0]
    tags = _tags(card)
    assert {name for name, _attrs in tags} <= {"h1", "p", "a", "img"}
    for _name, attrs in tags:
        for attr, value in attrs:
            assert not attr.startswith("on")
            assert not (value or "").strip().lower().startswith("javascript")
    assert "&lt;script&gt;" in card  # shown as text, not run


def _tags(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    from html.parser import HTMLParser

    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Collect().feed(html)
    return found


# --- formatting and languages -------------------------------------------------------------------


def test_chinese_first_when_the_browser_asks_and_a_choice_is_remembered(client):
    zh = client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    assert "搜索" in zh.get_data(as_text=True) and 'lang="zh-Hans"' in zh.get_data(as_text=True)
    en = client.get("/", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert ">Search<" in en.get_data(as_text=True)
    chosen = client.get("/?lang=en", headers={"Accept-Language": "zh-CN"})
    assert ">Search<" in chosen.get_data(as_text=True)
    assert "jishi_lang=en" in chosen.headers["Set-Cookie"]
    later = client.get("/", headers={"Accept-Language": "zh-CN"})
    assert ">Search<" in later.get_data(as_text=True)


def test_prices_per_currency_and_times_in_the_viewers_zone(app, client, person, db_session):
    vendor = person(["vendor"])
    cny = make_offer(db_session, vendor.org.id, price_minor=123_450, trial_calls=3)
    make_offer(
        db_session, vendor.org.id, listing_id=cny.listing_id, currency="JPY", price_minor=1235
    )
    client.set_cookie("jishi_tz", "Asia/Shanghai")
    html = client.get(f"/models/{cny.listing_id}?lang=en").get_data(as_text=True)
    assert "¥1,234.50" in html and "¥1,235<" in html
    created = db_session.get(Listing, cny.listing_id).updated_at
    local = created.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Shanghai"))
    assert f"{local:%Y-%m-%d %H:%M} CST" in html
    catalog_html = client.get("/?lang=en").get_data(as_text=True)
    assert 'From <span class="money" title="JPY">¥1,235</span>' in catalog_html
    assert 'class="badge trial"' in catalog_html


def test_catalog_search_filters_sort_and_pages(app, client, person):
    vendor = person(["vendor"], name="Acme 视觉")
    headers = vendor.org.headers("models:write")
    for i in range(14):
        client.post(
            "/api/v1/models",
            json={"name": f"Model {i:02d}", "task": "segmentation" if i % 2 else "ocr",
                  "tags": ["steel"] if i < 3 else [], "filing_number": "BJ-2026-7" if i == 5 else None},
            headers=headers,
        )  # fmt: skip
    first = client.get("/?lang=en").get_data(as_text=True)
    assert "14 models" in first and "Page 1 of 2" in first and 'rel="next"' in first
    second = client.get("/?page=2&lang=en").get_data(as_text=True)
    assert second.count('class="card model-card"') == 2
    ocr = client.get("/?task=ocr&q=Model&sort=name&lang=en").get_data(as_text=True)
    names = re.findall(r">(Model \d\d)</a></h2>", ocr)
    assert names == sorted(names) and len(names) == 7
    tagged = client.get("/?tag=steel&lang=en").get_data(as_text=True)
    assert "3 models" in tagged
    assert "Filing number: BJ-2026-7" in client.get("/?q=Model+05&lang=en").get_data(as_text=True)
    by_vendor = client.get(f"/?vendor={vendor.org.id}&lang=en").get_data(as_text=True)
    assert "14 models" in by_vendor and "Acme 视觉" in by_vendor
    # A malformed query is not an error page, just the whole catalog.
    assert client.get("/?page=-3&sort=evil").status_code == 200


# --- actions go through the services -------------------------------------------------------------


def test_trial_and_purchase_from_the_model_page(app, person, db_session):
    vendor, buyer = person(["vendor"]), person(["buyer"])
    catalog = make_offer(db_session, vendor.org.id, price_minor=10_000, trial_calls=3)
    page = f"/models/{catalog.listing_id}"
    prefix = f"offer{catalog.offer_id}"
    accept = {f"{prefix}-accept_terms_sha256": catalog.terms_sha256, f"{prefix}-accept": "y"}
    unticked = buyer.post(
        f"{page}/offers/{catalog.offer_id}/trial",
        {f"{prefix}-accept_terms_sha256": catalog.terms_sha256},
        token_from=page,
    )
    assert unticked.status_code == 302
    assert (
        db_session.exec(select(License).where(License.organization_id == buyer.org.id)).all() == []
    )
    buyer.post(f"{page}/offers/{catalog.offer_id}/trial", accept, token_from=page)
    (trial,) = db_session.exec(select(License).where(License.organization_id == buyer.org.id)).all()
    assert trial.kind == "trial" and trial.calls_remaining == 3
    acceptance = db_session.exec(select(TermsAcceptance)).all()[-1]
    assert acceptance.client_id.startswith("web-session:")
    # The audit journal records the page's organisation and session as the actor.
    (started,) = [r for r in journal_records(db_session) if r["kind"] == "trial.started"]
    assert started["actor"] == {
        "organization_id": buyer.org.id, "client_id": acceptance.client_id, "via": "web",
    }  # fmt: skip
    poor = buyer.post(
        f"{page}/offers/{catalog.offer_id}/purchase",
        {**accept, f"{prefix}-idempotency_key": "k1"},
        token_from=page,
    )
    assert (
        "lacks" in buyer.browser.get(page + "?lang=en").get_data(as_text=True)
        or poor.status_code == 302
    )
    assert db_session.exec(select(Order)).all() == []
    fund_wallet(db_session, buyer.org.id, 15_000)
    # As long a key as the API takes: with the page's prefix it once overflowed the column.
    twice = {**accept, f"{prefix}-idempotency_key": "k" * 128}
    for _ in range(2):
        resp = buyer.post(f"{page}/offers/{catalog.offer_id}/purchase", twice, token_from=page)
        assert resp.status_code == 302
    assert len(db_session.exec(select(Order)).all()) == 1  # the same page submitted twice
    assert wallet_available(db_session, buyer.org.id) == 5_000
    html = buyer.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert "¥100.00" in html and "perpetual" in html
    assert ledger.check_invariants(db_session) == []


def test_top_up_and_statement_csv(app, person, db_session):
    buyer = person(["buyer"])
    assert (
        buyer.post("/dashboard/top-up", {"amount": "12.345", "currency": "CNY"}).status_code == 302
    )
    assert wallet_available(db_session, buyer.org.id) == 0  # three decimals refused
    buyer.post(
        "/dashboard/top-up", {"amount": "1234.50", "currency": "CNY", "idempotency_key": "a"}
    )
    long_key = {"amount": "1235", "currency": "JPY", "idempotency_key": "b" * 128}
    for _ in range(2):
        assert buyer.post("/dashboard/top-up", long_key).status_code == 302
    assert wallet_available(db_session, buyer.org.id) == 123_450
    assert wallet_available(db_session, buyer.org.id, "JPY") == 1235
    html = buyer.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert "¥1,234.50" in html and "¥1,235" in html and "simulated" in html
    resp = buyer.browser.get("/dashboard/statement.csv")
    assert resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert {(r["currency"], r["amount"], r["side"]) for r in rows} == {
        ("CNY", "1234.50", "credit"), ("JPY", "1235", "credit")
    }  # fmt: skip
    assert all(r["kind"] == "top_up" for r in rows)
    # Midnight of day one in a zone east of UTC is before the calendar in UTC: it was a 500.
    buyer.browser.set_cookie("jishi_tz", "Asia/Shanghai")
    for query in ["from=0001-01-01", "to=0001-01-01", "from=2000-02-30"]:
        resp = buyer.browser.get(f"/dashboard/statement.csv?{query}")
        assert resp.status_code == 422, (query, resp.status_code)
    assert buyer.browser.get("/dashboard/statement.csv?from=2000-01-01").status_code == 200


def test_csv_cells_cannot_become_formulas():
    from marketplace.web.dashboard import _csv_safe

    assert _csv_safe("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _csv_safe("-1+2") == "'-1+2" and _csv_safe("refund of order 3") == "refund of order 3"


def test_admin_refunds_an_order_from_the_page(app, person, platform_person, db_session):
    vendor, buyer = person(["vendor"]), person(["buyer"])
    catalog = make_offer(db_session, vendor.org.id, price_minor=10_000)
    fund_wallet(db_session, buyer.org.id, 10_000)
    accept_on_page(buyer, catalog, "purchase")
    (order,) = db_session.exec(select(Order)).all()
    admin = platform_person("admin")
    # Digits a person did not mean as money (full-width, Arabic-Indic) refunded ¥1.00 each;
    # a long reason was answered "Type the order number."
    for amount, reason in [("１", "wide"), ("١", "arabic"), ("1", "x" * 501)]:
        admin.post(
            "/admin/refunds",
            {"order_id": str(order.id), "amount": amount, "reason": reason},
            token_from="/admin",
        )
    page = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert "at most 500 characters" in page
    db_session.refresh(order)
    assert order.refunded_minor == 0
    admin.post(
        "/admin/refunds",
        {"order_id": str(order.id), "amount": "25.00", "reason": "broken"},
        token_from="/admin",
    )
    db_session.refresh(order)
    assert order.refunded_minor == 2_500 and order.status == "partially_refunded"
    assert wallet_available(db_session, buyer.org.id) == 2_500
    sales = vendor.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert f"#{order.id}" in sales and "¥25.00" in sales


def test_admin_sees_sandbox_health_only_when_asked_to_start_it(app, platform_person):
    admin = platform_person("admin")
    html = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert "has not started yet" in html
    assert not app.extensions["sandbox_pool"].started


# --- the page token -----------------------------------------------------------------------------


def _page_token(who, page="/") -> dict:
    resp = who.browser.post("/session/api-token", headers={"X-CSRFToken": who.csrf(page)})
    return resp


def test_a_page_token_can_do_no_more_than_run_models_its_organisation_may_run(
    app, client, person, platform_person, db_session
):
    vendor, buyer = person(["vendor"]), person(["buyer"])
    catalog = make_offer(db_session, vendor.org.id, price_minor=10_000, trial_calls=2)
    resp = _page_token(buyer)
    assert resp.status_code == 200 and resp.json["scope"] == "sandbox:run"
    assert resp.json["expires_in"] <= app.extensions["settings"].web_api_token_ttl_s
    bearer = {"Authorization": f"Bearer {resp.json['access_token']}"}
    stored = db_session.exec(
        select(OAuthToken).where(OAuthToken.organization_id == buyer.org.id)
    ).all()
    assert resp.json["access_token"] not in {t.access_token_hash for t in stored}
    refused = [
        client.post("/api/v1/models", json={"name": "x", "task": "t"}, headers=bearer),
        client.post(
            f"/api/v1/offers/{catalog.offer_id}/trial",
            json={"accept_terms_sha256": catalog.terms_sha256},
            headers=bearer,
        ),
        client.post("/api/v1/wallet/top-ups", json={"amount_minor": 1, "currency": "CNY"},
                    headers={**bearer, "Idempotency-Key": "x"}),
        client.get("/api/v1/ledger/statement", headers=bearer),
        client.get("/api/v1/orders", headers=bearer),
        client.post(f"/api/v1/organizations/{buyer.org.id}/clients", json={}, headers=bearer),
    ]  # fmt: skip
    assert [r.json["code"] for r in refused] == ["insufficient_scope"] * 6
    # It may run only what its organisation is entitled to: no trial yet, so no evaluation.
    version = db_session.get(
        __import__("marketplace.catalog.models", fromlist=["ModelVersion"]).ModelVersion,
        catalog.version_id,
    )
    evaluate = client.post(
        f"/api/v1/models/{catalog.listing_id}/versions/{version.version}/evaluate",
        json={"inputs": {"x": {"dtype": "float32", "shape": [1], "data": [1]}}},
        headers=bearer,
    )
    assert evaluate.status_code == 403 and evaluate.json["code"] == "no_entitlement"
    sample = client.get(
        f"/api/v1/models/{catalog.listing_id}/versions/{version.version}/sample", headers=bearer
    )
    assert sample.json["code"] == "no_entitlement"
    # Logging out revokes it.
    buyer.post("/logout", token_from="/dashboard")
    assert client.get("/api/v1/me", headers=bearer).status_code == 401
    # Organisations whose roles do not run models get none; anonymous visitors neither.
    auditor = platform_person("auditor")
    assert _page_token(auditor).json["code"] == "scope_not_allowed"
    anonymous = app.test_client()
    token = csrf_of(anonymous.get("/login").get_data(as_text=True))
    assert anonymous.post("/session/api-token", headers={"X-CSRFToken": token}).status_code == 401


# --- vendor pages -----------------------------------------------------------------------------------


def test_vendor_creates_a_listing_and_an_offer_and_retires_it(app, person, db_session):
    vendor = person(["vendor"])
    resp = vendor.post(
        "/dashboard/listings/new",
        {"name": "Rail crack finder 轨道裂纹", "task": "Defect-Detection", "tags": "rail, steel",
         "summary": "Finds cracks", "description_md": "# Hi"},
        token_from="/dashboard/listings/new",
    )  # fmt: skip
    assert resp.status_code == 302
    listing = db_session.exec(select(Listing).where(Listing.organization_id == vendor.org.id)).one()
    assert listing.task == "defect-detection" and listing.tag_list == ["rail", "steel"]
    manage = f"/dashboard/listings/{listing.id}"
    bad = vendor.post(f"{manage}/offers", {"name": "Bad", "kind": "per_inference", "currency": "CNY",
                                           "price": "0", "royalty_per_1k": "0", "trial_calls": "0",
                                           "trial_days": "0"}, token_from=manage)  # fmt: skip
    assert bad.status_code == 302
    assert "royalty_per_1k_minor" in vendor.browser.get(manage).get_data(as_text=True)
    vendor.post(f"{manage}/offers", {"name": "Metered", "kind": "per_inference", "currency": "JPY",
                                     "price": "0", "royalty_per_1k": "50", "trial_calls": "10",
                                     "trial_days": "7", "commercial_use": "y"}, token_from=manage)  # fmt: skip
    detail = app.test_client().get(f"/api/v1/models/{listing.id}").json
    (offer,) = detail["offers"]
    assert (offer["currency"], offer["royalty_per_1k_minor"], offer["trial_calls"]) == (
        "JPY",
        50,
        10,
    )
    vendor.post(f"{manage}/offers/{offer['id']}/retire", token_from=manage)
    assert app.test_client().get(f"/api/v1/models/{listing.id}").json["offers"] == []


def test_vendor_dashboard_charts_sales(app, person, db_session):
    vendor, buyer = person(["vendor"]), person(["buyer"])
    catalog = make_offer(db_session, vendor.org.id, price_minor=10_000)
    fund_wallet(db_session, buyer.org.id, 10_000)
    accept_on_page(buyer, catalog, "purchase")
    html = vendor.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert html.count('<svg class="chart"') == 2  # sales in CNY and metered calls
    assert 'aria-label="Sales per day (CNY): ¥100.00"' in html
    assert "¥90.00" in html  # the vendor's share after the 10 % fee, owed to the vendor


def test_uploads_from_the_page_with_and_without_javascript(app, person, db_session):
    from tests.onnx_models import external_initializer, relu_bytes

    vendor = person(["vendor"])
    catalog = make_offer(db_session, vendor.org.id)
    manage = f"/dashboard/listings/{catalog.listing_id}"

    def upload(version: str, data: bytes, **headers: str):
        return vendor.post(
            f"{manage}/versions",
            {"version": version, "model": (io.BytesIO(data), "m.onnx")},
            token_from=manage,
            content_type="multipart/form-data",
            headers=headers,
        )

    scripted = upload("2.0.0", relu_bytes(), Accept="application/json")
    assert scripted.status_code == 201, scripted.json
    assert scripted.json["version"] == "2.0.0" and scripted.json["location"].startswith(manage)
    assert scripted.json["inputs"][0]["dtype"] == "float32"
    again = upload("2.0.0", relu_bytes(), Accept="application/json")
    assert again.status_code == 409 and again.json["code"] == "version_exists"
    rejected = upload("3.0.0", external_initializer("weights.bin"), Accept="application/json")
    assert rejected.status_code == 422 and rejected.json["code"] == "model_rejected"
    assert rejected.json["findings"]
    plain = upload("4.0.0", relu_bytes())
    assert plain.status_code == 302
    html = vendor.browser.get(manage + "?lang=en").get_data(as_text=True)
    assert "Version 4.0.0 published." in html
    listed = app.test_client().get(f"/api/v1/models/{catalog.listing_id}/versions").json
    assert {"2.0.0", "4.0.0"} <= {v["version"] for v in listed["items"]}
    assert "3.0.0" not in {v["version"] for v in listed["items"]}


def test_admin_verifies_an_organisation_from_the_page(app, client, person, platform_person):
    buyer, vendor = person(["buyer"]), person(["vendor"])
    admin = platform_person("admin")
    html = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert buyer.org.email.split("@")[0] in html or f"<td>{buyer.org.id}</td>" in html
    assert vendor.post(f"/admin/organizations/{buyer.org.id}/verify").status_code == 403
    me = client.get("/api/v1/me", headers=buyer.org.headers()).json
    assert me["organization"]["verified"] is False
    resp = admin.post(f"/admin/organizations/{buyer.org.id}/verify", token_from="/admin")
    assert resp.status_code == 302
    me = client.get("/api/v1/me", headers=buyer.org.headers()).json
    assert me["organization"]["verified"] is True
    verified = admin.browser.get("/admin?verified=yes&lang=en").get_data(as_text=True)
    assert f"<td>{buyer.org.id}</td>" in verified
    missing = admin.post("/admin/organizations/999999/verify", token_from="/admin")
    assert missing.status_code == 302  # reported on the page, nothing changed


def test_a_form_posted_after_the_session_ended_comes_back_to_its_page(app):
    # The form's target answers only POST: logging in must not lead back to it (405), but to
    # the page the form was on.
    browser = app.test_client()
    token = csrf_of(browser.get("/login").get_data(as_text=True))
    form = {"from_seq": "0", "csrf_token": token}
    resp = browser.post(
        "/audit/export", data=form, headers={"Referer": "http://localhost/audit?tab=export"}
    )
    assert resp.status_code == 302
    assert resp.headers["Location"].endswith("/login?next=/audit?tab%3Dexport")
    resp = browser.post("/audit/export", data=form)
    assert resp.headers["Location"].endswith("/login")
