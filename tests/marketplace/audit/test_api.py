"""The auditor API over HTTP: what happened is recorded, exported, proven and verified offline."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re

import pytest

from marketplace.audit import journal, merkle
from marketplace.audit.notes import VerifierKey, open_note
from marketplace.audit.tlog import Checkpoint
from marketplace.audit.verify import VerificationFailed, verify_export
from marketplace.canonical import canonical_json
from tests import onnx_models as builders
from tests.conftest import Org
from tests.marketplace.audit.conftest import records

OCTET = {"Content-Type": "application/octet-stream"}
AUDIT_GETS = [
    "/api/v1/audit/tree",
    "/api/v1/audit/checkpoints/latest",
    "/api/v1/audit/checkpoints?size=0",
    "/api/v1/audit/public-keys",
    "/api/v1/audit/records",
    "/api/v1/audit/proofs/inclusion?seq=0",
    "/api/v1/audit/proofs/consistency?from=1",
    "/api/v1/audit/export",
    "/api/v1/audit/ledger/transactions",
    "/api/v1/audit/revenue",
]


def _offer(client, vendor: Org, listing_id: int, **fields):
    body = {
        "name": "Standard",
        "kind": "perpetual",
        "currency": "CNY",
        "price_minor": 10_000,
        "trial_calls": 5,
        "commercial_use": True,
        "terms_md": "Use it well.",
        **fields,
    }
    resp = client.post(
        f"/api/v1/models/{listing_id}/offers", json=body, headers=vendor.headers("models:write")
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.json


@pytest.fixture
def activity(client, vendor, buyer, admin, db_session):
    """A listing's life: upload, offers, a trial, a top-up, a purchase, a refund, a suspension,
    a retirement and a revocation, each through the API by its own organisation."""
    listing = client.post(
        "/api/v1/models",
        json={"name": "Steel defects", "summary": "s", "description_md": "d", "task": "t"},
        headers=vendor.headers("models:write"),
    ).json
    up = client.post(
        f"/api/v1/models/{listing['id']}/versions?version=1.0.0",
        data=builders.relu_bytes(),
        headers={**vendor.headers("models:write"), **OCTET},
    )
    assert up.status_code == 201, up.get_data(as_text=True)
    offer = _offer(client, vendor, listing["id"])
    spare = _offer(client, vendor, listing["id"], name="Spare", price_minor=1)
    trial = client.post(
        f"/api/v1/offers/{offer['id']}/trial",
        json={"accept_terms_sha256": offer["terms_sha256"]},
        headers=buyer.headers("licenses:write"),
    )
    assert trial.status_code == 201, trial.get_data(as_text=True)
    top_up = client.post(
        "/api/v1/wallet/top-ups",
        json={"amount_minor": 50_000, "currency": "CNY"},
        headers=buyer.headers("licenses:write", **{"Idempotency-Key": "t-1"}),
    )
    assert top_up.status_code in (200, 201), top_up.get_data(as_text=True)
    order = client.post(
        f"/api/v1/offers/{offer['id']}/purchase",
        json={"accept_terms_sha256": offer["terms_sha256"]},
        headers=buyer.headers("licenses:write", **{"Idempotency-Key": "=HYPERLINK(1)"}),
    )
    assert order.status_code == 201, order.get_data(as_text=True)
    refund = client.post(
        f"/api/v1/orders/{order.json['id']}/refund",
        json={"amount_minor": 2_500, "reason": "late delivery"},
        headers=admin.headers("admin", **{"Idempotency-Key": "r-1"}),
    )
    assert refund.status_code in (200, 201), refund.get_data(as_text=True)
    base = f"/api/v1/models/{listing['id']}"
    for action in ("suspend", "reinstate"):
        assert client.post(f"{base}/{action}", headers=admin.headers("admin")).status_code == 200
    retire = client.post(
        f"{base}/offers/{spare['id']}/retire", headers=vendor.headers("models:write")
    )
    assert retire.status_code == 200
    revoke = client.post(f"{base}/versions/1.0.0/revoke", headers=vendor.headers("models:write"))
    assert revoke.status_code == 200
    made = client.post("/api/v1/audit/checkpoints", headers=admin.headers("admin"))
    assert made.status_code == 201, made.get_data(as_text=True)
    return {"listing": listing, "offer": offer, "order": order.json, "checkpoint": made.json}


def _records(client, auditor: Org) -> list[dict]:
    out, start = [], 0
    while True:
        page = client.get(
            f"/api/v1/audit/records?from_seq={start}&page_size=7",
            headers=auditor.headers("audit:read"),
        ).json
        out.extend(page["items"])
        if page["next_from_seq"] is None:
            return out
        start = page["next_from_seq"]


def _verifier(client, auditor: Org) -> list[VerifierKey]:
    body = client.get("/api/v1/audit/public-keys", headers=auditor.headers("audit:read")).json
    return [VerifierKey.parse(item["verifier_key"]) for item in body["items"]]


def test_an_auditor_exports_what_happened_and_verifies_it_offline(
    client, activity, auditor, vendor, buyer, admin, tmp_path
):
    items = _records(client, auditor)
    kinds = [item["record"]["kind"] for item in items]
    for kind in (
        "version.published",
        "offer.created",
        "terms.accepted",
        "trial.started",
        "ledger.transaction",
        "license.granted",
        "refund.issued",
        "listing.suspended",
        "listing.reinstated",
        "offer.retired",
        "version.revoked",
    ):
        assert kind in kinds, kind
    assert kinds.count("terms.accepted") == 2 and kinds.count("offer.created") == 2
    by_kind = {item["record"]["kind"]: item["record"] for item in items}
    granted = by_kind["license.granted"]
    assert granted["actor"] == {
        "organization_id": buyer.id, "client_id": buyer.client_id, "via": "api",
    }  # fmt: skip
    assert granted["subject"]["order_id"] == activity["order"]["id"]
    assert granted["money"] == {"currency": "CNY", "amount_minor": 10_000}
    assert by_kind["refund.issued"]["actor"]["organization_id"] == admin.id
    assert by_kind["refund.issued"]["money"]["amount_minor"] == 2_500
    assert by_kind["version.revoked"]["actor"]["organization_id"] == vendor.id
    sale = [
        r["record"]
        for r in items
        if r["record"]["kind"] == "ledger.transaction"
        and r["record"]["subject"]["transaction_kind"] == "purchase"
    ]
    assert [leg["amount_minor"] for leg in sale[0]["money"]["legs"]] == [10_000, 9_000, 1_000]
    # Each item's hashes are those of the record's canonical bytes.
    for item in items:
        data = canonical_json(item["record"])
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        assert item["leaf_hash"] == merkle.leaf_hash(data).hex()

    resp = client.get("/api/v1/audit/export", headers=auditor.headers("audit:read"))
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/jsonl"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    # No record holds a secret, a password (or its hash) or a token.
    text = resp.data.decode()
    for org in (vendor, buyer, admin, auditor):
        assert org.client_secret not in text
        for token in org._tokens.values():
            assert token not in text
    assert "Correct-Horse-9-Battery" not in text and "Platform-Password-2026" not in text
    assert "$argon2" not in text and "PRIVATE+KEY" not in text
    for line in resp.data.splitlines()[:-1]:
        keys = set(re.findall(r'"([a-z_]+)":', line.decode()))
        assert not keys & {"secret", "client_secret", "password", "password_hash", "token"}
    path = tmp_path / "journal.jsonl"
    path.write_bytes(resp.data)
    summary = verify_export(path, _verifier(client, auditor))
    assert summary.to_size == len(items) == activity["checkpoint"]["size"]
    latest = client.get("/api/v1/audit/checkpoints/latest", headers=auditor.headers("audit:read"))
    assert latest.headers["Content-Type"].startswith("text/plain")
    checkpoint = Checkpoint.parse(open_note(latest.data, _verifier(client, auditor)).text)
    assert checkpoint.size == summary.to_size and checkpoint.root == summary.root
    # One byte changed in the download is caught.
    tampered = bytearray(resp.data)
    spot = resp.data.index(b'"amount_minor":2500')
    tampered[spot + len('"amount_minor":')] = ord("9")
    path.write_bytes(bytes(tampered))
    with pytest.raises(VerificationFailed) as exc:
        verify_export(path, _verifier(client, auditor))
    assert exc.value.seq is not None


def test_proofs_and_checkpoints_for_any_size(client, activity, auditor):
    headers = auditor.headers("audit:read")
    keys = _verifier(client, auditor)
    size = activity["checkpoint"]["size"]
    for smaller in (1, 3, size - 1):
        note = client.get(f"/api/v1/audit/checkpoints?size={smaller}", headers=headers)
        assert note.status_code == 200
        early = Checkpoint.parse(open_note(note.data, keys).text)
        assert early.size == smaller
        proof = client.get(
            f"/api/v1/audit/proofs/consistency?from={smaller}&to={size}", headers=headers
        ).json
        assert proof["from_root"] == early.root.hex()
        merkle.verify_consistency(
            smaller,
            size,
            early.root,
            bytes.fromhex(proof["to_root"]),
            [bytes.fromhex(p) for p in proof["proof"]],
        )
    latest = Checkpoint.parse(
        open_note(client.get("/api/v1/audit/checkpoints/latest", headers=headers).data, keys).text
    )
    for seq in (0, size // 2, size - 1):
        proof = client.get(
            f"/api/v1/audit/proofs/inclusion?seq={seq}&size={size}", headers=headers
        ).json
        merkle.verify_inclusion(
            seq,
            size,
            bytes.fromhex(proof["leaf_hash"]),
            [bytes.fromhex(p) for p in proof["proof"]],
            latest.root,
        )
    tree = client.get("/api/v1/audit/tree", headers=headers).json
    assert tree["size"] == size and tree["root_hash"] == latest.root.hex()
    assert tree["latest_checkpoint_size"] == size and tree["pending"] == 0


BAD_RANGES = [
    ("/api/v1/audit/records?from_seq=-1", "range_negative"),
    ("/api/v1/audit/records?from_seq=5&to_seq=2", "range_reversed"),
    ("/api/v1/audit/records?from_seq=0&to_seq=99999", "range_beyond_tree"),
    ("/api/v1/audit/records?from_seq=99999", "range_beyond_tree"),
    ("/api/v1/audit/records?from_seq=abc", "validation_failed"),
    ("/api/v1/audit/checkpoints?size=-3", "range_negative"),
    ("/api/v1/audit/checkpoints?size=99999999999999999999999", "integer_out_of_range"),
    ("/api/v1/audit/checkpoints?size=2147483647", "range_beyond_tree"),
    ("/api/v1/audit/checkpoints", "validation_failed"),
    ("/api/v1/audit/proofs/inclusion?seq=-1", "range_negative"),
    ("/api/v1/audit/proofs/inclusion?seq=3&size=2", "range_reversed"),
    ("/api/v1/audit/proofs/inclusion?seq=0&size=99999", "range_beyond_tree"),
    ("/api/v1/audit/proofs/consistency?from=4&to=2", "range_reversed"),
    ("/api/v1/audit/proofs/consistency?from=1&to=99999", "range_beyond_tree"),
    ("/api/v1/audit/proofs/consistency?from=0&to=2", "range_empty"),
    ("/api/v1/audit/proofs/consistency?from=-1", "range_negative"),
    ("/api/v1/audit/export?from_seq=-1", "range_negative"),
    ("/api/v1/audit/export?from_seq=9&to_size=3", "range_reversed"),
    ("/api/v1/audit/export?to_size=99999", "range_beyond_tree"),
    ("/api/v1/audit/export?format=xml", "validation_failed"),
    ("/api/v1/audit/revenue?period=week", "validation_failed"),
    # Times whose conversion to UTC leaves the calendar: each was a 500.
    ("/api/v1/audit/revenue?from=9999-12-31T23:59:59-14:00", "validation_failed"),
    ("/api/v1/audit/revenue?to=0001-01-01T00:00:00%2B05:00", "validation_failed"),
    ("/api/v1/audit/ledger/transactions?from=9999-12-31T23:59:59-14:00", "validation_failed"),
    ("/api/v1/audit/ledger/transactions?to=0001-01-01T00:00:00%2B14:00", "validation_failed"),
    (
        "/api/v1/audit/ledger/transactions?organization_id=99999999999999999999",
        "validation_failed",
    ),
]


def test_bad_ranges_are_refused_with_a_code(client, activity, auditor):
    headers = auditor.headers("audit:read")
    for path, code in BAD_RANGES:
        resp = client.get(path, headers=headers)
        assert resp.status_code == 422, (path, resp.get_data(as_text=True))
        assert resp.headers["Content-Type"] == "application/problem+json"
        assert resp.json["code"] == code, path


def test_latest_checkpoint_is_404_before_the_first(client, auditor):
    resp = client.get("/api/v1/audit/checkpoints/latest", headers=auditor.headers("audit:read"))
    assert resp.status_code == 404 and resp.json["code"] == "checkpoint_not_found"


def test_only_auditors_and_admins_read_the_journal(client, vendor, buyer, auditor, admin):
    for path in AUDIT_GETS:
        assert client.get(path).status_code == 401, path
        for org in (vendor, buyer):
            resp = client.get(path, headers=org.headers())
            assert resp.status_code == 403 and resp.json["code"] == "insufficient_scope", path
        for org, scope in ((auditor, "audit:read"), (admin, "admin")):
            assert client.get(path, headers=org.headers(scope)).status_code not in (401, 403)
        # An auditor's token without audit:read is refused too.
        assert client.get(path, headers=auditor.headers("ledger:read")).status_code == 403


# Routes that take no bearer token at all (an audit token gives no power there): registration,
# and Stripe's webhook, which only a valid Stripe signature opens.
PUBLIC_WRITES = {"/api/v1/register", "/api/v1/payments/stripe/webhook"}
# Bodies that would be accepted from a token allowed to write: the refusal must not depend on
# the body being wrong.
VALID_BODIES = {
    "/api/v1/organizations/<int:org_id>/clients": {"name": "more", "scopes": ["audit:read"]},
}


def test_an_audit_read_token_cannot_write_anywhere(app, client, auditor):
    headers = auditor.headers("audit:read")
    # Path ids that exist where it matters: the auditor's own organisation.
    values = {"org_id": str(auditor.id), "version": "1.0.0"}
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api"):
            continue
        meta = getattr(app.view_functions[rule.endpoint], "__openapi__", None)
        for method in sorted((rule.methods or set()) - {"GET", "HEAD", "OPTIONS"}):
            if meta is None or meta["scope"] is None:
                assert rule.rule in PUBLIC_WRITES, f"{method} {rule.rule} takes no token"
                continue
            path = re.sub(r"<(?:int:)?([a-z_]+)>", lambda m: values.get(m[1], "1"), rule.rule)
            body = VALID_BODIES.get(rule.rule, {})
            resp = client.open(path, method=method, headers=headers, json=body)
            assert resp.status_code == 403, f"{method} {path}: {resp.status_code}"
            checked += 1
    assert checked >= 12


def test_platform_views_for_auditors_and_admins(client, activity, auditor, admin, buyer, vendor):
    headers = auditor.headers("audit:read")
    everything = client.get("/api/v1/audit/ledger/transactions", headers=headers).json
    kinds = {t["kind"] for t in everything["items"]}
    assert {"top_up", "purchase", "refund"} <= kinds
    totals = {(t["account_code"], t["currency"]): t for t in everything["totals"]}
    revenue = totals[("platform_revenue", "CNY")]
    assert (revenue["credits_minor"], revenue["debits_minor"]) == (1_000, 250)
    assert totals[("vendor_payable", "CNY")]["net_minor"] == 9_000 - 2_250
    # One organisation: its transactions, and totals over its own accounts only.
    mine = client.get(
        f"/api/v1/audit/ledger/transactions?organization_id={buyer.id}&kind=purchase",
        headers=headers,
    ).json
    assert [t["kind"] for t in mine["items"]] == ["purchase"]
    assert {t["account_code"] for t in mine["totals"]} == {"wallet"}
    assert mine["totals"][0]["debits_minor"] == 10_000
    assert any(e["organization_id"] == vendor.id for e in mine["items"][0]["entries"])
    paged = client.get("/api/v1/audit/ledger/transactions?page_size=1", headers=headers).json
    assert len(paged["items"]) == 1 and paged["next_after_id"] == paged["items"][0]["id"]
    later = client.get(
        "/api/v1/audit/ledger/transactions?from=2100-01-01T00:00:00Z", headers=headers
    ).json
    assert later["items"] == [] and later["totals"] == []
    # Platform revenue per currency and period, for the administrator too.
    report = client.get("/api/v1/audit/revenue?period=day", headers=admin.headers("admin")).json
    (day,) = report["items"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", day["period"])
    assert (day["currency"], day["fees_minor"], day["refunded_minor"], day["net_minor"]) == (
        "CNY", 1_000, 250, 750,
    )  # fmt: skip
    assert day["net_display"] == "¥7.50"
    assert report["totals"][0]["net_minor"] == 750
    yearly = client.get("/api/v1/audit/revenue?period=year&currency=JPY", headers=headers).json
    assert yearly["items"] == []


def test_platform_totals_are_the_posted_balances_with_holds_posted_and_voided(
    client, activity, auditor, buyer, db_session
):
    """Holds were summed beside their postings: a posted hold counted twice, a voided once."""
    from sqlmodel import select

    from marketplace.ledger import services as ledger
    from marketplace.ledger.models import LedgerAccount

    wallet = ledger.find_account(
        db_session, organization_id=buyer.id, code="wallet", currency="CNY"
    )
    accrual = ledger.ensure_account(
        db_session, organization_id=None, code="royalty_accrual", currency="CNY"
    )
    held, voided = (
        ledger.place_hold(
            db_session,
            idempotency_key=f"audit-hold-{amount}",
            kind="reservation",
            from_account=wallet,
            to_account=accrual,
            amount=amount,
        )
        for amount in (300, 200)
    )
    db_session.commit()
    ledger.post_pending(db_session, idempotency_key="audit-post", pending_id=held, amount=120)
    ledger.void_pending(db_session, idempotency_key="audit-void", pending_id=voided)
    everything = client.get(
        "/api/v1/audit/ledger/transactions?currency=CNY", headers=auditor.headers("audit:read")
    ).json
    reported = {t["account_code"]: t for t in everything["totals"]}
    ids = [a.id for a in db_session.exec(select(LedgerAccount)).all()]
    posted: dict[str, list[int]] = {}
    for balance in ledger.balances(db_session, account_ids=ids, currency="CNY"):
        sums = posted.setdefault(balance.code, [0, 0])
        sums[0] += balance.debits_posted
        sums[1] += balance.credits_posted
    assert posted["royalty_accrual"] == [0, 120]
    for code, (debits, credits) in posted.items():
        if debits or credits:
            got = (reported[code]["debits_minor"], reported[code]["credits_minor"])
            assert got == (debits, credits), code


def test_csv_export_carries_each_record_and_its_hashes(client, activity, auditor):
    headers = auditor.headers("audit:read")
    resp = client.get("/api/v1/audit/export?format=csv&from_seq=2", headers=headers)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.data.decode())))
    items = _records(client, auditor)[2:]
    assert [int(r["seq"]) for r in rows] == [i["seq"] for i in items]
    for row, item in zip(rows, items, strict=True):
        assert row["sha256"] == item["sha256"] and row["leaf_hash"] == item["leaf_hash"]
        assert row["kind"] == item["record"]["kind"]
        assert json.loads(row["subject"]) == item["record"]["subject"]
        assert not row["subject"].startswith(("=", "+", "-", "@"))


def test_concurrent_exports_are_bounded(app, client, activity, auditor):
    app.extensions["audit_export_slots"] = __import__("threading").BoundedSemaphore(1)
    headers = auditor.headers("audit:read")
    held = client.get("/api/v1/audit/export", headers=headers, buffered=False)
    assert held.status_code == 200
    busy = client.get("/api/v1/audit/export", headers=headers)
    assert busy.status_code == 503 and busy.json["code"] == "exports_busy"
    assert busy.headers["Retry-After"].isdigit()
    held.close()
    assert client.get("/api/v1/audit/export", headers=headers).status_code == 200


def test_cli_export_writes_the_same_bytes_as_the_api(client, activity, auditor, runner, tmp_path):
    size = activity["checkpoint"]["size"]
    api = client.get(
        f"/api/v1/audit/export?from_seq=3&to_size={size}", headers=auditor.headers("audit:read")
    ).data
    out = tmp_path / "cli.jsonl"
    result = runner.invoke(
        args=["audit", "export", "--from-seq", "3", "--to-size", str(size), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == api
    assert not list(tmp_path.glob(".cli.jsonl.*"))
    refused = runner.invoke(args=["audit", "export", "--to-size", "999999", "--out", str(out)])
    assert refused.exit_code != 0 and "range_beyond_tree" in refused.output
    assert out.read_bytes() == api  # a refused export leaves the old file alone


def test_the_actor_of_a_request_does_not_leak_into_later_work(client, buyer, db_session):
    # The test client runs each request on this thread, as a reused server thread would.
    assert client.get("/api/v1/me", headers=buyer.headers()).status_code == 200
    assert journal.current_actor() == journal.SYSTEM
    journal.append(db_session, kind="test.event", subject={})
    db_session.commit()
    last = records(db_session)[-1]
    assert last["kind"] == "test.event"
    assert last["actor"] == {"organization_id": None, "client_id": None, "via": "system"}


@pytest.mark.slow
def test_from_a_running_marketplace_an_auditor_exports_and_verifies_offline(live_server, tmp_path):
    """Over real HTTP, with the node's periodic work running as `jishi serve` runs it."""
    import subprocess
    import sys
    import time

    import requests

    from marketplace import periodic
    from marketplace.accounts import services as accounts

    live = live_server(AUDIT_SEQUENCE_INTERVAL_S=0.1, AUDIT_CHECKPOINT_INTERVAL_S=0)
    runner = periodic.Runner(live.app, tick_s=0.05)
    runner.start()
    try:
        session = live.app.extensions["db"].session()
        _user, _org, creds = accounts.create_platform_user(
            session=session, email="auditor@example.test", password="Auditor-Pass-2026",
            role="auditor",
        )  # fmt: skip
        session.close()
        buyer = requests.post(
            f"{live.url}/api/v1/register",
            json={
                "email": "b@example.test",
                "password": "Correct-Horse-9-Battery",
                "organization_name": "Buyer",
                "organization_roles": ["buyer"],
            },
            timeout=30,
        ).json()
        token = requests.post(
            f"{live.url}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "licenses:write"},
            auth=(buyer["client"]["client_id"], buyer["client"]["client_secret"]),
            timeout=30,
        ).json()["access_token"]
        for key in ("a", "b", "c"):
            top_up = requests.post(
                f"{live.url}/api/v1/wallet/top-ups",
                json={"amount_minor": 1000, "currency": "CNY"},
                headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
                timeout=30,
            )
            assert top_up.status_code in (200, 201), top_up.text

        # The auditor has only its client id and secret.
        auditor = requests.Session()
        auditor.headers["Authorization"] = (
            "Bearer "
            + requests.post(
                f"{live.url}/oauth/token",
                data={"grant_type": "client_credentials", "scope": "audit:read"},
                auth=(creds.client_id, creds.client_secret),
                timeout=30,
            ).json()["access_token"]
        )
        deadline = time.monotonic() + 30
        while True:  # the node sequences and checkpoints on its own
            latest = auditor.get(f"{live.url}/api/v1/audit/checkpoints/latest", timeout=30)
            if latest.status_code == 200 and latest.text.split("\n")[1] == "3":
                break
            assert time.monotonic() < deadline, latest.text
            time.sleep(0.1)
        key = auditor.get(f"{live.url}/api/v1/audit/public-keys", timeout=30).json()
        verifier_key = key["items"][-1]["verifier_key"]
        export_path = tmp_path / "journal.jsonl"
        with auditor.get(
            f"{live.url}/api/v1/audit/export?to_size=3", stream=True, timeout=30
        ) as resp:
            assert resp.status_code == 200
            with open(export_path, "wb") as out:
                for chunk in resp.iter_content(65536):
                    out.write(chunk)
    finally:
        runner.stop()
    done = subprocess.run(
        [sys.executable, "-m", "marketplace.audit.verify", str(export_path),
         "--public-key", verifier_key],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("verified: records 0..2 (3) of ")
    lines = export_path.read_bytes().splitlines(keepends=True)
    export_path.write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))
    done = subprocess.run(
        [sys.executable, "-m", "marketplace.audit.verify", str(export_path),
         "--public-key", verifier_key],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "seq 0: out of order" in done.stderr
