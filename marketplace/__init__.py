"""Jishi (算法集市): the marketplace web service and its business domains."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from marketplace.config import Settings


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: typed defaults, then ``MARKETPLACE_*`` environment, then ``config``."""
    settings = Settings.load(config)
    app = Flask(
        __name__,
        instance_path=str(Path(settings.instance_path).resolve())
        if settings.instance_path
        else None,
        instance_relative_config=True,
    )
    settings.check_production_secrets()
    settings.check_payments()
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["JSON_SORT_KEYS"] = False
    for key, value in (config or {}).items():
        if key.isupper() and key.lower() not in settings.__dataclass_fields__:
            app.config[key] = value  # plain Flask keys such as TESTING
    if settings.trusted_hosts:
        app.config["TRUSTED_HOSTS"] = [
            host.strip() for host in settings.trusted_hosts.split(",") if host.strip()
        ]
    app.extensions["settings"] = settings
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=settings.log_level)
    # Authlib logs issued tokens verbatim at DEBUG; tokens must never reach a log.
    logging.getLogger("authlib").setLevel(max(logging.INFO, logging.getLogger().level))

    if settings.trusted_proxy_hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops
        )

    from marketplace import api, db, errors
    from marketplace.accounts import init_app as init_accounts
    from marketplace.accounts.oauth import config_oauth

    database_url = settings.database_url or db.default_sqlite_url(Path(app.instance_path))
    db.init_app(
        app,
        db.Database(db.make_engine(database_url, lock_timeout_s=settings.database_lock_timeout_s)),
    )
    if not settings.is_development:
        # First of the checks that need the database: nothing below is worth reporting on a
        # schema this release cannot use.
        from marketplace.migrate import require_current_schema

        try:
            require_current_schema(app)
        except Exception:
            app.extensions["db"].engine.dispose()
            raise
    errors.init_app(app)
    api.init_app(app)
    config_oauth(app)
    init_accounts(app)

    from marketplace.catalog import init_app as init_catalog
    from marketplace.licensing.entitlements import may_download

    init_catalog(app, download_policy=may_download)

    from marketplace.evaluation import init_app as init_evaluation

    init_evaluation(app)

    from marketplace.jobs import init_app as init_jobs

    init_jobs(app)

    from marketplace.ledger import init_app as init_ledger
    from marketplace.licensing import init_app as init_licensing
    from marketplace.payments import init_app as init_payments

    init_payments(app)
    init_licensing(app)
    init_ledger(app)

    from marketplace.audit import init_app as init_audit

    init_audit(app)

    from marketplace.web import init_app as init_web

    init_web(app)

    from marketplace import cli

    cli.init_app(app)
    return app
