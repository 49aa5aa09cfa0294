"""Actors that use a live marketplace over real HTTP, as an outsider would."""

from __future__ import annotations

import hashlib
import io
import uuid
from typing import Any

import numpy as np
import requests

from marketplace.catalog.models import ModelVersion
from model_registry.blobstore import content_key
from tests.conftest import LiveServer

TIMEOUT_S = 60


class Actor:
    """A registered organisation with a bearer token."""

    def __init__(self, server: LiveServer, roles: list[str], name: str = "HTTP actor") -> None:
        self.server = server
        self.url = server.url
        resp = requests.post(
            f"{self.url}/api/v1/register",
            json={
                "email": f"{uuid.uuid4().hex[:10]}@example.test",
                "password": "Correct-Horse-9-Battery",
                "organization_name": name,
                "organization_roles": roles,
            },
            timeout=TIMEOUT_S,
        )
        assert resp.status_code == 201, resp.text
        self.id = resp.json()["organization_id"]
        self.client_id = resp.json()["client"]["client_id"]
        self.client_secret = resp.json()["client"]["client_secret"]
        token = requests.post(
            f"{self.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(self.client_id, self.client_secret),
            timeout=TIMEOUT_S,
        ).json()["access_token"]
        self.auth = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, **kw: Any) -> requests.Response:
        headers = {**self.auth, **kw.pop("headers", {})}
        return requests.post(f"{self.url}{path}", headers=headers, timeout=TIMEOUT_S, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers=self.auth, timeout=TIMEOUT_S, **kw)

    def evaluate(self, model_id: int, version: str, **inputs: np.ndarray) -> requests.Response:
        tensors = {
            name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}
            for name, a in inputs.items()
        }
        return self.post(
            f"/api/v1/models/{model_id}/versions/{version}/evaluate", json={"inputs": tensors}
        )

    def start_trial(self, offer: dict[str, Any]) -> dict[str, Any]:
        resp = self.post(
            f"/api/v1/offers/{offer['id']}/trial",
            json={"accept_terms_sha256": offer["terms_sha256"]},
        )
        assert resp.status_code == 201, resp.text
        return dict(resp.json())


class Vendor(Actor):
    """A vendor organisation with one listing of its own."""

    def __init__(self, server: LiveServer, name: str = "HTTP vendor") -> None:
        super().__init__(server, ["vendor"], name)
        created = self.post(
            "/api/v1/models",
            json={
                "name": "Steel Defect Detector",
                "summary": "Finds scratches and dents on rolled steel.",
                "task": "image-classification",
                "tags": ["vision"],
            },
        )
        assert created.status_code == 201, created.text
        self.model_id = created.json()["id"]

    def upload(self, body: Any, version: str, **headers: str) -> requests.Response:
        return requests.post(
            f"{self.url}/api/v1/models/{self.model_id}/versions",
            params={"version": version},
            data=body,
            headers={**self.auth, "Content-Type": "application/octet-stream", **headers},
            timeout=TIMEOUT_S,
        )

    def offer(self, **terms: Any) -> dict[str, Any]:
        body = {
            "name": "Per call",
            "kind": "per_inference",
            "currency": "CNY",
            "price_minor": 0,
            "royalty_per_1k_minor": 1000,
            "trial_calls": 10,
            "trial_days": 7,
            "allow_download": False,
            "commercial_use": True,
            "terms_md": "Use it well.",
            **terms,
        }
        resp = self.post(f"/api/v1/models/{self.model_id}/offers", json=body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def plant_version(self, data: bytes, version: str) -> None:
        """Store a version without the upload's inspection, as one accepted before a fix was."""
        app = self.server.app
        digest = hashlib.sha256(data).hexdigest()
        app.extensions["blob_store"].put_stream(
            content_key(digest), io.BytesIO(data), size_max=len(data)
        )
        session = app.extensions["db"].session()
        try:
            session.add(
                ModelVersion(
                    listing_id=self.model_id,
                    version=version,
                    sha256=digest,
                    size_bytes=len(data),
                    blob_key=content_key(digest),
                    ir_version=8,
                )
            )
            session.commit()
        finally:
            session.close()
