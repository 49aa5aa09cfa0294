"""The auditor's page and the payout parts of the dashboard and the administrator's page, through
the test client on both databases: who may see them, what they show, and that their actions are
the API's own (the export's bytes, the payout services)."""

from __future__ import annotations

import html as html_lib
import re

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

import pytest

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
