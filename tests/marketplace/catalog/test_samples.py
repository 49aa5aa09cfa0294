"""Sample inputs: the vendor attaches an npz checked against the signature; whoever may
evaluate the version (and only they) gets it back."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from marketplace.catalog.models import ModelVersion
from tests.marketplace.licensing.builders import make_offer

NPZ = {"Content-Type": "application/x-npz"}


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


GOOD = npz(readings=np.zeros((2, 16), np.float32))


@pytest.fixture
def catalog(db_session, vendor):
    made = make_offer(db_session, vendor.id, price_minor=0, trial_calls=2, kind="per_inference",
                      royalty_per_1k_minor=100)  # fmt: skip
    row = db_session.get(ModelVersion, made.version_id)
    row.inputs = [{"name": "readings", "dtype": "float32", "shape": ["batch", 16]}]
    db_session.add(row)
    db_session.commit()
    return made, row.version


def sample_url(catalog) -> str:
    made, version = catalog
    return f"/api/v1/models/{made.listing_id}/versions/{version}/sample"


def test_the_owner_attaches_a_sample_and_entitled_buyers_get_it(client, vendor, buyer, catalog):
    url = sample_url(catalog)
    assert client.get(url, headers=vendor.headers()).json["code"] == "sample_not_found"
    resp = client.put(url, data=GOOD, headers={**vendor.headers("models:write"), **NPZ})
    assert resp.status_code == 200, resp.json
    assert resp.json["tensors"] == {"readings": {"dtype": "float32", "shape": [2, 16]}}
    assert client.get(url, headers=vendor.headers()).data == GOOD
    refused = client.get(url, headers=buyer.headers())
    assert refused.status_code == 403 and refused.json["code"] == "no_entitlement"
    made, _version = catalog
    trial = client.post(
        f"/api/v1/offers/{made.offer_id}/trial",
        json={"accept_terms_sha256": made.terms_sha256},
        headers=buyer.headers(),
    )
    assert trial.status_code == 201
    got = client.get(url, headers=buyer.headers())
    assert got.status_code == 200 and got.mimetype == "application/x-npz" and got.data == GOOD
    assert client.get(url).status_code == 401
    # Replacing keeps one sample per version.
    other = npz(readings=np.ones((1, 16), np.float32))
    client.put(url, data=other, headers={**vendor.headers("models:write"), **NPZ})
    assert client.get(url, headers=buyer.headers()).data == other


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not a zip", "sample_invalid"),
        (npz(readings=np.zeros((2, 16), np.float64)), "sample_invalid"),
        (npz(readings=np.zeros((2, 15), np.float32)), "sample_invalid"),
        (npz(readings=np.zeros((16,), np.float32)), "sample_invalid"),
        (npz(other=np.zeros((1, 16), np.float32)), "sample_invalid"),
        (
            npz(readings=np.zeros((1, 16), np.float32), extra=np.zeros(1, np.float32)),
            "sample_invalid",
        ),
    ],
)
def test_a_sample_that_cannot_run_is_refused(client, vendor, catalog, body, code):
    resp = client.put(
        sample_url(catalog), data=body, headers={**vendor.headers("models:write"), **NPZ}
    )
    assert resp.status_code == 422 and resp.json["code"] == code
    assert (
        client.get(sample_url(catalog), headers=vendor.headers()).json["code"] == "sample_not_found"
    )


def test_sample_limits_and_who_may_attach(app, client, vendor, buyer, make_org, catalog):
    url = sample_url(catalog)
    app.extensions["catalog"] = replace(app.extensions["catalog"], sample_bytes_max=1000)
    big = npz(readings=np.zeros((100, 16), np.float32))
    resp = client.put(url, data=big, headers={**vendor.headers("models:write"), **NPZ})
    assert resp.status_code == 413 and resp.json["code"] == "sample_too_large"
    wrong_type = client.put(url, data=GOOD, headers={**vendor.headers("models:write"),
                                                     "Content-Type": "application/json"})  # fmt: skip
    assert wrong_type.status_code == 415
    other_vendor = make_org(["vendor"])
    resp = client.put(url, data=GOOD, headers={**other_vendor.headers("models:write"), **NPZ})
    assert resp.status_code == 404 and resp.json["code"] == "model_not_found"
    resp = client.put(url, data=GOOD, headers={**buyer.headers(), **NPZ})
    assert resp.status_code == 403 and resp.json["code"] == "insufficient_scope"


def test_a_revoked_versions_sample_is_neither_read_nor_written(client, vendor, catalog):
    """Reading a revoked version's sample answered 410 while writing one still succeeded."""
    url = sample_url(catalog)
    write = {**vendor.headers("models:write"), **NPZ}
    assert client.put(url, data=GOOD, headers=write).status_code == 200
    made, version = catalog
    revoke = client.post(
        f"/api/v1/models/{made.listing_id}/versions/{version}/revoke",
        headers=vendor.headers("models:write"),
    )
    assert revoke.status_code == 200, revoke.json
    assert client.get(url, headers=vendor.headers()).json["code"] == "version_revoked"
    other = npz(readings=np.ones((1, 16), np.float32))
    resp = client.put(url, data=other, headers=write)
    assert resp.status_code == 410 and resp.json["code"] == "version_revoked", resp.json
