"""The auditor's page and the payout parts of the dashboard and the administrator's page, through
the test client on both databases: who may see them, what they show, and that their actions are
the API's own (the export's bytes, the payout services)."""

from __future__ import annotations

import html as html_lib
import re

import pytest
import sqlalchemy as sa
from sqlmodel import select

from marketplace.audit import journal, services
from marketplace.audit.notes import VerifierKey
from marketplace.audit.verify import VerificationFailed, verify_export
from marketplace.ledger.models import VENDOR_PAYABLE
from marketplace.payments import payouts
from marketplace.payments.models import OUTBOX_FAILED, PaymentOutbox, Payout
from tests.marketplace.audit.conftest import platform_org
from tests.marketplace.licensing.builders import account_posted, fund_wallet, make_offer
from tests.marketplace.web.test_pages import accept_on_page

_VERIFIER_KEY = re.compile(r'<code class="hash verifier-key">([^<]+)</code>')


def _sale(person, db_session, price_minor: int = 10_000):
    """A vendor whose listing a buyer bought from its model page."""
    vendor, buyer = person(["vendor"]), person(["buyer"])
    catalog = make_offer(db_session, vendor.org.id, price_minor=price_minor)
    fund_wallet(db_session, buyer.org.id, price_minor)
    assert accept_on_page(buyer, catalog, "purchase").status_code == 302
    return vendor, buyer


def _checkpoint(app, db_session) -> services.CheckpointView:
    """What each node's periodic task does: sequence committed records, sign a checkpoint."""
    journal.sequence(db_session)
    return services.create_checkpoint(db_session, app.extensions["audit_keys"])


# --- who may see the audit page -----------------------------------------------------------------


def test_only_auditors_and_administrators_reach_the_audit_page(app, person, platform_person):
    vendor, buyer = person(["vendor"]), person(["buyer"])
    both = person(["vendor", "buyer"])
    auditor, admin = platform_person("auditor"), platform_person("admin")
    for who, status in {vendor: 403, buyer: 403, both: 403, auditor: 200, admin: 200}.items():
        page = who.browser.get("/audit?lang=en")
        assert page.status_code == status, who.email
        nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', page.get_data(as_text=True), re.S)
        dashboard = who.browser.get("/dashboard?lang=en").get_data(as_text=True)
        shown = 'href="/audit"' in dashboard
        assert shown == (status == 200), who.email
        if nav is not None:
            assert ('href="/audit"' in nav.group(1)) == (status == 200)
    refused = vendor.browser.get("/audit?lang=en")
    assert 'data-code="forbidden"' in refused.get_data(as_text=True)
    assert app.test_client().get("/audit").status_code == 302  # anonymous: to the login page
    # The export too, with a valid CSRF token: the refusal is the role's, not the form's.
    exported = vendor.post("/audit/export", {"format": "jsonl"}, token_from="/dashboard")
    assert exported.status_code == 403
    assert not exported.headers.get("Content-Disposition")


def test_the_export_form_without_its_csrf_token_is_refused(app, platform_person):
    auditor = platform_person("auditor")
    resp = auditor.browser.post("/audit/export", data={"format": "jsonl"})
    assert resp.status_code == 400
    assert 'data-code="csrf_failed"' in resp.get_data(as_text=True)
    assert not resp.headers.get("Content-Disposition")
    assert auditor.browser.get("/audit").status_code == 200  # still logged in


# --- what the audit page shows and exports --------------------------------------------------------


def test_the_audit_page_shows_the_checkpoint_keys_and_platform_totals(
    app, person, platform_person, db_session
):
    _sale(person, db_session)
    checkpoint = _checkpoint(app, db_session)
    auditor = platform_person("auditor")
    page = auditor.browser.get("/audit?lang=en").get_data(as_text=True)
    assert html_lib.escape(checkpoint.note) in page
    assert f'<dd id="checkpoint-size">{checkpoint.size:,}</dd>' in page
    assert checkpoint.root.hex() in page
    (key,) = _VERIFIER_KEY.findall(page)
    assert VerifierKey.parse(key) == app.extensions["audit_keys"].verifier()
    assert f"--public-key '{key}'" in html_lib.unescape(page)  # the command to verify with
    # The platform fee of the sale (10% of ¥100.00) and the vendor's 90% in the totals.
    fees = re.search(r'<tr class="total"><th scope="row">All time</th><td>(.*?)</td>', page)
    assert fees is not None and "¥10.00" in fees.group(1)
    totals = re.search(r'<table id="account-totals">(.*?)</table>', page, re.S).group(1)
    payable_row = re.search(r"<tr><td>vendor_payable</td>(.*?)</tr>", totals).group(1)
    assert "¥90.00" in payable_row


def test_an_auditor_exports_the_apis_bytes_from_the_page_and_they_verify(
    app, client, person, platform_person, db_session, tmp_path
):
    _sale(person, db_session)
    checkpoint = _checkpoint(app, db_session)
    auditor = platform_person("auditor")
    key = _VERIFIER_KEY.findall(auditor.browser.get("/audit").get_data(as_text=True))[0]
    download = auditor.post("/audit/export", {"format": "jsonl"}, token_from="/audit")
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "application/jsonl"
    assert download.headers["Content-Disposition"] == (
        f'attachment; filename="jishi-audit-0-{checkpoint.size}.jsonl"'
    )
    api = platform_org(client, db_session, "auditor")
    same = client.get("/api/v1/audit/export", headers=api.headers("audit:read"))
    assert download.data == same.data  # one exporter: the page answers with the API's response
    path = tmp_path / "journal.jsonl"
    path.write_bytes(download.data)
    summary = verify_export(path, [VerifierKey.parse(key)])
    assert summary.to_size == checkpoint.size and summary.root == checkpoint.root
    spot = download.data.index(b'"amount_minor":10000')
    path.write_bytes(download.data[:spot] + b'"amount_minor":10001' + download.data[spot + 20 :])
    with pytest.raises(VerificationFailed):
        verify_export(path, [VerifierKey.parse(key)])

    ranged = auditor.post(
        "/audit/export", {"from_seq": "2", "to_size": "4", "format": "csv"}, token_from="/audit"
    )
    assert ranged.status_code == 200 and ranged.headers["Content-Type"].startswith("text/csv")
    lines = ranged.data.decode().splitlines()
    assert lines[0].startswith("seq,at,kind,") and [ln.split(",")[0] for ln in lines[1:]] == [
        "2",
        "3",
    ]


@pytest.mark.parametrize(
    ("form", "shown"),
    [
        ({"to_size": "99999", "format": "jsonl"}, "past the journal"),
        ({"from_seq": "3", "to_size": "1", "format": "jsonl"}, "from_seq"),
        ({"from_seq": "-1", "format": "jsonl"}, "From record"),
        ({"format": "xml"}, "Format"),
    ],
)
def test_a_bad_export_range_is_explained_on_the_page(
    app, person, platform_person, db_session, form, shown
):
    _sale(person, db_session)
    _checkpoint(app, db_session)
    auditor = platform_person("auditor")
    resp = auditor.post("/audit/export", form, token_from="/audit")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/audit#export")
    assert not resp.headers.get("Content-Disposition")
    page = auditor.browser.get("/audit?lang=en").get_data(as_text=True)
    flashed = re.search(r'<li class="flash error">(.*?)</li>', page, re.S)
    assert flashed is not None and shown in html_lib.unescape(flashed.group(1))


def test_the_audit_page_before_any_checkpoint(app, platform_person):
    page = platform_person("admin").browser.get("/audit?lang=en").get_data(as_text=True)
    assert "No checkpoint has been signed yet" in page
    assert len(_VERIFIER_KEY.findall(page)) == 1  # the key in use is shown before it signs


# --- payouts --------------------------------------------------------------------------------------


def _payable(db_session, organization_id: int) -> int:
    return account_posted(db_session, organization_id, VENDOR_PAYABLE)


def test_a_vendor_links_an_account_and_an_administrator_pays_it_out_from_the_page(
    app, person, platform_person, db_session
):
    vendor, buyer = _sale(person, db_session)
    assert _payable(db_session, vendor.org.id) == 9_000
    page = vendor.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert "Link a connected account to be paid out." in page and "No payouts yet." in page
    # Only a vendor links a payout account; only an administrator runs payouts.
    assert buyer.post("/dashboard/payout-account", {"account_ref": "acct_x"}).status_code == 403
    assert vendor.post("/admin/payouts/run", {}, token_from="/dashboard").status_code == 403
    refused = vendor.post("/dashboard/payout-account", {"account_ref": "not an account"})
    assert refused.status_code == 302
    assert payouts.get_payout_account(session=db_session, organization_id=vendor.org.id) is None
    vendor.post("/dashboard/payout-account", {"account_ref": "acct_1Weld"})
    page = vendor.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert "Payouts go to acct_1Weld." in page

    admin = platform_person("admin")
    resp = admin.post("/admin/payouts/run", {"organization_id": ""}, token_from="/admin")
    assert resp.status_code == 302
    (payout,) = db_session.exec(select(Payout)).all()
    assert (payout.organization_id, payout.amount_minor, payout.status) == (
        vendor.org.id,
        9_000,
        "paid",
    )
    flashes = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert "Payout run: 1 payouts." in flashes
    assert f"Payout {payout.id}: ¥90.00 to organisation {vendor.org.id}, paid." in flashes
    assert _payable(db_session, vendor.org.id) == 0
    page = vendor.browser.get("/dashboard?lang=en").get_data(as_text=True)
    row = re.search(rf"<tr><td>#{payout.id}</td>(.*?)</tr>", page, re.S).group(1)
    assert "¥90.00" in row and '<td class="payout-paid">paid</td>' in row
    assert payout.provider_ref in row
    # A second run finds nothing left to pay.
    admin.post("/admin/payouts/run", {}, token_from="/admin")
    assert len(db_session.exec(select(Payout)).all()) == 1


def test_an_administrator_sends_a_failed_payout_transfer_again_from_the_page(
    app, person, platform_person, db_session
):
    vendor, _buyer = _sale(person, db_session)
    vendor.post("/dashboard/payout-account", {"account_ref": "acct_1Weld"})
    # A run whose transfer then failed after every automatic retry: the money stays held.
    (payout,) = payouts.run_payouts(
        session=db_session,
        gateway=app.extensions["payment_gateway"],
        minimum_minor=app.extensions["settings"].payout_minimum_minor,
    )
    message = db_session.exec(
        select(PaymentOutbox).where(PaymentOutbox.subject_id == payout.id)
    ).one()
    db_session.execute(
        sa.update(PaymentOutbox)
        .where(PaymentOutbox.id == message.id)
        .values(status=OUTBOX_FAILED, attempts=10, last_error="provider unavailable")
    )
    db_session.commit()
    page = vendor.browser.get("/dashboard?lang=en").get_data(as_text=True)
    assert "¥90.00 held for a payout in progress" in re.sub(r"<[^>]+>", "", page)
    assert '<td class="payout-pending">held: being paid</td>' in page

    admin = platform_person("admin")
    listed = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert f"/admin/payments/outbox/{message.id}/retry" in listed
    assert "provider unavailable" in listed
    assert person(["buyer"]).post(f"/admin/payments/outbox/{message.id}/retry").status_code == 403
    admin.post(f"/admin/payments/outbox/{message.id}/retry", token_from="/admin")
    db_session.expire_all()
    assert db_session.get(Payout, payout.id).status == "paid"
    assert _payable(db_session, vendor.org.id) == 0
    after = admin.browser.get("/admin?lang=en").get_data(as_text=True)
    assert f"Provider call {message.id} sent again: done." in after
    assert "No failed calls." in after
    # Sending a call that has not failed again is refused, and says why.
    admin.post(f"/admin/payments/outbox/{message.id}/retry", token_from="/admin")
    assert "Only a failed provider call can be retried." in admin.browser.get(
        "/admin?lang=en"
    ).get_data(as_text=True)
