"""The app factory, settings, the production guard, error rendering and the OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from marketplace import create_app, migrate
from marketplace.audit.keys import write_private_key
from marketplace.audit.notes import Signer
from marketplace.config import DEVELOPMENT_SECRET_KEY, ConfigError, Settings, setting_names
from marketplace.migrate import SchemaNotCurrent

README = Path(__file__).resolve().parents[3] / "README.md"


def test_settings_layering_defaults_then_environment_then_dict():
    env = {"MARKETPLACE_ACCESS_TOKEN_TTL_S": "120", "MARKETPLACE_PAYMENTS": "offline"}
    assert Settings.load(None, env).access_token_ttl_s == 120
    assert Settings.load({"ACCESS_TOKEN_TTL_S": 60}, env).access_token_ttl_s == 60
    assert Settings.load(None, {}).access_token_ttl_s == 3600


@pytest.mark.parametrize(
    "env",
    [
        {"MARKETPLACE_ACCESS_TOKEN_TTL_S": "soon"},
        {"MARKETPLACE_ENV": "staging"},
        {"MARKETPLACE_PAYMENTS": "cash"},
        {"MARKETPLACE_MODEL_BYTES_MAX": "-1"},
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(env):
    with pytest.raises(ConfigError) as exc:
        Settings.load(None, env)
    assert next(iter(env)).removeprefix("MARKETPLACE_") in str(exc.value)


def test_production_refuses_development_secret(tmp_path):
    with pytest.raises(ConfigError, match="MARKETPLACE_SECRET_KEY"):
        create_app(
            {
                "ENV": "production",
                "INSTANCE_PATH": str(tmp_path),
                "SECRET_KEY": DEVELOPMENT_SECRET_KEY,
            }
        )


def test_production_refuses_an_unmigrated_database(tmp_path, db_backend, scratch_databases):
    url, engine = scratch_databases.create(db_backend, migrated=False)
    key_path = tmp_path / "audit.key"
    write_private_key(key_path, Signer.generate("jishi.example/log"))
    config = {
        "ENV": "production",
        "INSTANCE_PATH": str(tmp_path),
        "SECRET_KEY": "s" * 40,
        "DATABASE_URL": url,
        "PAYMENTS": "stripe",  # production refuses offline (simulated) payments
        "STRIPE_API_KEY": "sk_live_not_used_here",
        "STRIPE_WEBHOOK_SECRET": "whsec_not_used_here",
        "AUDIT_KEY_PATH": str(key_path),
        "AUDIT_ORIGIN": "jishi.example/log",
    }
    with pytest.raises(SchemaNotCurrent, match="jishi db upgrade"):
        create_app(config)
    migrate.upgrade(engine)
    app = create_app(config)
    app.extensions["db"].engine.dispose()


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text(encoding="utf-8")
    missing = [name for name in setting_names() if name not in text]
    assert missing == []


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/api/v1/no-such-thing", 404, "not_found"),
        ("delete", "/api/v1/register", 405, "method_not_allowed"),
    ],
)
def test_api_errors_are_problem_json(client, method, path, status, code):
    resp = getattr(client, method)(path)
    assert resp.status_code == status
    assert resp.mimetype == "application/problem+json"
    assert resp.json["code"] == code
    assert set(resp.json) >= {"type", "title", "status", "detail", "code"}


@pytest.fixture
def exploding_client(app):
    @app.get("/api/v1/_explode")
    def explode():
        raise RuntimeError("secret host path /srv/jishi/instance/key.pem")

    return app.test_client()


def test_unexpected_error_is_opaque_500(exploding_client, caplog):
    resp = exploding_client.get("/api/v1/_explode")
    assert resp.status_code == 500
    assert resp.json["code"] == "internal_error"
    body = resp.get_data(as_text=True)
    assert "/srv/jishi" not in body and "Traceback" not in body
    assert "secret host path" in caplog.text  # the server log keeps the detail


def test_openapi_documents_every_api_route(app, client):
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api") or "/_" in rule.rule:
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if (path, method.lower()) not in documented:
                missing.append(f"{method} {rule.rule}")
    assert missing == [], f"routes missing from the OpenAPI document: {missing}"
    register = spec["paths"]["/api/v1/register"]["post"]
    assert "201" in register["responses"]
    assert register["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RegisterRequest"
    )
