"""Production never takes simulated money and never loads demo accounts."""

from __future__ import annotations

import dataclasses

import pytest
from sqlmodel import select

from marketplace.accounts.models import User
from marketplace.config import ConfigError, Settings
from marketplace.demo import DEMO_VENDOR

PRODUCTION = {"ENV": "production", "SECRET_KEY": "p" * 40}


def test_production_refuses_offline_payments_before_it_serves(live_server):
    # The attack: a production node on the default offline gateway credited 3,000,000.00 CNY
    # of simulated top-ups. Now such a node does not start.
    with pytest.raises(ConfigError, match="MARKETPLACE_PAYMENTS=offline"):
        live_server(**PRODUCTION, PAYMENTS="offline")


def test_only_production_refuses_offline_payments():
    with pytest.raises(ConfigError, match="MARKETPLACE_PAYMENTS"):
        Settings.load(PRODUCTION, environ={}).check_production_secrets()
    # A production configuration names a real gateway (stripe's settings come with it).
    Settings.load({**PRODUCTION, "PAYMENTS": "stripe"}, environ={}).check_production_secrets()
    for env in ("development", "testing"):
        Settings.load({"ENV": env, "PAYMENTS": "offline"}, environ={}).check_production_secrets()


@pytest.fixture
def production_runner(app):
    """The CLI of an app whose settings are production's.

    A production app cannot be built here yet: offline payments are refused and the Stripe
    gateway that production needs is not built. So the test app (same database, same
    commands) is given production settings with stripe configured; nothing else is replaced.
    """
    settings = app.extensions["settings"]
    app.extensions["settings"] = dataclasses.replace(settings, env="production", payments="stripe")
    yield app.test_cli_runner()
    # `serve` migrates through the app's engine, which the test's sessions do not use.
    app.extensions["db"].engine.dispose()


def test_demo_data_command_refuses_in_production(production_runner, db_session):
    result = production_runner.invoke(args=["demo-data"])
    assert result.exit_code != 0
    assert "production" in result.output
    assert db_session.exec(select(User).where(User.email == DEMO_VENDOR)).first() is None
    assert "client_secret" not in result.output


def test_serve_skips_demo_data_in_production_and_says_why(
    production_runner, db_session, monkeypatch
):
    # The server itself would block the test for ever; only whether it was started is checked.
    started: list[object] = []
    monkeypatch.setattr("marketplace.serving.serve", lambda *a, **k: started.append(a))
    result = production_runner.invoke(args=["serve", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "demo data not loaded: production" in result.output
    assert "client_secret" not in result.output
    assert db_session.exec(select(User).where(User.email == DEMO_VENDOR)).first() is None
    assert len(started) == 1
