"""The OpenAPI document validates against the OpenAPI 3.1 schema, and its docs page works offline."""

from __future__ import annotations

from openapi_spec_validator import validate


def test_the_document_is_valid_openapi_3_1(client):
    spec = client.get("/api/v1/openapi.json").json
    validate(spec)


def test_integer_path_parameters_are_integers(client):
    spec = client.get("/api/v1/openapi.json").json
    params = spec["paths"]["/api/v1/models/{model_id}"]["get"]["parameters"]
    (model_id,) = [p for p in params if p["name"] == "model_id"]
    assert model_id["schema"]["type"] == "integer"


def test_docs_page_serves_swagger_ui_from_the_app(client):
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/api/docs/_assets/swagger-ui-bundle.js" in html
    assert "http://" not in html and "https://" not in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "init.js"):
        with client.get(f"/api/docs/_assets/{asset}") as resp:
            assert resp.status_code == 200, asset
            assert len(resp.data) > 10
    assert b"/api/v1/openapi.json" in client.get("/api/docs/_assets/init.js").data
    missing = client.get("/api/docs/_assets/..%2Fpyproject.toml")
    assert missing.status_code == 404
    assert client.get("/api/docs/_assets/index.html").status_code == 404
