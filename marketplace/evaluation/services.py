"""Evaluate a model version in the sandbox for an entitled organisation.

The order is fixed: find the version, check the entitlement (which may refuse with 403 or 402
before any model runs), run in the sandbox, and only after a successful run record the call
(trial decrement or metered usage). A failed run is never charged.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from marketplace.catalog.models import ModelVersion
from marketplace.catalog.services import load_model_bytes
from marketplace.config import Settings
from marketplace.errors import DomainError, ServiceUnavailable
from marketplace.evaluation.admission import NodeAdmission, NodeBusy, Slot
from model_registry.blobstore import BlobStore
from sandbox.errors import OutputTooLarge, SandboxError
from sandbox.pool import EvalResult, PoolConfig, SandboxPool

log = logging.getLogger(__name__)


def pool_config(settings: Settings) -> PoolConfig:
    return PoolConfig(
        workers_max=settings.sandbox_workers_max,
        queue_max=settings.sandbox_queue_max,
        eval_timeout_s=settings.eval_timeout_s,
        memory_budget_bytes=settings.sandbox_memory_budget_bytes,
        worker_memory_bytes_max=settings.sandbox_worker_memory_bytes_max,
        model_bytes_max=settings.model_bytes_max,
        input_bytes_max=settings.eval_input_bytes_max,
        output_bytes_max=settings.eval_output_bytes_max,
        input_elements_max=settings.eval_input_elements_max,
    )


class LazyPool:
    """Starts the sandbox (zygote and workers) on first use, once per process."""

    def __init__(
        self, config: PoolConfig, factory: Callable[[PoolConfig], SandboxPool] = SandboxPool
    ):
        self.config = config
        self._factory = factory
        self._pool: SandboxPool | None = None
        self._lock = threading.Lock()

    def get(self) -> SandboxPool:
        with self._lock:
            if self._pool is None:
                self._pool = self._factory(self.config)
                atexit.register(self._pool.close)
            return self._pool

    @property
    def started(self) -> bool:
        return self._pool is not None

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def sandbox_problem(exc: SandboxError) -> DomainError:
    """The sandbox's taxonomy as a client-visible problem; raw detail stays in the log."""
    if exc.log_detail:
        log.warning("sandbox %s: %s", exc.code, exc.log_detail)
    headers = {}
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    problem = DomainError(exc.detail, code=exc.code, status=exc.status, headers=headers)
    problem.title = exc.code.replace("_", " ").capitalize()
    return problem


def admit(admission: NodeAdmission) -> Slot:
    """A slot of the node's evaluation cap; 503 with ``Retry-After`` when all are taken."""
    try:
        return admission.acquire()
    except NodeBusy:
        raise ServiceUnavailable(
            "The node is running as many evaluations as it may; retry shortly.",
            code="evaluation_busy",
            headers={"Retry-After": "1"},
        ) from None


def run(
    *,
    pool: SandboxPool,
    blob_store: BlobStore,
    version: ModelVersion,
    inputs: Mapping[str, np.ndarray],
    deadline_s: float,
    json_output_bytes_max: int | None = None,
) -> EvalResult:
    """Run ``version`` on ``inputs``; ``json_output_bytes_max`` when the caller wants JSON."""
    try:
        # The content hash keys the warm cache: two listings with identical bytes share workers.
        return pool.evaluate(
            version.sha256,
            lambda: load_model_bytes(blob_store, version),
            inputs,
            deadline_s=deadline_s,
            output_bytes_max=json_output_bytes_max,
        )
    except OutputTooLarge:
        raise DomainError(
            f"The outputs exceed the {json_output_bytes_max} bytes a JSON response may carry; "
            "ask for them with Accept: application/x-npz.",
            code="json_output_too_large",
            status=422,
        ) from None
    except SandboxError as exc:
        raise sandbox_problem(exc) from None


def health(lazy: LazyPool, *, detailed: bool) -> dict[str, Any]:
    body = lazy.get().health()
    if not detailed:
        # Which models are quarantined is the vendors' business, not the public's.
        body["quarantined"] = len(body.get("quarantined") or {})
    return body
