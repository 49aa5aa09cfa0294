"""``latest`` names a listing's newest version that is not revoked, on reads."""

from __future__ import annotations

from marketplace.demo import defect_scorer_model


def test_latest_follows_uploads_and_revocations(client, vendor, listing, upload):
    model_id = listing["id"]
    empty = client.get(f"/api/v1/models/{model_id}/versions/latest")
    assert empty.status_code == 404 and empty.json["code"] == "version_not_found"

    model = defect_scorer_model()
    assert upload(vendor, model_id, model, "1.0.0").status_code == 201
    assert upload(vendor, model_id, model, "1.1.0").status_code == 201
    latest = client.get(f"/api/v1/models/{model_id}/versions/latest")
    assert latest.status_code == 200 and latest.json["version"] == "1.1.0"

    artifact = client.get(
        f"/api/v1/models/{model_id}/versions/latest/artifact", headers=vendor.headers("models:read")
    )
    assert artifact.status_code == 200 and artifact.data == model
    assert "1.1.0" in artifact.headers["Content-Disposition"]

    revoked = client.post(
        f"/api/v1/models/{model_id}/versions/1.1.0/revoke", headers=vendor.headers("models:write")
    )
    assert revoked.status_code == 200
    assert client.get(f"/api/v1/models/{model_id}/versions/latest").json["version"] == "1.0.0"

    client.post(
        f"/api/v1/models/{model_id}/versions/1.0.0/revoke", headers=vendor.headers("models:write")
    )
    gone = client.get(f"/api/v1/models/{model_id}/versions/latest")
    assert gone.status_code == 404 and gone.json["code"] == "version_not_found"


def test_latest_is_not_a_version_number_one_can_upload(client, vendor, listing, upload):
    refused = upload(vendor, listing["id"], defect_scorer_model(), "latest")
    assert refused.status_code == 422 and refused.json["code"] == "invalid_version"


def test_latest_of_no_model_is_model_not_found(client, vendor, listing):
    """Evaluating `latest` of a model that does not exist said its version was not found."""
    for model_id in [listing["id"] + 1000, 2**31 - 1]:
        resp = client.post(
            f"/api/v1/models/{model_id}/versions/latest/evaluate",
            json={"inputs": {"x": {"dtype": "float32", "shape": [1], "data": [1.0]}}},
            headers=vendor.headers("sandbox:run"),
        )
        assert resp.status_code == 404 and resp.json["code"] == "model_not_found", resp.json
