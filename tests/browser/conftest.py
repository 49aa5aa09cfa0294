"""The browser suite: Debian's Chromium driven by Playwright, one browser for the whole run,
one live marketplace (SQLite, real sandbox, real HTTP) for each module.

Never a downloaded browser: ``.ci/install-browser`` installs Debian's ``chromium`` and
``fonts-noto-cjk``. Without ``/usr/bin/chromium`` the suite skips, except under CI, where that
is a failure. Screenshots of every page at 1280 and 390 pixels go to ``artifacts/screenshots``
(git-ignored); with ``JISHI_README_SCREENSHOTS=1`` the README's pictures in
``docs/screenshots`` are taken again from the same pages.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from marketplace import create_app
from marketplace.accounts import services as accounts
from tests.conftest import ScratchDatabases, _test_config

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "screenshots"
README_SHOTS = ROOT / "docs" / "screenshots"
WIDTHS = (1280, 390)
PASSWORD = "Correct-Horse-9-Battery"


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the whole run."""
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing; run .ci/install-browser (Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI is set")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@dataclass
class Site:
    """A live marketplace and what the journeys leave behind for the next step."""

    app: Flask
    url: str
    state: dict[str, Any] = field(default_factory=dict)

    def platform_user(self, role: str, email: str) -> str:
        with self.app.app_context():
            from marketplace.db import get_session

            accounts.create_platform_user(
                session=get_session(), email=email, password=PASSWORD, role=role
            )
        return email


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, scratch_databases: ScratchDatabases
) -> Iterator[Site]:
    """The journeys run on SQLite only: the pages' rules are tested on both databases with
    the test client, and one browser suite keeps CI's time modest."""
    tmp = tmp_path_factory.mktemp("site")
    url, _engine = scratch_databases.create("sqlite")
    app = create_app(
        _test_config(tmp, url, EVAL_TIMEOUT_S=5.0, SANDBOX_WORKERS_MAX=1, SANDBOX_QUEUE_MAX=4)
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Site(app, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    server.server_close()
    app.extensions["sandbox_pool"].close()
    app.extensions["db"].engine.dispose()


def shoot(page: Any, name: str, *, readme: str | None = None, focus: str = "main") -> None:
    """Full-page screenshots at each width (artifacts). With ``readme`` and
    ``JISHI_README_SCREENSHOTS`` set, also the README's picture: the 1280-pixel view with
    ``focus`` scrolled to the top."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        path = ARTIFACTS / f"{name}-{width}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
    if readme and os.environ.get("JISHI_README_SCREENSHOTS"):
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.locator(focus).first.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.screenshot(path=str(README_SHOTS / f"{readme}.png"))
    page.set_viewport_size(size)
