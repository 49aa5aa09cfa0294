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
from sqlmodel import Session

from marketplace.catalog.models import Listing, ModelVersion
from marketplace.catalog.services import get_version_for_evaluation, load_model_bytes
from marketplace.config import Settings
from marketplace.errors import DomainError
from marketplace.licensing import entitlements
from marketplace.licensing.entitlements import Entitlement
from model_registry.blobstore import BlobStore
from sandbox.errors import DeadlineExceeded, SandboxError
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
        throttle_s=settings.sandbox_throttle_s,
        quarantine_callers=settings.sandbox_quarantine_callers,
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


def authorize(
    *, session: Session, model_id: int, version: str, organization_id: int
) -> tuple[ModelVersion, Listing, Entitlement | None]:
    """May ``organization_id`` evaluate the version now: its owner (no entitlement needed), or
    an organisation with a covering trial or licence; 404/403/402 otherwise.

    The evaluate endpoint and everything offered only to those who may evaluate (the sample
    input) ask this one function.
    """
    row, listing = get_version_for_evaluation(session, model_id, version)
    if listing.organization_id == organization_id:
        return row, listing, None
    assert listing.id is not None and row.id is not None
    entitlement = entitlements.check_entitlement(
        session=session, organization_id=organization_id, listing_id=listing.id, version_id=row.id
    )
    return row, listing, entitlement


def run(
    *,
    pool: SandboxPool,
    blob_store: BlobStore,
    version: ModelVersion,
    caller_org_id: int,
    inputs: Mapping[str, np.ndarray],
    deadline_s: float,
    record_deadline_call: Callable[[], object] | None = None,
) -> EvalResult:
    """Run ``version`` for the organisation ``caller_org_id``; sandbox failures as problems.

    A run that reached its deadline used the compute a successful call would have, so it is
    recorded by ``record_deadline_call`` (the caller's usual recording of a call) before the
    504; a refusal to record it (the trial ran out meanwhile) leaves the 504 as it is.
    """
    try:
        # The content hash keys the warm cache (two listings with identical bytes share
        # workers); quarantine and throttling go by version and caller.
        return pool.evaluate(
            version.sha256,
            lambda: load_model_bytes(blob_store, version),
            inputs,
            version=f"version:{version.id}",
            caller=f"org:{caller_org_id}",
            deadline_s=deadline_s,
        )
    except DeadlineExceeded as exc:
        if exc.ran_to_deadline and record_deadline_call is not None:
            try:
                record_deadline_call()
            except DomainError as refused:
                log.info("deadline call of version %s not recorded: %s", version.id, refused.code)
        raise sandbox_problem(exc) from None
    except SandboxError as exc:
        raise sandbox_problem(exc) from None


def health(lazy: LazyPool, *, detailed: bool) -> dict[str, Any]:
    body = lazy.get().health()
    if not detailed:
        # Which models are quarantined is the vendors' business, not the public's.
        body["quarantined"] = len(body.get("quarantined") or {})
    return body
