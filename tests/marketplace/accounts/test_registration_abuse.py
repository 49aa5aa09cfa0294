"""Registration under abuse: per-address limits, bounded hashing, waiting for locks, 503 not 500."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from tests.live_api import LiveOrg, platform_org, register, request_token

ARGON2_MEMORY_BYTES = 64 * 1024 * 1024  # argon2-cffi's default memory cost per hash


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_registration_is_limited_per_client_address(live_server):
    server = live_server(REGISTRATIONS_PER_ADDRESS_MAX=3, TRUSTED_PROXY_HOPS=1)
    answers = [register(server.url, ["buyer"]).status_code for _ in range(3)]
    assert answers == [201, 201, 201]
    farmed = register(server.url, ["buyer"])
    assert farmed.status_code == 429, farmed.text
    assert farmed.json()["code"] == "too_many_registrations"
    assert int(farmed.headers["Retry-After"]) >= 1
    # Another address (as the trusted proxy reports it) has its own budget; the header only
    # counts because one proxy hop is trusted.
    elsewhere = register(server.url, ["buyer"], **{"X-Forwarded-For": "198.51.100.7"})
    assert elsewhere.status_code == 201, elsewhere.text


def test_forty_concurrent_registrations_bound_memory_and_never_fail_with_500(live_server):
    server = live_server(
        REGISTRATIONS_PER_ADDRESS_MAX=1000, PASSWORD_HASH_CONCURRENCY_MAX=2, PASSWORD_HASH_WAIT_S=1
    )
    register(server.url, ["buyer"])  # warm the server before measuring
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS counter here
    baseline_kib = _status_kib("VmRSS")
    answers: list[requests.Response] = []
    start = threading.Barrier(40)

    def attempt() -> None:
        start.wait()
        answers.append(register(server.url, ["buyer"]))

    threads = [threading.Thread(target=attempt) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    growth_bytes = (_status_kib("VmHWM") - baseline_kib) * 1024

    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {201, 503}, [(r.status_code, r.text[:200]) for r in answers]
    assert 201 in statuses
    for busy in (r for r in answers if r.status_code == 503):
        assert busy.json()["code"] == "registration_busy"
        assert int(busy.headers["Retry-After"]) >= 1
    # Two hashes at a time hold 128 MiB of argon2 memory; forty at a time held about 1 GB.
    assert growth_bytes < 4 * ARGON2_MEMORY_BYTES, f"peak RSS grew by {growth_bytes >> 20} MiB"
    # Every success is a working account.
    made = next(r for r in answers if r.status_code == 201).json()["client"]
    assert request_token(server.url, made["client_id"], made["client_secret"]).status_code == 200


@contextmanager
def _database_write_locked(server: Any) -> Any:
    """Hold the database's write lock from another connection, as a long writer would."""
    url = server.app.extensions["db"].engine.url
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.exec_driver_sql("LOCK TABLE users IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            transaction.rollback()
    engine.dispose()


def test_a_database_lock_held_too_long_is_503_with_retry_after(live_server):
    server = live_server(DATABASE_LOCK_TIMEOUT_S=0.5)
    with _database_write_locked(server):
        blocked = register(server.url, ["buyer"])
    assert blocked.status_code == 503, blocked.text
    assert blocked.json()["code"] == "database_busy"
    assert int(blocked.headers["Retry-After"]) >= 1
    assert register(server.url, ["buyer"]).status_code == 201


def _trial_offer(vendor: LiveOrg) -> dict[str, Any]:
    listing = vendor.call(
        "POST",
        "/api/v1/models",
        json={"name": "Verified only", "task": "image-classification"},
    ).json()
    offer = vendor.call(
        "POST",
        f"/api/v1/models/{listing['id']}/offers",
        json={
            "name": "Metered",
            "kind": "per_inference",
            "currency": "CNY",
            "price_minor": 0,
            "royalty_per_1k_minor": 500,
            "trial_calls": 100,
            "trial_requires_verified_org": True,
        },
    )
    assert offer.status_code == 201, offer.text
    body: dict[str, Any] = offer.json()
    assert body["trial_requires_verified_org"] is True
    return body


def test_trials_of_such_offers_need_an_organisation_an_administrator_verified(live_server):
    server = live_server()
    vendor = LiveOrg.register(server, ["vendor"])
    buyer = LiveOrg.register(server, ["buyer"])
    admin = platform_org(server)
    offer = _trial_offer(vendor)
    trial = f"/api/v1/offers/{offer['id']}/trial"
    accept = {"accept_terms_sha256": offer["terms_sha256"]}

    farmed = buyer.call("POST", trial, json=accept)
    assert farmed.status_code == 403, farmed.text
    assert farmed.json()["code"] == "organization_not_verified"
    assert buyer.call("GET", "/api/v1/me").json()["organization"]["verified"] is False

    verify = f"/api/v1/organizations/{buyer.id}/verify"
    assert buyer.call("POST", verify).status_code == 403
    assert vendor.call("POST", verify).status_code == 403
    missing = admin.call("POST", "/api/v1/organizations/999999/verify", scope="admin")
    assert missing.status_code == 404
    verified = admin.call("POST", verify, scope="admin")
    assert verified.status_code == 200, verified.text
    assert verified.json()["verified"] is True and verified.json()["id"] == buyer.id

    assert buyer.call("GET", "/api/v1/me").json()["organization"]["verified"] is True
    assert buyer.call("POST", trial, json=accept).status_code == 201


def test_jishi_orgs_verify(app, runner, buyer, db_session):
    from marketplace.accounts.models import Organization

    result = runner.invoke(args=["orgs", "verify", str(buyer.id)])
    assert result.exit_code == 0, result.output
    assert f"organization {buyer.id}" in result.output
    org = db_session.get(Organization, buyer.id)
    db_session.refresh(org)
    assert org.verified_at is not None
    missing = runner.invoke(args=["orgs", "verify", "999999"])
    assert missing.exit_code != 0
    assert "No such organization" in missing.output
