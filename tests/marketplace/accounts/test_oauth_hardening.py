"""The token endpoint under attack: encoded client ids, other addresses, proxies, plain HTTP."""

from __future__ import annotations

import base64

import requests

from tests.live_api import LiveOrg, request_token


def _guess(url: str, client_id: str, address: str) -> requests.Response:
    return request_token(url, client_id, "jcs_guess", **{"X-Forwarded-For": address})


def test_failed_token_limiter_counts_normalised_ids_per_address(live_server):
    server = live_server(TOKEN_FAILURES_MAX=3, TRUSTED_PROXY_HOPS=1)
    victim = LiveOrg.register(server, ["vendor"])
    attacker, owner = "203.0.113.9", "198.51.100.20"

    # Percent-encoded spellings of one client id are one client id (RFC 6749 §2.3.1 encodes
    # Basic credentials): they share one budget of failures.
    plain = victim.client_id
    spellings = [plain, plain.replace("_", "%5F"), "%6A" + plain[1:], "%6a" + plain[1:]]
    answers = [_guess(server.url, spelling, attacker).status_code for spelling in spellings * 2]
    assert answers[:3] == [401, 401, 401]
    assert set(answers[3:]) == {429}, answers

    # The attacker's failures never lock the owner out from another address.
    ok = request_token(server.url, plain, victim.client_secret, **{"X-Forwarded-For": owner})
    assert ok.status_code == 200, ok.text
    # From the attacker's own address the id stays throttled, even with the right secret.
    held = request_token(server.url, plain, victim.client_secret, **{"X-Forwarded-For": attacker})
    assert held.status_code == 429
    assert held.json()["error"] == "slow_down"


def test_token_endpoint_behind_a_proxy_and_over_plain_http(live_server):
    direct = live_server()
    org = LiveOrg.register(direct, ["buyer"])
    # A request that reached the app over plain HTTP under a public name (a proxy that does
    # not say it terminated TLS): an OAuth error, never a 500.
    plain = request_token(direct.url, org.client_id, org.client_secret, Host="market.example")
    assert plain.status_code == 400, plain.text
    assert plain.json()["error"] == "invalid_request"
    assert "https" in plain.json()["error_description"]
    for path in ("/oauth/revoke", "/oauth/introspect"):
        resp = requests.post(
            f"{direct.url}{path}",
            data={"token": "x"},
            auth=(org.client_id, org.client_secret),
            headers={"Host": "market.example"},
            timeout=30,
        )
        assert resp.status_code == 400, (path, resp.text)
        assert resp.json()["error"] == "invalid_request"

    # With one trusted proxy hop, the proxy's X-Forwarded-* say TLS ended at the proxy.
    proxied = live_server(TRUSTED_PROXY_HOPS=1)
    org = LiveOrg.register(proxied, ["buyer"])
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "market.example"}
    token = request_token(proxied.url, org.client_id, org.client_secret, **forwarded)
    assert token.status_code == 200, token.text
    meta = requests.get(
        f"{proxied.url}/.well-known/oauth-authorization-server", headers=forwarded, timeout=30
    ).json()
    assert meta["token_endpoint"] == "https://market.example/oauth/token"


def test_unreadable_basic_credentials_are_an_invalid_client(live_server):
    """Basic credentials of bytes that are not UTF-8 (or not ASCII at all) were a 500."""
    server = live_server()
    for credentials in [base64.b64encode(b"\xe9:x"), b"\xe9\xe9", base64.b64encode(b"id:\xff")]:
        for path in ("/oauth/token", "/oauth/revoke", "/oauth/introspect"):
            resp = requests.post(
                f"{server.url}{path}",
                data={"grant_type": "client_credentials", "token": "x"},
                headers={"Authorization": b"Basic " + credentials},
                timeout=30,
            )
            assert resp.status_code == 401, (path, credentials, resp.text)
            assert resp.json()["error"] == "invalid_client"
            assert resp.headers["WWW-Authenticate"].startswith("Basic")


def test_oauth_bodies_are_bounded(live_server):
    """A valid client once sent a 200 MB scope list and held a worker at 7 GB for 30 s."""
    server = live_server()
    org = LiveOrg.register(server, ["buyer"])
    bound = 1024 * 1024  # the JSON body bound, which holds for every form
    huge = b"grant_type=client_credentials&scope=" + b"models%3Aread+" * (bound // 14 + 1)
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def chunks():
        yield huge[: len(huge) // 2]
        yield huge[len(huge) // 2 :]

    for body in (huge, chunks()):
        for path in ("/oauth/token", "/oauth/revoke", "/oauth/introspect"):
            resp = requests.post(
                f"{server.url}{path}",
                data=body if isinstance(body, bytes) else chunks(),
                auth=(org.client_id, org.client_secret),
                headers=form,
                timeout=30,
            )
            assert resp.status_code == 413, (path, resp.text[:200])
            assert resp.json()["error"] == "invalid_request"
            assert str(bound) in resp.json()["error_description"]
    # A request of ordinary size still works.
    assert request_token(server.url, org.client_id, org.client_secret).status_code == 200


def test_server_metadata_over_plain_http_under_a_public_name(live_server):
    """Authlib refuses an http issuer outside loopback by raising: that was a 500."""
    server = live_server()
    for host in ("market.example", "10.0.0.5:8102", "a?b#c"):
        resp = requests.get(
            f"{server.url}/.well-known/oauth-authorization-server",
            headers={"Host": host},
            timeout=30,
        )
        assert resp.status_code == 400, (host, resp.text)
        assert resp.json()["error"] == "invalid_request"


def test_oauth_errors_follow_the_rfcs(live_server):
    server = live_server()
    org = LiveOrg.register(server, ["buyer"])
    # RFC 6749 §2.3: one client authentication method per request (Basic won silently).
    both = requests.post(
        f"{server.url}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": org.client_id,
            "client_secret": org.client_secret,
        },
        auth=(org.client_id, org.client_secret),
        timeout=30,
    )
    assert both.status_code == 400, both.text
    assert both.json()["error"] == "invalid_request"
    # RFC 7009 §2.2.1: an unsupported token type is a 400, not an authentication failure.
    token = request_token(server.url, org.client_id, org.client_secret).json()["access_token"]
    odd_hint = requests.post(
        f"{server.url}/oauth/revoke",
        data={"token": token, "token_type_hint": "refresh_token_of_sorts"},
        auth=(org.client_id, org.client_secret),
        timeout=30,
    )
    assert odd_hint.status_code == 400, odd_hint.text
    assert odd_hint.json()["error"] == "unsupported_token_type"
    assert "WWW-Authenticate" not in odd_hint.headers
    # Each method alone still works.
    for kwargs in (
        {"auth": (org.client_id, org.client_secret), "data": {}},
        {"data": {"client_id": org.client_id, "client_secret": org.client_secret}},
    ):
        data = {"grant_type": "client_credentials", **kwargs.pop("data")}
        ok = requests.post(f"{server.url}/oauth/token", data=data, timeout=30, **kwargs)
        assert ok.status_code == 200, ok.text


def test_a_forged_host_is_refused_where_hosts_are_trusted(live_server):
    """Over https behind a proxy, a forged Host was echoed into the OAuth metadata's URLs."""
    server = live_server(TRUSTED_HOSTS="market.example, 127.0.0.1", TRUSTED_PROXY_HOPS=1)
    forwarded = {"X-Forwarded-Proto": "https"}
    for host in ("evil.example", "market.example.evil.example"):
        resp = requests.get(
            f"{server.url}/.well-known/oauth-authorization-server",
            headers={**forwarded, "X-Forwarded-Host": host},
            timeout=30,
        )
        assert resp.status_code == 400, (host, resp.text[:200])
    ok = requests.get(
        f"{server.url}/.well-known/oauth-authorization-server",
        headers={**forwarded, "X-Forwarded-Host": "market.example"},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["issuer"] == "https://market.example"
