"""Evaluation jobs end to end on the embedded queue: datasets, entitlements taken up front,
side-by-side scores, exact charges, results, cancellation and signed reports."""

from __future__ import annotations

import io
import time

import numpy as np

from marketplace.jobs.reports import verify_report
from tests import onnx_models as m
from tests.marketplace.jobs.harness import Node, npz

SAMPLES = 200
RNG = np.random.default_rng(7)


def _features(samples: int, delay: float = 0.0) -> np.ndarray:
    x = RNG.random((samples, 4), dtype=np.float32)
    x[:, 3] = delay
    return x


def _labels(x: np.ndarray) -> np.ndarray:
    return x[:, :3].argmax(axis=1).astype(np.int64)


def test_two_versions_side_by_side_are_scored_charged_exactly_and_reported(node: Node) -> None:
    vendor, rival, buyer = node.org(["vendor"]), node.org(["vendor"]), node.org(["buyer"])
    ours = node.publish_model(vendor, m.slow_classifier())
    theirs = node.publish_model(rival, m.slow_classifier(shift=1))
    metered = node.offer(vendor, ours["model_id"], royalty_per_1k_minor=2500)
    trial = node.offer(
        rival, theirs["model_id"], kind="perpetual", price_minor=100_000, trial_calls=500
    )
    licence = node.purchase(buyer, metered)
    trial_licence = node.trial(buyer, trial)
    node.top_up(buyer, 10_000)
    before = node.wallet(buyer)

    x = _features(SAMPLES)
    labels = _labels(x)
    created = node.dataset(buyer, npz(x=x, **{"expected:y": labels}))
    assert created.status_code == 201, created.json
    dataset = created.json
    assert (dataset["samples"], [a["name"] for a in dataset["expected"]]) == (SAMPLES, ["y"])

    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[
            {"model_id": ours["model_id"], "version": "1.0.0"},
            {"model_id": theirs["model_id"], "version": "latest"},
        ],
        batch_size=16,
        metric="accuracy",
    )
    assert resp.status_code == 201, resp.json
    job_id = resp.json["id"]
    # Taken up front: a hold worth the most 200 metered calls in chunks of 32 can cost, and
    # 200 of the trial's 500 calls.
    held = -(-32 * 2500 // 1000) * 6 + -(-8 * 2500 // 1000)
    assert node.wallet(buyer)["held"] == before["held"] + held
    assert node.licence(buyer, trial_licence["id"])["calls_remaining"] == 300

    job = node.wait(buyer, job_id)
    first, second = job["versions"]
    assert (first["samples_done"], first["samples_failed"]) == (SAMPLES, 0)
    assert (second["samples_done"], second["samples_failed"]) == (SAMPLES, 0), node.chunks(job_id)
    assert first["metric_value"] == 1.0
    assert second["metric_value"] == float(np.mean((labels + 1) % 3 == labels))  # never right
    assert (
        first["latency_p50_ms"] is not None and first["latency_p99_ms"] >= first["latency_p50_ms"]
    )
    assert [row["metric_value"] for row in job["comparison"]] == [1.0, 0.0]
    assert [row["cost_per_1000_minor"] for row in job["comparison"]] == [2500, 0]

    # Exactly floor(200 * 2500 / 1000) = 500 charged, the rest of the hold released.
    assert (first["charged_minor"], first["held_minor"], first["samples_charged"]) == (500, 0, 200)
    after = node.wallet(buyer)
    assert after["balance"] == before["balance"] - 500
    assert after["held"] == before["held"]
    assert node.licence(buyer, licence["licence_id"])["usage"]["calls_used"] == SAMPLES
    trial_after = node.licence(buyer, trial_licence["id"])
    assert trial_after["calls_remaining"] == 300

    results = node.client.get(
        f"/api/v1/evaluation-jobs/{job_id}/results",
        query_string={"version": first["version_id"]},
        headers=buyer.headers(),
    )
    assert results.status_code == 200, results.data[:300]
    arrays = np.load(io.BytesIO(results.data))
    np.testing.assert_allclose(arrays["y"], x[:, :3], rtol=1e-6)
    assert arrays["jishi.ok"].all() and (arrays["jishi.sample"] == np.arange(SAMPLES)).all()

    report = node.client.get(f"/api/v1/evaluation-jobs/{job_id}/report", headers=buyer.headers())
    assert report.status_code == 200, report.json
    text = report.get_data(as_text=True)
    assert ours["sha256"] in text and theirs["sha256"] in text and dataset["sha256"] in text
    again = node.client.get(f"/api/v1/evaluation-jobs/{job_id}/report", headers=buyer.headers())
    assert again.json == report.json  # made once, kept
    verified = verify_report(report.json, node.app.extensions["audit_keys"].verifier())
    assert (verified["dataset_sha256"], verified["dataset_samples"]) == (dataset["sha256"], SAMPLES)
    assert [v["model_sha256"] for v in verified["versions"]] == [ours["sha256"], theirs["sha256"]]

    # The vendor publishes its own version's figures only with the buyer's consent.
    publish = f"/api/v1/models/{ours['model_id']}/reports"
    refused = node.client.post(publish, json={"job_id": job_id}, headers=vendor.headers())
    assert (refused.status_code, refused.json["code"]) == (403, "no_publish_consent")
    consent = node.client.post(
        f"/api/v1/evaluation-jobs/{job_id}/report/consent", headers=buyer.headers()
    )
    assert consent.status_code == 200 and consent.json["report_consent"] is True
    published = node.client.post(publish, json={"job_id": job_id}, headers=vendor.headers())
    assert published.status_code == 201, published.json
    twice = node.client.post(publish, json={"job_id": job_id}, headers=vendor.headers())
    assert (twice.status_code, twice.json["code"]) == (409, "report_published")
    detail = node.client.get(f"/api/v1/models/{ours['model_id']}").json
    (shown,) = detail["reports"]
    shown_text = str(shown["document"])
    assert verify_report(shown["document"], node.app.extensions["audit_keys"].verifier())
    assert ours["sha256"] in shown_text and theirs["sha256"] not in shown_text
    # The listing's page shows the figures and the key that verifies them, to anyone.
    page = node.client.get(f"/models/{ours['model_id']}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    verifier = node.app.extensions["audit_keys"].verifier().encode()
    assert "Evaluation reports" in html and verifier in html
    assert f"{SAMPLES} run, 0 failed, of {SAMPLES}" in html
    assert ours["sha256"] in html and dataset["sha256"] in html
    assert theirs["sha256"] not in html
    # A rival cannot publish it on a listing that is not its own, nor learn of the job.
    foreign = node.client.post(publish, json={"job_id": job_id}, headers=rival.headers())
    assert foreign.status_code == 404
    # Vendors never see the buyer's dataset or job.
    assert (
        node.client.get(f"/api/v1/datasets/{dataset['id']}", headers=vendor.headers()).status_code
        == 404
    )
    assert (
        node.client.get(f"/api/v1/evaluation-jobs/{job_id}", headers=vendor.headers()).status_code
        == 404
    )


def _buyer_with_trial(node: Node, calls: int = 500) -> tuple[object, dict, dict, dict]:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, m.slow_classifier())
    offer = node.offer(
        vendor, model["model_id"], kind="perpetual", price_minor=1, trial_calls=calls
    )
    return buyer, model, offer, node.trial(buyer, offer)


def test_bad_datasets_are_refused_and_nothing_is_charged(node: Node) -> None:
    buyer, model, _offer, trial = _buyer_with_trial(node)
    x = _features(20)

    def refused(body: bytes) -> str:
        resp = node.dataset(buyer, body)
        assert resp.status_code == 422, resp.json
        return str(resp.json["code"])

    # First axes that differ, a compressed archive, text, a scalar, no inputs, not an npz.
    assert refused(npz(x=x, **{"expected:y": np.zeros(19, np.int64)})) == "dataset_invalid"
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x=x)
    assert refused(compressed.getvalue()) == "dataset_invalid"
    assert refused(npz(x=x, names=np.array(["a"] * 20))) == "dataset_invalid"
    assert refused(npz(x=x, scale=np.float32(2.0))) == "dataset_invalid"
    assert refused(npz(**{"expected:y": np.zeros(20, np.int64)})) == "dataset_invalid"
    assert refused(b"PK\x03\x04 not a zip at all") == "dataset_invalid"

    def job_refused(arrays: dict[str, np.ndarray], **extra: object) -> dict:
        created = node.dataset(buyer, npz(**arrays))
        assert created.status_code == 201, created.json
        resp = node.job(
            buyer,
            dataset_id=created.json["id"],
            versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
            **extra,
        )
        assert resp.status_code == 422, resp.json
        return dict(resp.json)

    # Wrong dtype, wrong width, a missing input: refused per version before anything runs.
    assert job_refused({"x": x.astype(np.float64)})["code"] == "dataset_mismatch"
    wide = job_refused({"x": np.zeros((20, 5), np.float32)})
    assert wide["code"] == "dataset_mismatch" and "axis 1" in wide["errors"][0]["message"]
    assert job_refused({"features": x})["code"] == "dataset_mismatch"
    # A metric the expected values cannot feed, or no expected values at all.
    labels_as_floats = {"x": x, "expected:y": np.zeros(20, np.float32)}
    assert job_refused(labels_as_floats, metric="accuracy")["code"] == "metric_not_applicable"
    assert job_refused({"x": x}, metric="accuracy")["code"] == "metric_not_applicable"

    assert node.licence(buyer, trial["id"])["calls_remaining"] == 500
    listed = node.client.get("/api/v1/evaluation-jobs", headers=buyer.headers())
    assert listed.status_code == 200 and listed.json["items"] == []


def test_a_job_the_wallet_cannot_cover_is_402_with_the_missing_amount(node: Node) -> None:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, m.slow_classifier())
    node.purchase(buyer, node.offer(vendor, model["model_id"], royalty_per_1k_minor=2500))
    node.top_up(buyer, 100)
    dataset = node.dataset(buyer, npz(x=_features(SAMPLES))).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=8,
    )
    assert resp.status_code == 402, resp.json
    # Six chunks of 32 and one of 8 may cost at most 80 * 6 + 20 = 500 fen; the wallet has 100.
    assert (resp.json["code"], resp.json["missing_minor"]) == ("insufficient_funds", 400)
    assert node.wallet(buyer) == {"balance": 100, "held": 0, "available": 100}
    assert node.client.get("/api/v1/evaluation-jobs", headers=buyer.headers()).json["items"] == []


def test_a_sample_that_hits_its_deadline_fails_alone(node: Node) -> None:
    buyer, model, _offer, trial = _buyer_with_trial(node)
    x = _features(40)
    x[5, 3] = 1e9  # counts for ever: past any deadline
    dataset = node.dataset(buyer, npz(x=x, **{"expected:y": _labels(x)})).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=2,
        metric="accuracy",
    )
    assert resp.status_code == 201, resp.json
    job = node.wait(buyer, resp.json["id"])
    (version,) = job["versions"]
    with node.app.extensions["db"].engine.connect() as conn:
        chunks = conn.exec_driver_sql(
            "SELECT chunk_index, state, attempts, samples_done, samples_failed, worker, failures "
            f"FROM evaluation_chunks WHERE job_id = {job['id']}"
        ).all()
    assert (version["samples_done"], version["samples_failed"]) == (39, 1), (job, chunks)
    assert version["failures"] == {"deadline_exceeded": 1}
    assert version["metric_value"] == 1.0  # over the samples that ran
    # It ran to its deadline, so it counts, as an HTTP call that times out does.
    assert version["samples_charged"] == 40
    assert node.licence(buyer, trial["id"])["calls_remaining"] == 460
    results = node.client.get(
        f"/api/v1/evaluation-jobs/{job['id']}/results",
        query_string={"version": version["version_id"]},
        headers=buyer.headers(),
    )
    arrays = np.load(io.BytesIO(results.data))
    assert list(np.flatnonzero(~arrays["jishi.ok"])) == [5]
    assert not arrays["y"][5].any()
    finished = node.client.delete(f"/api/v1/evaluation-jobs/{job['id']}", headers=buyer.headers())
    assert (finished.status_code, finished.json["code"]) == (409, "job_finished")


def test_cancelling_charges_what_ran_and_gives_the_rest_back(node: Node) -> None:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, m.slow_classifier())
    licence = node.purchase(buyer, node.offer(vendor, model["model_id"], royalty_per_1k_minor=2500))
    node.top_up(buyer, 10_000)
    before = node.wallet(buyer)
    x = _features(320, delay=150_000)  # about 0.15 s per batch
    dataset = node.dataset(buyer, npz(x=x)).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=8,
    )
    assert resp.status_code == 201, resp.json
    job_id = resp.json["id"]
    node.wait(buyer, job_id, until=lambda job: job["versions"][0]["samples_done"] >= 32)
    in_use = node.client.delete(f"/api/v1/datasets/{dataset['id']}", headers=buyer.headers())
    assert (in_use.status_code, in_use.json["code"]) == (409, "dataset_in_use")

    cancelled = node.client.delete(f"/api/v1/evaluation-jobs/{job_id}", headers=buyer.headers())
    assert cancelled.status_code == 200, cancelled.json
    assert cancelled.json["state"] == "cancelled"
    time.sleep(2.0)  # chunks that were running finish, and are not counted
    job = node.get_job(buyer, job_id)
    (version,) = job["versions"]
    ran = version["samples_done"]
    assert 32 <= ran < 320 and ran % 32 == 0
    assert version["samples_charged"] == ran and version["held_minor"] == 0
    assert version["charged_minor"] == ran * 2500 // 1000
    after = node.wallet(buyer)
    assert after["balance"] == before["balance"] - ran * 2500 // 1000
    assert after["held"] == before["held"]
    assert node.licence(buyer, licence["licence_id"])["usage"]["calls_used"] == ran
    again = node.client.delete(f"/api/v1/evaluation-jobs/{job_id}", headers=buyer.headers())
    assert again.status_code == 200 and again.json["versions"][0]["samples_done"] == ran

    results = node.client.get(
        f"/api/v1/evaluation-jobs/{job_id}/results",
        query_string={"version": version["version_id"]},
        headers=buyer.headers(),
    )
    assert len(np.load(io.BytesIO(results.data))["jishi.sample"]) == ran
    report = node.client.get(f"/api/v1/evaluation-jobs/{job_id}/report", headers=buyer.headers())
    assert (report.status_code, report.json["code"]) == (409, "job_not_finished")

    deleted = node.client.delete(f"/api/v1/datasets/{dataset['id']}", headers=buyer.headers())
    assert deleted.status_code == 204
    gone = node.client.get(f"/api/v1/datasets/{dataset['id']}", headers=buyer.headers())
    assert (gone.status_code, gone.json["code"]) == (404, "dataset_not_found")
    assert dataset["id"] not in [
        d["id"] for d in node.client.get("/api/v1/datasets", headers=buyer.headers()).json["items"]
    ]


# Twelve chunks of 32 at about 0.6 s each, two at a time: chunks are still waiting when the
# version is revoked, however late a loaded machine lets the revocation arrive.
REVOKED_SAMPLES = 384


def test_a_version_revoked_mid_job_runs_no_more_and_costs_no_more(node: Node) -> None:
    vendor, buyer = node.org(["vendor"]), node.org(["buyer"])
    model = node.publish_model(vendor, m.slow_classifier())
    offer = node.offer(vendor, model["model_id"], kind="perpetual", price_minor=1, trial_calls=500)
    trial = node.trial(buyer, offer)
    dataset = node.dataset(buyer, npz(x=_features(REVOKED_SAMPLES, delay=150_000))).json
    resp = node.job(
        buyer,
        dataset_id=dataset["id"],
        versions=[{"model_id": model["model_id"], "version": "1.0.0"}],
        batch_size=8,
    )
    assert resp.status_code == 201, resp.json
    job_id = resp.json["id"]
    node.wait(buyer, job_id, until=lambda job: job["versions"][0]["samples_done"] >= 32)
    revoked = node.client.post(
        f"/api/v1/models/{model['model_id']}/versions/1.0.0/revoke", headers=vendor.headers()
    )
    assert revoked.status_code == 200, revoked.json
    job = node.wait(buyer, job_id)
    (version,) = job["versions"]
    ran = version["samples_done"]
    assert ran < REVOKED_SAMPLES
    assert version["failures"] == {"version_revoked": REVOKED_SAMPLES - ran}, node.chunks(job_id)
    assert version["samples_charged"] == ran
    assert node.licence(buyer, trial["id"])["calls_remaining"] == 500 - ran
