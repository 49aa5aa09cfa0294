"""Pages for people (DESIGN §12): server-rendered Jinja pages, the API's first client.

Page views parse a form, call the same domain services as the API views and render; a rule
(who may see or do what) lives in the services and the scope table of
:mod:`marketplace.accounts.scopes`, never here. A logged-in person acts for their organisation
with exactly the scopes its roles allow, as an API token of that organisation would.

Decisions:

- **Login** is a browser session: an ``HttpOnly``, ``SameSite=Lax`` cookie (``Secure`` in
  production) holding a random token whose SHA-256 is stored in ``web_sessions``, so logging
  out ends the session on the server too. Passwords are the accounts' argon2id hashes; failed
  logins are limited per address and per e-mail (``login_failures_*``).
- **CSRF**: every unsafe request to a page carries Flask-WTF's token (a form field, or the
  ``X-CSRFToken`` header from the page's scripts); the API under ``/api`` takes bearer tokens
  and no cookies, so it needs none.
- **The try-it panel authenticates with a page token.** Its script asks
  ``POST /session/api-token`` (session cookie plus CSRF header) and the server mints an
  ordinary OAuth access token for the session's organisation, stored hashed like every token,
  carrying only ``sandbox:run`` (and only if the organisation's roles allow it), living at most
  ``web_api_token_ttl_s`` and never beyond the session, revoked at logout. The script then calls
  ``/api/v1/.../evaluate`` and ``.../sample`` with it like any client, so the API's rules
  (entitlement, trial counting, wallet checks) are the only ones applied. The API does not
  accept the session cookie: keeping the API cookie-free keeps it out of CSRF's reach.
- **Languages**: Chinese and English (Flask-Babel); ``?lang=`` (remembered in a cookie), else
  the browser's ``Accept-Language`` with Chinese winning a tie. **Times** are shown in the
  viewer's zone: a cookie set by the page's script from the browser, or chosen on the
  preferences page; UTC until then. **Amounts** use the currency's exponent from the ledger.
- **Charts** are SVG drawn on the server (:mod:`marketplace.web.charts`); reading pages work
  without JavaScript, which only adds the try-it panel, upload progress and the time zone.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_babel import Babel
from flask_wtf.csrf import CSRFProtect

from marketplace.web import formatting

LANGUAGES = ("zh", "en")
LANG_COOKIE = "jishi_lang"
TZ_COOKIE = "jishi_tz"
SESSION_COOKIE = "jishi_session"

csrf = CSRFProtect()


def select_locale() -> str:
    """``?lang=``, then the remembered choice, then the browser's preference (zh wins ties)."""
    for candidate in (request.args.get("lang"), request.cookies.get(LANG_COOKIE)):
        if candidate in LANGUAGES:
            return candidate
    return request.accept_languages.best_match(LANGUAGES, default="en") or "en"


def select_timezone() -> str:
    return formatting.zone(request.cookies.get(TZ_COOKIE)).key


def session_cookie_policy(settings: Any) -> dict[str, Any]:
    """Flask's session cookie (it holds the CSRF secret): never readable by scripts, not sent
    on cross-site requests, and only over HTTPS outside development."""
    return {
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": not settings.is_development,
    }


# Paths that never take the session cookie: the API and the OAuth endpoints.
COOKIELESS_PREFIXES = ("/api/", "/oauth/", "/.well-known/")


class PagesSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session (the CSRF secret), opened for the pages only.

    The API and OAuth endpoints take no cookies, so they get Flask's null session: no signing
    serializer is built and no cookie is read for them (a measurable share of a fast
    evaluation), and anything that tried to store in it there would fail loudly.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith(COOKIELESS_PREFIXES):
            return self.make_null_session(app)
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    """Register the pages, Babel, CSRF protection and the cookie policy."""
    settings = app.extensions["settings"]
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", "web/translations")
    app.config["BABEL_DEFAULT_LOCALE"] = "en"
    # CSRF is checked by the pages' blueprint only; the API and OAuth endpoints take no cookies.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config["WTF_CSRF_TIME_LIMIT"] = settings.web_session_ttl_s
    app.config.update(session_cookie_policy(settings))
    app.session_interface = PagesSessionInterface()
    from marketplace.ratelimit import WindowLimiter

    # Failed logins per e-mail and per client address, counted on each node like token failures.
    app.extensions["login_failure_limiter"] = WindowLimiter(
        settings.login_failures_max, settings.login_failures_window_s
    )
    from marketplace.accounts.services import WebSessions

    app.extensions["web_sessions"] = WebSessions(
        session_ttl_s=settings.web_session_ttl_s, page_token_ttl_s=settings.web_api_token_ttl_s
    )
    Babel(app, locale_selector=select_locale, timezone_selector=select_timezone)
    csrf.init_app(app)

    from marketplace.web.views import bp

    app.register_blueprint(bp)
