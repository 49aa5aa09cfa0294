"""The OAuth2 authorization server and resource protector (Authlib), all in this module.

Only the ``client_credentials`` grant is registered: API clients belong to organisations and
act for them. Access tokens and client secrets are stored as SHA-256 digests; the plain values
exist only in the response that creates them.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import unquote

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.integrations.flask_oauth2 import current_token as _authlib_current_token
from authlib.integrations.flask_oauth2.signals import token_authenticated
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InsecureTransportError,
    InvalidClientError,
    InvalidScopeError,
    OAuth2Error,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from flask import Blueprint, Flask, Response, current_app, g, json, request
from sqlmodel import select
from werkzeug.datastructures import Authorization
from werkzeug.exceptions import RequestEntityTooLarge

from marketplace.accounts.models import OAuthClient, OAuthToken, Organization, hash_secret
from marketplace.accounts.scopes import ALL_SCOPES, EXPLICIT_ONLY_SCOPES, split_scope
from marketplace.accounts.services import revoke_tokens
from marketplace.db import begin_write, get_session, utcnow
from marketplace.errors import Forbidden, Unauthorized
from marketplace.ratelimit import WindowLimiter
from marketplace.ttlcache import TTLCache


def _query_client(client_id: str) -> OAuthClient | None:
    client = (
        get_session().exec(select(OAuthClient).where(OAuthClient.client_id == client_id)).first()
    )
    if client is None or client.revoked_at is not None:
        return None
    return client


def _organization_of(client: OAuthClient) -> Organization | None:
    org = get_session().get(Organization, client.organization_id)
    if org is None or org.suspended:
        return None
    return org


def _save_token(token: dict[str, Any], oauth_request: Any) -> None:
    client: OAuthClient = oauth_request.client
    session = get_session()
    begin_write(session)
    # Read the client again under its row lock: a revocation that committed since the secret
    # was checked wins, and one that starts now waits for this token and then revokes it too.
    current_client = session.exec(
        select(OAuthClient)
        .where(OAuthClient.client_id == client.client_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if current_client is None or current_client.revoked_at is not None:
        session.rollback()
        raise InvalidClientError(description="The client has been revoked.", status_code=401)
    current_client.last_used_at = utcnow()
    session.add(current_client)
    session.add(
        OAuthToken(
            access_token_hash=hash_secret(token["access_token"]),
            client_id=client.client_id,
            organization_id=client.organization_id,
            scope=token.get("scope", ""),
            expires_in=int(token["expires_in"]),
        )
    )
    session.commit()


def _query_token(token_string: str) -> OAuthToken | None:
    return (
        get_session()
        .exec(select(OAuthToken).where(OAuthToken.access_token_hash == hash_secret(token_string)))
        .first()
    )


# RFC 6749 §3.3: a scope token is printable ASCII without space, quote or backslash; the same
# characters are all an error_description may hold (§5.2), so only such names are echoed
# (Authlib raises on any other, which was a 500).
_SCOPE_NAME_CHARS_MAX = 64  # longer than any scope the marketplace grants
_SCOPE_TOKEN = re.compile(rf"[\x21\x23-\x5b\x5d-\x7e]{{1,{_SCOPE_NAME_CHARS_MAX}}}")
_SCOPES_NAMED_MAX = 5


def _scope_refusal(refused: list[str]) -> str:
    named = [s for s in refused if _SCOPE_TOKEN.fullmatch(s)][:_SCOPES_NAMED_MAX]
    if not named:
        return "Scope not allowed: scopes are short printable ASCII names without quotes."
    more = len(refused) - len(named)
    return f"Scope not allowed: {' '.join(named)}" + (f" (and {more} more)" if more else "")


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_requested_scope(self) -> None:
        # A token carries only scopes that both the client was given and the organisation's
        # current roles allow; asking for anything else is refused, not silently narrowed.
        client: OAuthClient = self.request.client
        org = _organization_of(client)
        if org is None:
            raise InvalidScopeError(description="The client's organization cannot hold tokens.")
        requested = split_scope(self.request.payload.scope)
        permitted = set(split_scope(client.scope)) & org.allowed_scopes
        refused = [s for s in requested if s not in permitted]
        if refused:
            raise InvalidScopeError(description=_scope_refusal(refused))
        if not requested and not (permitted - EXPLICIT_ONLY_SCOPES):
            raise InvalidScopeError(description="The client holds no scopes.")


class _Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> OAuthToken | None:
        return _query_token(token_string)

    def revoke_token(self, token: OAuthToken, oauth_request: Any) -> None:
        revoke_tokens(
            session=get_session(),
            client_id=token.client_id,
            access_token_hash=token.access_token_hash,
        )
        forget_token(token.access_token_hash)


class _Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> OAuthToken | None:
        return _query_token(token_string)

    def check_permission(self, token: OAuthToken, client: OAuthClient, oauth_request: Any) -> bool:
        # Any client of the organisation that owns the token may introspect it.
        return token.organization_id == client.organization_id

    def introspect_token(self, token: OAuthToken) -> dict[str, Any]:
        return {
            "active": True,
            "client_id": token.client_id,
            "token_type": "Bearer",
            "scope": token.scope,
            "sub": f"org:{token.organization_id}",
            "iat": int(token.issued_at.timestamp()),
            "exp": token.get_expires_at(),
            "iss": request.host_url.rstrip("/"),
        }


class _BearerValidator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> OAuthToken | None:
        # A verified token is served from this process's cache for token_cache_ttl_s: no
        # database round trip on the hot path. Revocation through this process drops it at
        # once; a revocation or suspension made elsewhere is seen within that bound.
        digest = hash_secret(token_string)
        cache: TTLCache[str, OAuthToken] = current_app.extensions["token_cache"]
        cached = cache.get(digest)
        if cached is not None:
            return cached
        # One query otherwise: the token and whether its organisation may act.
        session = get_session()
        row = session.exec(
            select(OAuthToken, Organization.suspended)
            .join(Organization, Organization.id == OAuthToken.organization_id)  # type: ignore[arg-type]
            .where(OAuthToken.access_token_hash == digest)
        ).first()
        # End the read at once: the request may run for long (an evaluation) without a
        # database connection, and its own units of work start afresh.
        session.commit()
        if row is None or row[1]:
            return None
        token = row[0]
        if not token.revoked and not token.is_expired():
            # A copy that belongs to no session: a row would be expired by the next rollback.
            cache.put(digest, OAuthToken(**token.model_dump()))
        return token


def forget_token(access_token_hash: str) -> None:
    """Stop serving a token from this process's cache (after a revocation)."""
    current_app.extensions["token_cache"].discard(access_token_hash)


def forget_client_tokens(client_id: str) -> None:
    """Stop serving any token of ``client_id`` from this process's cache (client revoked)."""
    cache: TTLCache[str, OAuthToken] = current_app.extensions["token_cache"]
    cache.discard_where(lambda _digest, token: token.client_id == client_id)


class _HeadersOnly:
    """What Authlib's bearer check reads of a request: its headers."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers


class _Protector(ResourceProtector):
    def acquire_token(self, scopes: Any = None, **kwargs: Any) -> Any:
        required = [scopes] if isinstance(scopes, str) else list(scopes or [])
        # Kept for the error response, which names the scope the operation needs.
        g.jishi_required_scopes = required
        claims = {k: [v] if isinstance(v, str) else v for k, v in kwargs.items()}
        # Authlib's own acquire_token first builds a whole OAuth request (the URL decoded to an
        # IRI, a copy of every header, the body's form) that a bearer check never reads; on a
        # fast evaluation that cost more than the check. The checks are still Authlib's:
        # the Authorization header's parsing, the validator's expiry, revocation and scopes.
        token = self.validate_request(required, _HeadersOnly(request.headers), **claims)
        token_authenticated.send(self, token=token)
        g.authlib_server_oauth2_token = token
        return token

    def raise_error_response(self, error: OAuth2Error) -> None:
        # Inside /api every error is problem+json; keep RFC 6750's WWW-Authenticate header and
        # the no-store caching, but not Authlib's own Content-Type (application/json).
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        if error.error == "insufficient_scope":
            needed = g.get("jishi_required_scopes") or []
            # RFC 6750 §3: the challenge names the error and the scope that would do.
            headers["WWW-Authenticate"] = (
                f'Bearer error="insufficient_scope", scope="{" ".join(needed)}"'
            )
            raise Forbidden(
                f"This operation needs a token with the {' or '.join(needed)} scope; "
                "request one with scope=... at /oauth/token."
                if needed
                else "The token lacks the scope this operation needs.",
                code="insufficient_scope",
                headers=headers,
                extra={"required_scopes": needed},
            )
        if error.error == "missing_authorization":
            headers = {"WWW-Authenticate": 'Bearer realm="jishi"'}
            raise Unauthorized("A bearer token is required.", code="missing_token", headers=headers)
        # RFC 6750 §3.1 has no "unsupported_token_type" (Authlib's answer to a Basic header
        # or a bare "Bearer"): every other refusal is an invalid token.
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        raise Unauthorized(
            "The token is invalid, expired or revoked.", code="invalid_token", headers=headers
        )


require_oauth = _Protector()
require_oauth.register_token_validator(_BearerValidator())


class CurrentToken:
    """Typed access to the request's verified token."""

    @property
    def token(self) -> OAuthToken:
        token = _authlib_current_token._get_current_object()
        if token is None:
            raise Unauthorized("A bearer token is required.", code="missing_token")
        return token  # type: ignore[no-any-return]

    @property
    def organization_id(self) -> int:
        return self.token.organization_id

    @property
    def scopes(self) -> list[str]:
        return split_scope(self.token.scope)


current = CurrentToken()


def _claimed_client_id() -> str:
    """The client id the request claims, decoded as Authlib decodes it before the lookup.

    RFC 6749 §2.3.1 form-encodes Basic credentials, so ``jc%5Fx`` and ``jc_x`` name the same
    client; counting failures under the raw spelling would give every spelling its own budget.
    """
    auth: Authorization | None = request.authorization
    if auth is not None and auth.type == "basic" and auth.username:
        claimed = unquote(auth.username)
    else:
        claimed = request.form.get("client_id", "")
    return claimed[:64]


def _failure_key() -> tuple[str, str]:
    # Per client id and client address: one address's guesses never lock the client out
    # elsewhere (the owner keeps working while someone guesses at its id).
    return _claimed_client_id(), request.remote_addr or ""


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> Response:
    response = Response(
        json.dumps({"error": error, "error_description": description}),
        status=status,
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


oauth_bp = Blueprint("oauth", __name__)

# RFC 6749 §5.2 errors in words a client's developer can act on. Authlib leaves some errors
# without a description and writes others from Python values (a list's repr); those are
# replaced, its plain sentences kept.
_OAUTH_DESCRIPTIONS = {
    "invalid_request": "The request is missing a parameter or repeats one; send "
    "application/x-www-form-urlencoded fields as RFC 6749 describes.",
    "invalid_client": "Client authentication failed: send the client id and secret with HTTP "
    "Basic (client_secret_basic) or as client_id and client_secret form fields "
    "(client_secret_post).",
    "unauthorized_client": "This client may not use this grant type.",
    "unsupported_grant_type": "Only grant_type=client_credentials is supported.",
    "invalid_scope": "A requested scope is unknown or not allowed for this client.",
    "unsupported_token_type": "Only access tokens can be revoked or introspected here.",
}


def _readable(description: object) -> bool:
    return (
        isinstance(description, str)
        and bool(description)
        and not any(mark in description for mark in "[]{}'\"")
    )


@oauth_bp.after_request
def _readable_oauth_error(response: Response) -> Response:
    if response.status_code < 400 or response.mimetype != "application/json":
        return response
    try:
        body = json.loads(response.get_data())
    except ValueError:
        return response
    if not isinstance(body, dict) or "error" not in body:
        return response
    if body["error"] == "unsupported_token_type" and response.status_code == 401:
        # Authlib answers it as an authentication failure; RFC 7009 §2.2.1 makes it one of
        # RFC 6749 §5.2's errors, which are 400s (the client did authenticate).
        response.status_code = 400
        response.headers.pop("WWW-Authenticate", None)
    if not _readable(body.get("error_description")):
        body["error_description"] = _OAUTH_DESCRIPTIONS.get(
            str(body["error"]), "The request was refused."
        )
        response.set_data(json.dumps(body))
    return response


def _base64_of_utf8(credentials: str) -> bool:
    # Authlib and Werkzeug decode Basic credentials with only some of the errors caught: bytes
    # that are not UTF-8 (or a header of non-ASCII characters) raised out of both.
    try:
        base64.b64decode(credentials).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII input
        return False
    return True


@oauth_bp.before_request
def _one_readable_client_authentication() -> Response | None:
    parts = (request.headers.get("Authorization") or "").split(None, 1)
    basic = bool(parts) and parts[0].lower() == "basic"
    if basic and len(parts) == 2 and not _base64_of_utf8(parts[1]):
        return _oauth_error(
            401,
            "invalid_client",
            "The Basic credentials are not base64 of UTF-8 text.",
            {"WWW-Authenticate": 'Basic realm="jishi"'},
        )
    if basic and request.method == "POST" and "client_secret" in request.form:
        # RFC 6749 §2.3: a client uses one authentication method per request.
        return _oauth_error(
            400,
            "invalid_request",
            "Authenticate the client one way: HTTP Basic, or client_id and client_secret in "
            "the form, not both.",
        )
    return None


@oauth_bp.errorhandler(RequestEntityTooLarge)
def _body_too_large(_exc: RequestEntityTooLarge) -> Response:
    # Forms are read under the bound set where they are first read (marketplace.api).
    return _oauth_error(
        413, "invalid_request", f"OAuth requests are limited to {request.max_content_length} bytes."
    )


def _server() -> AuthorizationServer:
    return current_app.extensions["oauth_server"]  # type: ignore[no-any-return]


def _insecure_transport() -> Response:
    # Authlib refuses to build an OAuth request from a URL that is neither https nor loopback
    # and raises outside its own error handling; answer as RFC 6749 §5.2 would.
    return _oauth_error(
        400,
        "invalid_request",
        "OAuth 2 requires https. Behind a TLS-terminating proxy, set "
        "MARKETPLACE_TRUSTED_PROXY_HOPS so that its X-Forwarded-Proto is believed.",
    )


@oauth_bp.post("/oauth/token")
def issue_token() -> Response:
    limiter: WindowLimiter = current_app.extensions["token_failure_limiter"]
    key = _failure_key()
    wait_s = limiter.retry_after_s(key)
    if wait_s:
        return _oauth_error(
            429,
            "slow_down",
            "Too many failed token requests; try again later.",
            {"Retry-After": str(wait_s)},
        )
    try:
        response: Response = _server().create_token_response()
    except InsecureTransportError:
        return _insecure_transport()
    if response.status_code == 401:
        limiter.record(key)
        response.headers.setdefault("WWW-Authenticate", 'Basic realm="jishi"')
    return response


@oauth_bp.post("/oauth/revoke")
def revoke_token() -> Response:
    try:
        return _server().create_endpoint_response(_Revocation.ENDPOINT_NAME)  # type: ignore[no-any-return]
    except InsecureTransportError:
        return _insecure_transport()


@oauth_bp.post("/oauth/introspect")
def introspect_token() -> Response:
    try:
        return _server().create_endpoint_response(_Introspection.ENDPOINT_NAME)  # type: ignore[no-any-return]
    except InsecureTransportError:
        return _insecure_transport()


@oauth_bp.get("/.well-known/oauth-authorization-server")
def server_metadata() -> Response:
    issuer = request.host_url.rstrip("/")
    metadata = AuthorizationServerMetadata(
        {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/oauth/token",
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "introspection_endpoint": f"{issuer}/oauth/introspect",
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "scopes_supported": list(ALL_SCOPES),
        }
    )
    try:
        metadata.validate_issuer()
        metadata.validate_token_endpoint()
    except ValueError:
        # Plain HTTP under a name other than loopback: the token endpoint refuses it as well.
        return _insecure_transport()
    return Response(json.dumps(dict(metadata)), mimetype="application/json")


def config_oauth(app: Flask) -> None:
    settings = app.extensions["settings"]
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": settings.access_token_ttl_s}
    # Unknown scopes get invalid_scope before any client-specific check.
    app.config["OAUTH2_SCOPES_SUPPORTED"] = list(ALL_SCOPES)
    # One server per app: grants and endpoints are registered on the instance.
    server = AuthorizationServer()
    server.init_app(app, query_client=_query_client, save_token=_save_token)
    server.register_grant(ClientCredentialsGrant)
    server.register_endpoint(_Revocation)
    server.register_endpoint(_Introspection)
    app.extensions["oauth_server"] = server
    app.extensions["token_cache"] = TTLCache(settings.token_cache_ttl_s)
    app.extensions["token_failure_limiter"] = WindowLimiter(
        settings.token_failures_max, settings.token_failures_window_s
    )
    app.register_blueprint(oauth_bp)


__all__ = ["config_oauth", "current", "forget_client_tokens", "forget_token", "require_oauth"]
