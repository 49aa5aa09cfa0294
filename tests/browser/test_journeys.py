"""Journeys through the pages in a real browser: a vendor publishes, a buyer finds, trials, runs,
tops up and buys, an administrator suspends, an auditor exports and verifies offline. Each step builds on the one before (one live
marketplace per module), every page is checked for contrast and labels and photographed."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from marketplace.audit import journal
from marketplace.audit import services as audit
from marketplace.db import get_session
from marketplace.demo import defect_scorer_model
from tests.browser.a11y import check_page
from tests.browser.conftest import PASSWORD, Site, shoot

VENDOR = "vendor@journey.test"
BUYER = "buyer@journey.test"
ADMIN = "admin@journey.test"
AUDITOR = "auditor@journey.test"
MODEL = "Weld defect scorer 焊缝缺陷评分"


@pytest.fixture
def new_page(chromium: Any) -> Any:
    """A fresh browser context (its own cookies) in the viewer's zone; a dialog fails the test."""
    contexts: list[Any] = []
    dialogs: list[str] = []

    def make(*, javascript: bool = True, locale: str = "en-US") -> Any:
        context = chromium.new_context(
            locale=locale,
            timezone_id="Asia/Shanghai",
            viewport={"width": 1280, "height": 900},
            java_script_enabled=javascript,
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        return page

    yield make
    for context in contexts:
        context.close()
    assert dialogs == [], f"a page opened a dialog (script ran): {dialogs}"


def log_in(page: Any, site: Site, email: str) -> None:
    page.goto(f"{site.url}/login?lang=en")
    page.get_by_label("E-mail address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/dashboard"))


def register(page: Any, site: Site, email: str, organisation: str, role: str) -> None:
    page.goto(f"{site.url}/register?lang=en")
    page.get_by_label("E-mail address").fill(email)
    page.get_by_label(re.compile("^Password")).fill(PASSWORD)
    page.get_by_label("Organisation name").fill(organisation)
    page.get_by_label(re.compile(rf"\({role}\)")).check()
    check_page(page)
    shoot(page, f"register-{role}")
    page.get_by_role("button", name="Register").click()
    page.get_by_text("Welcome to Jishi").wait_for()
    assert re.search(r"jcs_[\w-]{20,}", page.content())  # the client secret, shown once


def sample_npz(tmp_path: Any) -> str:
    path = tmp_path / "sample.npz"
    buffer = io.BytesIO()
    np.savez(buffer, readings=np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16))
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_vendor_registers_logs_in_lists_uploads_and_offers(site, new_page, tmp_path):
    page = new_page()
    register(page, site, VENDOR, "Weld Vision Lab 焊缝视觉", "vendor")
    page.get_by_role("button", name="Log out").click()
    log_in(page, site, VENDOR)
    check_page(page)

    page.get_by_role("link", name="New listing").click()
    page.get_by_label("Name").fill(MODEL)
    page.get_by_label("Summary").fill("Probability of a defect from 16 ultrasonic readings.")
    page.get_by_label(re.compile("^Task")).fill("anomaly-detection")
    page.get_by_label(re.compile("^Tags")).fill("manufacturing, welding")
    page.get_by_label(re.compile("^Filing number")).fill("110108-2026-0042")
    page.get_by_label("Model card (Markdown)").fill("# Weld defects\n\nScores **16** readings.")
    check_page(page)
    shoot(page, "listing-new")
    page.get_by_role("button", name="Create listing").click()
    page.wait_for_url(re.compile(r"/dashboard/listings/\d+"))
    site.state["listing_id"] = int(page.url.rsplit("/", 1)[1].split("#")[0])

    model = tmp_path / "scorer.onnx"
    model.write_bytes(defect_scorer_model())
    page.get_by_role("textbox", name="Version (e.g. 1.0.0)").fill("1.0.0")
    page.get_by_label("ONNX file").set_input_files(str(model))
    page.get_by_role("button", name="Upload version").click()
    page.locator("#upload-progress-wrap:not([hidden])").wait_for()
    page.locator("#upload-status", has_text="Published: 1.0.0").wait_for()
    assert page.locator("#upload-progress").evaluate("p => p.value") == 100
    page.locator(".version-row h3", has_text="1.0.0").wait_for()  # the page reloaded

    page.locator('[id="sample-1.0.0"]').set_input_files(sample_npz(tmp_path))
    page.get_by_role("button", name="Attach sample to 1.0.0").click()
    page.get_by_text("Sample input attached to 1.0.0.").wait_for()

    for name, kind, price, royalty in [
        ("Pay per inference 按次计费", "per_inference", "0", "5.00"),
        ("Perpetual on-premise", "perpetual", "100.00", "0"),
    ]:
        page.get_by_label("Offer name").fill(name)
        page.get_by_label("Kind").select_option(kind)
        page.get_by_label("Currency").select_option("CNY")
        page.get_by_label("Price", exact=True).fill(price)
        page.get_by_label("Royalty per 1,000 calls").fill(royalty)
        page.get_by_label("Trial calls").fill("3")
        page.get_by_label("Trial days").fill("14")
        page.get_by_label("Commercial use allowed").check()
        page.get_by_label("Licence terms (Markdown)").fill(f"Terms of {name}.")
        page.get_by_role("button", name="Publish offer").click()
        page.get_by_text(f"Offer “{name}” published.").wait_for()
    check_page(page)
    shoot(page, "listing-manage")


def test_buyer_finds_trials_runs_tops_up_buys_and_sees_licence_and_statement(
    site, new_page, tmp_path
):
    listing_id = site.state["listing_id"]
    page = new_page()
    register(page, site, BUYER, "Harbin Boiler Works 哈尔滨锅炉厂", "buyer")

    page.goto(f"{site.url}/?lang=en")
    page.get_by_label("Search").fill("weld")
    page.get_by_role("button", name="Search").click()
    card = page.locator(".model-card", has_text=MODEL)
    assert "Free trial" in card.inner_text() and "110108-2026-0042" in card.inner_text()
    check_page(page)
    shoot(page, "catalog", readme="catalog")
    card.get_by_role("link", name=MODEL).click()
    page.wait_for_url(f"**/models/{listing_id}")

    metered = page.locator(".offer", has_text="Pay per inference")
    metered.get_by_label("I have read and accept these terms").first.check()
    metered.get_by_role("button", name="Start trial").click()
    page.get_by_text("Your trial has started: 3 calls.").wait_for()

    page.get_by_label("Use the vendor's sample input").check()
    page.get_by_role("button", name="Run").click()
    result = page.locator("#tryit-result")
    result.locator("pre.output").wait_for()
    text = result.inner_text()
    assert "defect_probability" in text and "float32 [1,1]" in text
    assert "Trial calls left: 2" in text and "Latency" in text
    probability = float(re.search(r"\[([0-9.e-]+)\]", result.locator("pre").inner_text())[1])
    assert 0.0 < probability < 1.0
    check_page(page)
    shoot(page, "model-try-it", readme="model-try-it", focus="#try-it")

    page.goto(f"{site.url}/dashboard")
    page.get_by_label("Amount").fill("200")
    page.get_by_role("button", name="Top up").click()
    page.get_by_text("Topped up ¥200.00. (simulated: no real money moved)").wait_for()
    assert "¥200.00" in page.locator("#wallet").inner_text()

    page.goto(f"{site.url}/models/{listing_id}")
    perpetual = page.locator(".offer", has_text="Perpetual on-premise")
    perpetual.get_by_label("I have read and accept these terms").last.check()
    perpetual.get_by_role("button", name=re.compile("^Buy")).click()
    page.get_by_text(re.compile(r"Bought: order \d+, ¥100.00\.")).wait_for()
    licences = page.locator("#licences + .table-wrap").inner_text()
    assert "perpetual" in licences and "trial" in licences and MODEL in licences
    assert "¥100.00" in page.locator("#wallet").inner_text()
    statement = page.locator("#statement ~ .table-wrap").inner_text()
    assert "purchase" in statement and "top_up" in statement
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the statement (CSV)").click()
    rows = download.value.path().read_text()
    assert "purchase" in rows and "100.00" in rows and "200.00" in rows
    check_page(page)
    shoot(page, "dashboard-buyer")


def test_vendor_dashboard_charts_the_sale(site, new_page):
    page = new_page()
    log_in(page, site, VENDOR)
    chart = page.locator("svg.chart").first
    assert chart.get_attribute("aria-label") == "Sales per day (CNY): ¥100.00"
    assert chart.locator("rect").count() == 30
    check_page(page)
    shoot(page, "dashboard-vendor", readme="dashboard-chart", focus="#vendor")


def test_admin_suspends_and_the_buyers_model_page_says_so(site, new_page):
    listing_id = site.state["listing_id"]
    site.platform_user("admin", ADMIN)
    admin = new_page()
    log_in(admin, site, ADMIN)
    admin.get_by_role("link", name="Admin", exact=True).click()
    organisation = admin.locator("#organizations tr", has_text="Harbin Boiler Works")
    organisation.get_by_role("button", name=re.compile("^Verify")).click()
    admin.get_by_text("“Harbin Boiler Works 哈尔滨锅炉厂” is verified.").wait_for()
    row = admin.locator("tr", has_text=MODEL)
    row.get_by_role("button", name=re.compile("^Suspend")).click()
    admin.get_by_text(f"“{MODEL}” is suspended.").wait_for()
    check_page(admin)
    shoot(admin, "admin")

    buyer = new_page()
    log_in(buyer, site, BUYER)
    buyer.goto(f"{site.url}/models/{listing_id}")
    assert "This model is suspended" in buyer.locator("main").inner_text()
    check_page(buyer)
    shoot(buyer, "model-suspended")
    anonymous = new_page()
    response = anonymous.goto(f"{site.url}/models/{listing_id}")
    assert response.status == 404

    row = admin.locator("tr", has_text=MODEL)
    row.get_by_role("button", name=re.compile("^Reinstate")).click()
    admin.get_by_text(f"“{MODEL}” is active again.").wait_for()


def test_a_vendor_is_paid_out_by_an_administrator(site, new_page):
    vendor = new_page()
    log_in(vendor, site, VENDOR)
    payouts = vendor.locator("#payouts")
    assert "¥90.00" in payouts.locator(".big").inner_text() and "No payouts yet." in (
        payouts.inner_text()
    )
    vendor.get_by_label(re.compile("^Connected account for payouts")).fill("acct_1WeldVision")
    vendor.get_by_role("button", name="Save payout account").click()
    vendor.get_by_text("Payouts go to acct_1WeldVision from now on.").wait_for()

    admin = new_page()
    log_in(admin, site, ADMIN)
    admin.goto(f"{site.url}/admin#payouts")
    admin.get_by_role("button", name="Run payouts now").click()
    admin.get_by_text("Payout run: 1 payouts.").wait_for()
    admin.get_by_text(re.compile(r"Payout \d+: ¥90\.00 to organisation \d+, paid\.")).wait_for()
    assert "No failed calls." in admin.locator("#payments").inner_text()
    check_page(admin)
    shoot(admin, "admin-payouts")

    vendor.reload()
    row = vendor.locator("#payouts tbody tr").first
    assert "¥90.00" in row.inner_text() and "paid" in row.inner_text()
    assert "¥0.00" in vendor.locator("#payouts .big").inner_text()
    check_page(vendor)
    shoot(vendor, "dashboard-vendor-payouts")


def _offline(command: list[str], cwd: Any) -> subprocess.CompletedProcess[str]:
    """Run a ``jishi`` command line with no database or network to reach, as on an auditor's
    own machine."""
    env = {
        **os.environ,
        "MARKETPLACE_DATABASE_URL": "postgresql+psycopg://nobody@192.0.2.1:1/none",
        "MARKETPLACE_ENV": "production",
    }
    assert command[0] == "jishi"
    jishi = "import sys; from marketplace.cli import main; sys.argv[0] = 'jishi'; main()"
    return subprocess.run(
        [sys.executable, "-c", jishi, *command[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_an_auditor_sees_the_checkpoint_exports_and_verifies_the_file_offline(
    site, new_page, tmp_path
):
    with site.app.app_context():
        # What each node's periodic task does every minute.
        session = get_session()
        journal.sequence(session)
        checkpoint = audit.create_checkpoint(session, site.app.extensions["audit_keys"])
    assert checkpoint.size > 10  # the journeys above left their records
    site.platform_user("auditor", AUDITOR)
    page = new_page()
    log_in(page, site, AUDITOR)
    page.get_by_role("link", name="Audit", exact=True).click()
    page.wait_for_url("**/audit")
    assert page.locator("#checkpoint-note").inner_text().strip() == checkpoint.note.strip()
    assert page.locator("#checkpoint-size").inner_text() == f"{checkpoint.size:,}"
    assert page.locator("#checkpoint-root").inner_text() == checkpoint.root.hex()
    key = page.locator("tr.current-key .verifier-key").inner_text()
    assert "fees" in page.locator("#totals").inner_text().lower()
    check_page(page)
    shoot(page, "audit")

    page.get_by_label("Format").select_option("jsonl")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export").click()
    name = download.value.suggested_filename
    assert name == f"jishi-audit-0-{checkpoint.size}.jsonl"
    download.value.save_as(tmp_path / name)
    # The command the page shows, run as shown on the file as downloaded.
    command = shlex.split(page.locator("#verify-command").inner_text())
    assert command[:3] == ["jishi", "audit", "verify"] and command[3] == name
    assert command[4:] == ["--public-key", key]
    verified = _offline(command, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("verified") and f"{checkpoint.size}" in verified.stdout

    data = (tmp_path / name).read_bytes()
    spot = data.index(b'"amount_minor":10000')
    (tmp_path / name).write_bytes(data[:spot] + b'"amount_minor":90000' + data[spot + 20 :])
    tampered = _offline(command, tmp_path)
    assert tampered.returncode == 1
    assert "NOT VERIFIED" in tampered.stderr and "seq" in tampered.stderr

    page.goto(f"{site.url}/audit?lang=zh")
    assert "最新签名检查点" in page.content()
    check_page(page)
    shoot(page, "audit-zh")


def test_the_audit_page_refuses_vendors_and_buyers(site, new_page):
    for email in (VENDOR, BUYER):
        page = new_page()
        log_in(page, site, email)
        assert page.get_by_role("link", name="Audit", exact=True).count() == 0
        response = page.goto(f"{site.url}/audit")
        assert response.status == 403
        assert "Only auditors and administrators may open this page." in page.content()


def test_reading_pages_work_without_javascript(site, new_page):
    page = new_page(javascript=False)
    page.goto(f"{site.url}/?lang=en")
    page.get_by_label("Task").select_option("anomaly-detection")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=MODEL).click()
    assert "Weld defects" in page.locator(".markdown").first.inner_text()
    assert "Terms hash (SHA-256)" in page.content()
    log_in(page, site, BUYER)
    assert MODEL in page.locator("#licences + .table-wrap").inner_text()
    shoot(page, "dashboard-buyer-nojs")


def test_chinese_pages_render_with_cjk_fonts(site, new_page):
    page = new_page(locale="zh-CN")
    page.goto(f"{site.url}/")
    assert page.get_by_label("搜索").is_visible()
    assert "个模型" in page.locator(".count").inner_text()
    check_page(page)
    shoot(page, "catalog-zh")
    log_in(page, site, BUYER)  # the login page is asked for in English: the choice is kept
    page.goto(f"{site.url}/dashboard?lang=zh")
    assert "钱包" in page.content() and "¥" in page.locator("#wallet").inner_text()
    check_page(page)
    shoot(page, "dashboard-buyer-zh")


def test_a_hostile_model_card_runs_no_script(site, new_page):
    page = new_page()
    log_in(page, site, VENDOR)
    page.goto(f"{site.url}/dashboard/listings/new")
    page.get_by_label("Name").fill("Hostile card")
    page.get_by_label(re.compile("^Task")).fill("test")
    page.get_by_label("Model card (Markdown)").fill(
        "<script>alert('s')</script>\n<img src=x onerror=\"alert('i')\">\n"
        "[go](javascript:alert('l'))\n\n<svg onload=\"alert('v')\">"
    )
    page.get_by_role("button", name="Create listing").click()
    page.get_by_role("link", name="See the public page").click()
    card = page.locator(".markdown").first
    assert card.locator("script, img, svg, [onerror], [onload]").count() == 0
    assert "<script>alert('s')</script>" in card.inner_text()  # shown as text
    page.get_by_text("[go](javascript:alert('l'))").click()  # text, not a link: nothing runs


def test_the_api_reference_renders_under_its_content_security_policy(site, new_page):
    page = new_page()
    refused: list[str] = []
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    response = page.goto(f"{site.url}/api/docs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # Swagger UI drew the document: its operations, by tag.
    page.locator(".opblock-tag", has_text="wallet").first.wait_for()
    assert page.locator(".opblock").count() > 20
    assert refused == [], refused
