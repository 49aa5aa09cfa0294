"""Demonstration data for the embedded run: a vendor, a buyer and what they trade.

Everything goes through the public HTTP API (in-process), so the demo exercises the same
validation, inspection and ledger code as real traffic.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from flask import Flask
from flask.testing import FlaskClient
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from sqlmodel import select

from marketplace.accounts.models import User
from marketplace.config import Settings
from marketplace.db import get_session
from marketplace.files import replaced_atomically

DEMO_PASSWORD = "demo-Password-2026"
DEMO_VENDOR = "vendor@demo.jishi.test"
DEMO_BUYER = "buyer@demo.jishi.test"
CREDENTIALS_FILE = "demo-credentials.json"


def credentials_path(app: Flask) -> Path:
    """Where the demo clients' credentials are kept: the instance folder, readable by its owner."""
    return Path(app.instance_path) / CREDENTIALS_FILE


def _write_credentials(path: Path, content: dict[str, Any]) -> None:
    with replaced_atomically(path, mode=0o600) as out:
        out.write((json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode())


def defect_scorer_model() -> bytes:
    """A small, real ONNX model: 16 sensor readings → defect probability (a logistic layer)."""
    rng = np.random.default_rng(2026)
    weights = nh.from_array((rng.standard_normal((16, 1)) * 0.3).astype(np.float32), "w")
    bias = nh.from_array(np.array([-0.5], np.float32), "b")
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["readings", "w"], ["logit_raw"]),
            oh.make_node("Add", ["logit_raw", "b"], ["logit"]),
            oh.make_node("Sigmoid", ["logit"], ["defect_probability"]),
        ],
        "defect_scorer",
        [oh.make_tensor_value_info("readings", TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("defect_probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights, bias],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


MODEL_CARD = """# 焊缝缺陷评分 Weld defect scorer

Scores 16 ultrasonic readings from a weld seam and returns the probability of a defect.

- **Input** `readings`: float32 `[batch, 16]`, normalised to zero mean and unit variance.
- **Output** `defect_probability`: float32 `[batch, 1]`.

Trained on synthetic data for this demonstration; do not use it on a production line.
"""


class _Api:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.token = ""
        self.organization_id = 0

    def call(self, method: str, path: str, *, expect: int, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = self.client.open(path, method=method, headers=headers, **kwargs)
        if resp.status_code != expect:
            raise RuntimeError(
                f"demo data: {method} {path} gave {resp.status_code}: {resp.get_data(as_text=True)}"
            )
        return resp.json

    def register(self, email: str, name: str, roles: list[str]) -> dict[str, Any]:
        body = self.call(
            "POST",
            "/api/v1/register",
            expect=201,
            json={
                "email": email,
                "password": DEMO_PASSWORD,
                "organization_name": name,
                "organization_roles": roles,
            },
        )
        creds = body["client"]
        self.organization_id = body["organization_id"]
        self.token = self.call(
            "POST",
            "/oauth/token",
            expect=200,
            data={
                "grant_type": "client_credentials",
                "client_id": creds["client_id"],
                "client_secret": creds["client_secret"],
            },
        )["access_token"]
        return creds  # type: ignore[no-any-return]


class DemoDataRefused(RuntimeError):
    """Demo data was asked for where it must never be (production)."""


def demo_data_refusal(settings: Settings) -> str | None:
    """Why demo data may not be loaded with ``settings``, or None when it may."""
    if not settings.is_development:
        # The demo accounts have published passwords and their client secrets are printed;
        # their wallets are funded with simulated money.
        return (
            f"{settings.env} never loads demo data (its accounts have published "
            "passwords and simulated money)"
        )
    return None


def load_demo_data(app: Flask) -> Iterator[str]:
    """Create the demo organisations, listing, version, offers and wallet once."""
    refusal = demo_data_refusal(app.extensions["settings"])
    if refusal:
        raise DemoDataRefused(refusal)
    path = credentials_path(app)
    with app.app_context():
        if get_session().exec(select(User).where(User.email == DEMO_VENDOR)).first() is not None:
            if path.exists():
                yield f"demo data present; API client credentials in {path}"
            else:
                yield (
                    f"demo data present; its credentials file {path} is gone (secrets are "
                    "stored hashed): create a client with `jishi orgs` or log in as the demo user"
                )
            return
    vendor = _Api(app.test_client())
    vendor_creds = vendor.register(DEMO_VENDOR, "Demo Vision Lab 演示视觉实验室", ["vendor"])
    listing = vendor.call(
        "POST",
        "/api/v1/models",
        expect=201,
        json={
            "name": "Weld defect scorer 焊缝缺陷评分",
            "summary": "Ultrasonic weld inspection: probability of a defect from 16 readings.",
            "description_md": MODEL_CARD,
            "task": "anomaly-detection",
            "tags": ["manufacturing", "welding", "ultrasonic"],
        },
    )
    vendor.call(
        "POST",
        f"/api/v1/models/{listing['id']}/versions?version=1.0.0",
        expect=201,
        data=defect_scorer_model(),
        content_type="application/octet-stream",
    )
    common = {"currency": "CNY", "trial_calls": 100, "trial_days": 14, "commercial_use": True}
    metered = vendor.call(
        "POST",
        f"/api/v1/models/{listing['id']}/offers",
        expect=201,
        json={
            **common,
            "name": "Pay per inference 按次计费",
            "kind": "per_inference",
            "price_minor": 0,
            "royalty_per_1k_minor": 500,
            "allow_download": False,
            "terms_md": "¥5.00 per 1,000 successful inferences. Evaluation only in the sandbox.",
        },
    )
    perpetual = vendor.call(
        "POST",
        f"/api/v1/models/{listing['id']}/offers",
        expect=201,
        json={
            **common,
            "name": "Perpetual on-premise 永久授权",
            "kind": "perpetual",
            "price_minor": 1_280_000,
            "royalty_per_1k_minor": 0,
            "allow_download": True,
            "terms_md": "One-off ¥12,800.00; the artifact may be downloaded and run on the buyer's own machines.",
        },
    )
    yield f"demo vendor {DEMO_VENDOR}: client_id {vendor_creds['client_id']} client_secret {vendor_creds['client_secret']}"

    buyer = _Api(app.test_client())
    buyer_creds = buyer.register(DEMO_BUYER, "Demo Manufacturing Co. 演示制造公司", ["buyer"])
    buyer.call(
        "POST",
        "/api/v1/wallet/top-ups",
        expect=201,
        json={"amount_minor": 50_000, "currency": "CNY"},
        headers={"Idempotency-Key": f"demo-{uuid.uuid4().hex}"},
    )
    buyer.call(
        "POST",
        f"/api/v1/offers/{metered['id']}/trial",
        expect=201,
        json={"accept_terms_sha256": metered["terms_sha256"]},
    )
    yield f"demo buyer {DEMO_BUYER}: client_id {buyer_creds['client_id']} client_secret {buyer_creds['client_secret']}"
    _write_credentials(
        path,
        {
            "vendor": {
                "email": DEMO_VENDOR,
                "password": DEMO_PASSWORD,
                "organization_id": vendor.organization_id,
                "client_id": vendor_creds["client_id"],
                "client_secret": vendor_creds["client_secret"],
            },
            "buyer": {
                "email": DEMO_BUYER,
                "password": DEMO_PASSWORD,
                "organization_id": buyer.organization_id,
                "client_id": buyer_creds["client_id"],
                "client_secret": buyer_creds["client_secret"],
            },
            "listing_id": listing["id"],
            "version": "1.0.0",
            "offers": {"per_inference": metered["id"], "perpetual": perpetual["id"]},
        },
    )
    yield f"demo API client credentials written to {path}"
    yield f"demo listing /api/v1/models/{listing['id']} with a trial of offer {metered['id']} and ¥500.00 in the buyer's wallet (simulated)"
