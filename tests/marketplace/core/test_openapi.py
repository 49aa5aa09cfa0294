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
    # Swagger UI 5: the first that reads OpenAPI 3.1 (4.x refused the document outright; the
    # browser suite checks that the page draws the operations).
    with client.get("/api/docs/_assets/swagger-ui-bundle.js") as bundle:
        assert b"isOAS31" in bundle.data
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_every_html_answer_carries_a_content_security_policy(client):
    """Werkzeug's own error pages went out without one."""
    for path, method in [("/no-such-page", "get"), ("/oauth/token", "get"), ("/static/x", "get")]:
        resp = getattr(client, method)(path)
        assert resp.mimetype == "text/html", (path, resp.mimetype)
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'"), path
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


def _operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def test_every_parameter_and_json_body_has_an_example(client):
    spec = client.get("/api/v1/openapi.json").json
    missing = []
    for method, path, op in _operations(spec):
        missing += [f"{method} {path} {p['name']}" for p in op["parameters"] if "example" not in p]
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None and "example" not in body:
            missing.append(f"{method} {path} body")
    assert missing == []


def test_every_problem_response_names_its_codes(client):
    spec = client.get("/api/v1/openapi.json").json
    unnamed = []
    for method, path, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            media = response["content"]["application/problem+json"]
            codes = media["schema"]["allOf"][1]["properties"]["code"]["enum"]
            if not codes or media["example"]["code"] != codes[0]:
                unnamed.append(f"{method} {path} {status}")
    assert unnamed == []
    upload = spec["paths"]["/api/v1/models/{model_id}/versions"]["post"]["responses"]
    assert upload["409"]["content"]["application/problem+json"]["example"]["code"] == (
        "version_exists"
    )


def test_upload_evaluate_and_money_operations_declare_what_they_read(client):
    spec = client.get("/api/v1/openapi.json").json
    paths = spec["paths"]
    upload = paths["/api/v1/models/{model_id}/versions"]["post"]
    params = {(p["in"], p["name"]): p for p in upload["parameters"]}
    assert params[("query", "version")]["required"] is True
    assert ("header", "Content-Digest") in params
    assert list(upload["requestBody"]["content"]) == ["application/octet-stream"]

    evaluate = paths["/api/v1/models/{model_id}/versions/{version}/evaluate"]["post"]
    assert set(evaluate["requestBody"]["content"]) == {"application/json", "application/x-npz"}
    assert set(evaluate["responses"]["200"]["content"]) == {"application/json", "application/x-npz"}

    for path in (
        "/api/v1/offers/{offer_id}/purchase",
        "/api/v1/wallet/top-ups",
        "/api/v1/wallet/withdrawals",
        "/api/v1/orders/{order_id}/refund",
    ):
        headers = [p for p in paths[path]["post"]["parameters"] if p["in"] == "header"]
        assert [(h["name"], h["required"]) for h in headers] == [("Idempotency-Key", True)], path


def test_every_view_that_reads_an_idempotency_key_declares_it(app):
    import inspect

    spec = app.test_client().get("/api/v1/openapi.json").json
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if "idempotency_key()" not in inspect.getsource(view):
            continue
        path = rule.rule.replace("<int:", "<").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            names = [p["name"] for p in spec["paths"][path][method.lower()]["parameters"]]
            assert "Idempotency-Key" in names, f"{method} {path}"


def test_oauth2_security_scheme_has_token_url_and_described_scopes(client):
    spec = client.get("/api/v1/openapi.json").json
    flow = spec["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "/oauth/token"
    assert {"models:read", "sandbox:run", "licenses:write", "ledger:read", "admin"} <= set(
        flow["scopes"]
    )
    assert all(text != scope for scope, text in flow["scopes"].items())


def test_amount_properties_have_a_display_beside_them(client):
    schemas = client.get("/api/v1/openapi.json").json["components"]["schemas"]
    offer = schemas["OfferPublic"]["properties"]
    assert offer["price_display"]["type"] == "string"
    assert offer["royalty_per_1k_display"]["type"] == "string"


def test_every_documented_problem_code_is_one_the_code_raises(client):
    import re
    from pathlib import Path

    import marketplace
    from marketplace.errors import _HTTP_CODES

    roots = [Path(marketplace.__file__).parent, Path(marketplace.__file__).parents[1] / "sandbox"]
    raised = set(_HTTP_CODES.values())
    for root in roots:
        for source in root.rglob("*.py"):
            raised |= set(re.findall(r'code ?= ?"([a-z_]+)"', source.read_text(encoding="utf-8")))
    spec = client.get("/api/v1/openapi.json").json
    documented = set()
    for _method, _path, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/problem+json"]["schema"]
                documented |= set(schema["allOf"][1]["properties"]["code"]["enum"])
    assert documented - raised == set()


def test_every_documented_problem_code_sits_under_the_status_the_error_table_gives(client):
    from marketplace.errors import ERROR_CODE_TO_HTTP_STATUS

    spec = client.get("/api/v1/openapi.json").json
    misplaced = []
    for method, path, op in _operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/problem+json"]["schema"]
            for code in schema["allOf"][1]["properties"]["code"]["enum"]:
                table_status = ERROR_CODE_TO_HTTP_STATUS.get(code)
                if table_status is not None and table_status != int(status):
                    misplaced.append(f"{method} {path}: {code} under {status}, not {table_status}")
    assert misplaced == []


def test_answers_clients_meet_are_documented(client):
    """A JSON body sent as text/plain got an undocumented 415, a replayed purchase an
    undocumented 200, a public read with a bad token an undocumented 401."""
    spec = client.get("/api/v1/openapi.json").json
    missing = []
    for method, path, op in _operations(spec):
        responses = op["responses"]
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            missing += [f"{method} {path} {s}" for s in ("413", "415") if s not in responses]
    for method, path in [("get", "/api/v1/models"), ("get", "/api/v1/models/{model_id}")]:
        codes = spec["paths"][path][method]["responses"].get("401", {})
        if "invalid_token" not in str(codes):
            missing.append(f"{method} {path} 401 invalid_token")
    replayable = [
        "/api/v1/offers/{offer_id}/purchase",
        "/api/v1/wallet/top-ups",
        "/api/v1/wallet/withdrawals",
        "/api/v1/orders/{order_id}/refund",
    ]
    for path in replayable:
        if "200" not in spec["paths"][path]["post"]["responses"]:
            missing.append(f"post {path} 200 replay")
    sample = spec["paths"]["/api/v1/models/{model_id}/versions/{version}/sample"]["get"]
    if "410" not in sample["responses"]:
        missing.append("get sample 410")
    assert missing == []
