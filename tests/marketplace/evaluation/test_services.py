"""The evaluate use case without HTTP: owner bypass, entitlement, run, record; failures uncharged."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from marketplace.errors import DomainError
from marketplace.evaluation.services import EvaluationService
from marketplace.evaluation.tensors import encode_npz
from marketplace.licensing import services as licensing
from marketplace.licensing.models import License
from marketplace.metering.models import UsageEvent
from tests import onnx_models as m
from tests.marketplace.licensing.builders import fund_wallet, licensing_service, wallet_available

ONES = np.ones((1, 3), np.float32)


@pytest.fixture
def service(app) -> EvaluationService:
    return app.extensions["evaluation"]


def _call(service, org, p, inputs):
    return service.evaluate(
        organization_id=org.id, model_id=p.model_id, version=p.version, read_inputs=lambda: inputs
    )


def _events(db_session, license_id):
    return db_session.execute(
        sa.select(sa.func.count()).where(UsageEvent.license_id == license_id)
    ).scalar_one()


def test_owner_calls_run_and_count_nothing(service, vendor, publish):
    p = publish(vendor, m.add())
    result = _call(service, vendor, p, {"x": ONES, "y": ONES})
    assert result.usage == {"licence_id": None, "kind": "owner"}
    np.testing.assert_array_equal(result.outputs["z"], ONES * 2)


@pytest.mark.parametrize(
    ("model", "inputs", "code"),
    [
        (m.add, {"x": ONES}, "input_invalid"),  # refused by the sandbox, before any run
        (m.type_error, {"x": np.ones(4, np.float32)}, "model_invalid"),  # fails to load
        (m.expand_bomb, {"x": np.ones(1, np.float32)}, "resource_exhausted"),  # fails to run
    ],
    ids=["bad-input", "bad-model", "exhausted"],
)
def test_a_failed_run_is_never_charged(
    service, db_session, vendor, buyer, publish, offer_for, model, inputs, code
):
    p = publish(vendor, model())
    trial_offer = offer_for(p, kind="per_inference", trial_calls=2)
    trial = licensing.start_trial(
        session=db_session,
        organization_id=buyer.id,
        offer_id=trial_offer.id,
        accept_terms_sha256=trial_offer.terms_sha256,
        client_id=buyer.client_id,
    )
    with pytest.raises(DomainError) as failed:
        _call(service, buyer, p, inputs)
    assert failed.value.code == code
    db_session.expire_all()
    lic = db_session.get(License, trial.id)
    assert (lic.calls_remaining, lic.calls_used) == (2, 0)


def test_a_failed_metered_run_leaves_the_wallet_and_usage_untouched(
    service, db_session, vendor, buyer, publish, offer_for
):
    p = publish(vendor, m.add())
    offer = offer_for(p, kind="per_inference", trial_calls=0, royalty_per_1k_minor=3000)
    fund_wallet(db_session, buyer.id, 10_000)
    order, _created = licensing_service().purchase(
        session=db_session,
        organization_id=buyer.id,
        offer_id=offer.id,
        accept_terms_sha256=offer.terms_sha256,
        idempotency_key="buy-1",
        client_id=buyer.client_id,
    )
    with pytest.raises(DomainError):
        _call(service, buyer, p, {"x": ONES})
    assert _events(db_session, order.licence_id) == 0
    assert wallet_available(db_session, buyer.id) == 10_000
    ok = _call(service, buyer, p, {"x": ONES, "y": ONES})
    assert ok.usage["kind"] == "per_inference" and ok.usage["call_accrued_minor"] == 3
    assert _events(db_session, order.licence_id) == 1


def test_a_cached_trial_used_up_gives_way_to_the_licence_bought_since(
    service, db_session, vendor, buyer, publish, offer_for
):
    # The node caches the cover it found; a buyer who used up its trial and then bought a
    # licence must not be refused (after the model ran) because the cache still holds the trial.
    p = publish(vendor, m.add())
    offer = offer_for(p, kind="per_inference", trial_calls=1, royalty_per_1k_minor=3000)
    licensing.start_trial(
        session=db_session,
        organization_id=buyer.id,
        offer_id=offer.id,
        accept_terms_sha256=offer.terms_sha256,
        client_id=buyer.client_id,
    )
    first = _call(service, buyer, p, {"x": ONES, "y": ONES})
    assert first.usage["kind"] == "trial" and first.usage["calls_remaining"] == 0
    fund_wallet(db_session, buyer.id, 10_000)
    order, _created = licensing_service().purchase(
        session=db_session,
        organization_id=buyer.id,
        offer_id=offer.id,
        accept_terms_sha256=offer.terms_sha256,
        idempotency_key="buy-after-trial",
        client_id=buyer.client_id,
    )
    second = _call(service, buyer, p, {"x": ONES, "y": ONES})
    assert second.usage["kind"] == "per_inference"
    assert second.usage["licence_id"] == order.licence_id
    assert _events(db_session, order.licence_id) == 1


@pytest.fixture
def small_limits(app_config):
    app_config["EVAL_JSON_OUTPUT_BYTES_MAX"] = 64
    app_config["EVAL_INPUT_ELEMENTS_MAX"] = 8
    return app_config


def test_the_service_holds_its_limits_from_the_settings(small_limits, service, vendor, publish):
    assert service.limits.json_output_bytes_max == 64
    p = publish(vendor, m.expand(1, 32))  # 128 bytes out
    x = {"x": np.ones(1, np.float32)}
    assert _call(service, vendor, p, x).outputs["y"].shape == (1, 32)
    with pytest.raises(DomainError) as exc:
        service.evaluate(
            organization_id=vendor.id,
            model_id=p.model_id,
            version=p.version,
            read_inputs=lambda: x,
            json_outputs=True,
        )
    assert exc.value.code == "json_output_too_large"
    with pytest.raises(DomainError) as exc:
        service.decode_json({"inputs": {"x": {"dtype": "float32", "shape": [9], "data": [0] * 9}}})
    assert exc.value.code == "input_too_large"
    with pytest.raises(DomainError) as exc:
        service.decode_npz(encode_npz({"x": np.zeros(9, np.float32)}))
    assert exc.value.code == "input_too_large"


def test_an_unusable_blob_cache_falls_back_to_the_store(tmp_path):
    """The cache's directory being a file (or its disk full) was a 500 on every cold start."""
    import hashlib
    import io

    from marketplace.catalog.models import ModelVersion
    from marketplace.evaluation.services import model_loader
    from model_registry.blobcache import BlobCache
    from model_registry.blobstore import FilesystemBlobStore, content_key

    model = m.add()
    digest = hashlib.sha256(model).hexdigest()
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.put_stream(content_key(digest), io.BytesIO(model), size_max=len(model))
    version = ModelVersion(
        id=1, listing_id=1, version="1.0.0", sha256=digest, size_bytes=len(model),
        blob_key=content_key(digest),
    )  # fmt: skip
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache should be")
    assert model_loader(store, BlobCache(not_a_directory, 10**6), version)() == model
