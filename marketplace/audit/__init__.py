"""The audit journal: hash-chained records, a Merkle tree, signed checkpoints, exports."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def _actor_from_token(_sender: Any, token: Any = None, **_extra: Any) -> None:
    from marketplace.audit import journal

    if token is not None:
        journal.set_actor(
            journal.Actor(
                organization_id=token.organization_id, client_id=token.client_id, via="api"
            )
        )


def periodic_run(app: Flask) -> None:
    """Sequence committed records; checkpoint every N records or T seconds (on every node)."""
    from marketplace.audit import journal, services

    settings = app.extensions["settings"]
    session = app.extensions["db"].session()
    try:
        journal.sequence(session, wait=False)
        if services.checkpoint_due(
            session,
            interval_records=settings.audit_checkpoint_interval_records,
            interval_s=settings.audit_checkpoint_interval_s,
        ):
            services.create_checkpoint(session, app.extensions["audit_keys"])
    finally:
        session.close()


def init_app(app: Flask) -> None:
    """The key store, the ledger hook, the actor of each request, the API and periodic work."""
    from authlib.integrations.flask_oauth2.signals import token_authenticated

    from marketplace import periodic
    from marketplace.audit import journal
    from marketplace.audit.keys import default_origin, open_key_store
    from marketplace.audit.notes import NoteError, check_key_name
    from marketplace.audit.pages import AuditPages
    from marketplace.audit.views import bp
    from marketplace.config import ConfigError

    settings = app.extensions["settings"]
    origin = settings.audit_origin or default_origin()
    try:
        check_key_name(origin)
    except NoteError:
        raise ConfigError(
            f"MARKETPLACE_AUDIT_ORIGIN {origin!r} must be non-empty, without spaces or '+'"
        ) from None
    app.extensions["audit_keys"] = open_key_store(
        key_path=settings.audit_key_path,
        origin=origin,
        instance_path=Path(app.instance_path),
        development=settings.is_development,
    )
    app.extensions["audit_pages"] = AuditPages.from_settings(settings)
    app.extensions["audit_export_slots"] = threading.BoundedSemaphore(
        max(1, settings.audit_exports_max)
    )
    journal.install()
    token_authenticated.connect(_actor_from_token, weak=False)

    @app.before_request
    def _anonymous_request_actor() -> None:
        # A request acts for nobody until its token is verified (threads are reused).
        journal.set_actor(journal.Actor(via="api"))

    @app.teardown_request
    def _forget_request_actor(_exc: BaseException | None) -> None:
        journal.set_actor(journal.SYSTEM)

    periodic.register(app, "audit.sequence", settings.audit_sequence_interval_s, periodic_run)
    app.register_blueprint(bp)
