"""Migration 0005 keeps every organisation able to manage clients and re-renders model cards."""

from __future__ import annotations

import sqlalchemy as sa

from marketplace import migrate

PIXEL_HTML = '<p><img src="https://tracker.example/p.gif" alt="pixel"></p>'


def test_0005_gives_the_oldest_client_clients_manage_and_renders_cards_again(
    db_backend, scratch_databases
):
    _url, engine = scratch_databases.create(db_backend, migrated=False)
    migrate.upgrade(engine, "0004")
    with engine.begin() as connection:
        org = connection.execute(
            sa.text(
                "INSERT INTO organizations (name, roles, suspended, created_at) "
                "VALUES ('Old Co', 'vendor', false, CURRENT_TIMESTAMP) RETURNING id"
            )
        ).scalar_one()
        for client_id, scope in (
            ("jc_first", "models:read models:write"),
            ("jc_second", "models:read"),
        ):
            connection.execute(
                sa.text(
                    "INSERT INTO oauth_clients (client_id, client_secret_hash, organization_id, "
                    "name, scope, created_at) VALUES (:cid, 'h', :org, 'c', :scope, "
                    "CURRENT_TIMESTAMP)"
                ),
                {"cid": client_id, "org": org, "scope": scope},
            )
        connection.execute(
            sa.text(
                "INSERT INTO listings (organization_id, slug, name, summary, description_md, "
                "description_html, task, tags, status, created_at, updated_at) VALUES (:org, "
                "'old', 'Old', '', :md, :html, 'x', ',', 'active', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            ),
            {"org": org, "md": "![pixel](https://tracker.example/p.gif)", "html": PIXEL_HTML},
        )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        scopes = dict(
            connection.execute(sa.text("SELECT client_id, scope FROM oauth_clients")).all()
        )
        html = connection.execute(sa.text("SELECT description_html FROM listings")).scalar_one()
        flag = connection.execute(
            sa.text("SELECT count(*) FROM offers WHERE trial_requires_verified_org")
        ).scalar_one()
    assert scopes == {
        "jc_first": "clients:manage models:read models:write",
        "jc_second": "models:read",
    }
    assert "<img" not in html
    assert 'href="https://tracker.example/p.gif"' in html
    assert flag == 0
