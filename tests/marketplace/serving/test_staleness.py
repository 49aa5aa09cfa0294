"""The node's caches are bounded in staleness: revocations and suspensions made on one server
process stop calls on every process within the stated bound (here set to 1 s)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import requests

from tests import onnx_models as m
from tests.marketplace.serving.node import JISHI, Client, start_node

BOUND_S = 1.0
BODY = {
    "inputs": {
        "x": {"dtype": "float32", "shape": [1, 3], "data": [1, 2, 3]},
        "y": {"dtype": "float32", "shape": [1, 3], "data": [1, 1, 1]},
    }
}


def _admin(node) -> Client:
    email = f"admin-{uuid.uuid4().hex[:6]}@example.test"
    out = subprocess.run(
        [JISHI, "users", "create", "--email", email, "--role", "admin"],
        env=node.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return Client.with_credentials(
        node.url,
        re.search(r"client_id: (\S+)", out).group(1),
        re.search(r"client_secret: (\S+)", out).group(1),
    )


def _until_refused(url: str, token: str, refused: int) -> tuple[float, list[int]]:
    """Call on fresh connections (so every process is asked) until `refused` holds for a while."""
    started = time.monotonic()
    statuses: list[int] = []
    last_ok = 0.0
    while time.monotonic() - started < BOUND_S + 1.5:
        status = requests.post(
            url,
            json=BODY,
            headers={"Authorization": f"Bearer {token}", "Connection": "close"},
            timeout=30,
        ).status_code
        statuses.append(status)
        if status == 200:
            last_ok = time.monotonic() - started
        else:
            assert status == refused, statuses
        time.sleep(0.02)
    return last_ok, statuses


def test_revocations_and_suspensions_reach_every_process_within_the_bound(tmp_path, fresh_database):
    url, _engine = fresh_database()
    node = start_node(
        tmp_path,
        url,
        "--processes",
        "3",
        EVAL_LOOKUP_CACHE_TTL_S=BOUND_S,
        TOKEN_CACHE_TTL_S=BOUND_S,
    )
    try:
        vendor = Client(node.url, ["vendor"])
        buyer = Client(node.url, ["buyer"])
        admin = _admin(node)
        models = [vendor.publish(m.add()) for _ in range(2)]
        for model_id in models:
            buyer.trial(vendor.offer(model_id, trial_calls=10_000, trial_days=7))
        targets = [f"{node.url}/api/v1/models/{i}/versions/1.0.0/evaluate" for i in models]

        def warm(target: str) -> None:
            # Fill the caches of every process: many calls on fresh connections.
            for _ in range(15):
                resp = requests.post(
                    target,
                    json=BODY,
                    headers={"Authorization": f"Bearer {buyer.token}", "Connection": "close"},
                    timeout=30,
                )
                assert resp.status_code == 200, resp.text[:300]

        # A version revoked by its vendor.
        warm(targets[0])
        assert vendor.post(f"/api/v1/models/{models[0]}/versions/1.0.0/revoke").status_code == 200
        last_ok, statuses = _until_refused(targets[0], buyer.token, 410)
        assert last_ok <= BOUND_S + 0.2, (last_ok, statuses)
        assert statuses[-1] == 410

        # A listing suspended by an administrator.
        warm(targets[1])
        assert admin.post(f"/api/v1/models/{models[1]}/suspend").status_code == 200
        last_ok, statuses = _until_refused(targets[1], buyer.token, 403)
        assert last_ok <= BOUND_S + 0.2, (last_ok, statuses)

        # An access token revoked by its client (RFC 7009).
        assert admin.post(f"/api/v1/models/{models[1]}/reinstate").status_code == 200
        time.sleep(BOUND_S + 0.2)
        warm(targets[1])
        revoked = requests.post(
            f"{node.url}/oauth/revoke",
            data={"token": buyer.token},
            auth=(buyer.client_id, buyer.client_secret),
            timeout=30,
        )
        assert revoked.status_code == 200
        last_ok, statuses = _until_refused(targets[1], buyer.token, 401)
        assert last_ok <= BOUND_S + 0.2, (last_ok, statuses)
    finally:
        node.stop()
