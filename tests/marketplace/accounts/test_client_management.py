"""API clients: creating one needs clients:manage; revoking one ends it and all its tokens."""

from __future__ import annotations

import requests

from tests.live_api import LiveOrg, request_token

MANAGE = "clients:manage"


def test_a_leaked_token_cannot_mint_a_client_and_a_revoked_client_is_dead(live_server):
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    clients = f"/api/v1/organizations/{vendor.id}/clients"

    # The attack: an ordinary access token (as leaked from a log or a CI job) minted a
    # permanent client with every scope it held.
    leaked = vendor.call("POST", clients, json={"name": "attacker", "scopes": ["models:write"]})
    assert leaked.status_code == 403, leaked.text
    assert leaked.json()["code"] == "insufficient_scope"
    ordinary = requests.get(f"{server.url}/api/v1/me", headers=vendor.headers(), timeout=30)
    assert MANAGE not in ordinary.json()["scopes"]

    # Managing clients takes a token that asked for clients:manage, and a client gets no
    # scope that the token making it does not hold.
    narrow = vendor.call(
        "POST", clients, scope=MANAGE, json={"name": "CI uploader", "scopes": ["models:write"]}
    )
    assert narrow.status_code == 403
    assert narrow.json()["code"] == "scope_not_allowed"
    made = vendor.call(
        "POST",
        clients,
        scope=f"{MANAGE} models:write",
        json={"name": "CI uploader", "scopes": ["models:write"]},
    )
    assert made.status_code == 201, made.text
    ci = made.json()
    assert ci["scopes"] == ["models:write"]
    ci_token = request_token(server.url, ci["client_id"], ci["client_secret"])
    assert ci_token.status_code == 200
    ci_auth = {"Authorization": f"Bearer {ci_token.json()['access_token']}"}
    assert requests.get(f"{server.url}/api/v1/me", headers=ci_auth, timeout=30).status_code == 200

    listed = {c["client_id"]: c for c in vendor.call("GET", clients).json()["items"]}
    first, second = listed[vendor.client_id], listed[ci["client_id"]]
    assert first["created_by"] == {"kind": "user", "user_id": first["created_by"]["user_id"]}
    assert second["created_by"] == {"kind": "client", "client_id": vendor.client_id}
    assert first["last_used_at"] is not None and second["last_used_at"] is not None
    assert second["revoked_at"] is None

    # Revoking needs clients:manage too; then the client and every token it holds are dead.
    refused = vendor.call("DELETE", f"{clients}/{ci['client_id']}")
    assert refused.status_code == 403
    revoked = vendor.call("DELETE", f"{clients}/{ci['client_id']}", scope=MANAGE)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    after = requests.get(f"{server.url}/api/v1/me", headers=ci_auth, timeout=30)
    assert after.status_code == 401
    assert after.json()["code"] == "invalid_token"
    again = request_token(server.url, ci["client_id"], ci["client_secret"])
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    listed = {c["client_id"]: c for c in vendor.call("GET", clients).json()["items"]}
    assert listed[ci["client_id"]]["revoked_at"] is not None
    twice = vendor.call("DELETE", f"{clients}/{ci['client_id']}", scope=MANAGE)
    assert twice.status_code == 409
    assert twice.json()["code"] == "client_revoked"


def test_client_revocation_is_scoped_to_the_organisation_and_keeps_a_manager(live_server):
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    other = LiveOrg.register(server, ["buyer"])
    clients = f"/api/v1/organizations/{vendor.id}/clients"

    foreign = other.call("DELETE", f"{clients}/{vendor.client_id}", scope=MANAGE)
    assert foreign.status_code == 404
    assert foreign.json()["code"] == "organization_not_found"
    own_path_foreign_client = other.call(
        "DELETE", f"/api/v1/organizations/{other.id}/clients/{vendor.client_id}", scope=MANAGE
    )
    assert own_path_foreign_client.status_code == 404
    assert own_path_foreign_client.json()["code"] == "client_not_found"

    # The organisation's last client that can manage clients stays: without it nobody could
    # make or revoke clients again.
    last = vendor.call("DELETE", f"{clients}/{vendor.client_id}", scope=MANAGE)
    assert last.status_code == 409
    assert last.json()["code"] == "last_manager_client"
    deputy = vendor.call(
        "POST",
        clients,
        scope=f"{MANAGE} models:read",
        json={"name": "deputy", "scopes": [MANAGE, "models:read"]},
    ).json()
    assert deputy["scopes"] == [MANAGE, "models:read"]
    gone = vendor.call("DELETE", f"{clients}/{vendor.client_id}", scope=MANAGE)
    assert gone.status_code == 200
    assert request_token(server.url, vendor.client_id, vendor.client_secret).status_code == 401
    assert request_token(
        server.url, deputy["client_id"], deputy["client_secret"], MANAGE
    ).status_code == (200)
