"""Evaluate a model version in the sandbox for an entitled organisation: the use case.

:meth:`EvaluationService.evaluate` is the whole of it, in a fixed order: find the version (404,
or 403 when revoked or suspended), let its owner through or check the caller's entitlement
(403 or 402 before any model runs), read the inputs, run in the sandbox with no database
connection held, and only after a successful run record the call (trial decrement or metered
usage) in a commit shared with concurrent calls (:mod:`marketplace.evaluation.batching`).
A failed run is never recorded, so never charged. The view only parses and renders.

The hot path avoids the database where a bounded cache can answer. The version lookup and the
entitlement found for an organisation are kept for ``eval_lookup_cache_ttl_s`` seconds: a
revoke or suspension made through this process is seen at once (``forget_listing``), one
made elsewhere within that bound. Licence revocation, expiry, used-up trials and empty wallets
need no bound: the recording step re-checks them in its conditional ``UPDATE`` and refuses the
call (its outputs are discarded), and the cached entitlement is dropped.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlmodel import Session

from marketplace.catalog.errors import StorageUnavailable
from marketplace.catalog.models import Listing, ModelVersion
from marketplace.catalog.services import get_version_for_evaluation, load_model_bytes
from marketplace.config import FromSettings, Settings, SettingSource, build_from_settings, setting
from marketplace.db import Database, utcnow
from marketplace.errors import DomainError, ServiceUnavailable, ValidationFailed, library_problem
from marketplace.evaluation import tensors
from marketplace.evaluation.admission import NodeAdmission, NodeBusy, Slot
from marketplace.evaluation.batching import GroupCommitter
from marketplace.licensing import entitlements
from marketplace.licensing.entitlements import Entitlement
from marketplace.ttlcache import TTLCache
from model_registry.blobcache import BlobCache, BlobIntegrityError
from model_registry.blobstore import BlobStore
from sandbox.errors import DeadlineExceeded, OutputTooLarge, SandboxError
from sandbox.pool import EvalResult, PoolConfig, SandboxPool

log = logging.getLogger(__name__)


# The sandbox's limits that settings feed; the pool's other limits keep their defaults.
POOL_SETTINGS: Mapping[str, SettingSource] = {
    "workers_max": "sandbox_workers_max",
    "queue_max": "sandbox_queue_max",
    "eval_timeout_s": "eval_timeout_s",
    "memory_budget_bytes": "sandbox_memory_budget_bytes",
    "worker_memory_bytes_max": "sandbox_worker_memory_bytes_max",
    "model_bytes_max": "model_bytes_max",
    "input_bytes_max": "eval_input_bytes_max",
    "output_bytes_max": "eval_output_bytes_max",
    "input_elements_max": "eval_input_elements_max",
    "throttle_s": "sandbox_throttle_s",
    "quarantine_callers": "sandbox_quarantine_callers",
}


def pool_config(settings: Settings) -> PoolConfig:
    return build_from_settings(PoolConfig, settings, sources=POOL_SETTINGS)


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


def model_loader(
    blob_store: BlobStore, cache: BlobCache | None, version: ModelVersion
) -> Callable[[], bytes]:
    """How the sandbox gets a version's bytes on a cold start: the node's cache, else the store."""
    if cache is None:
        return lambda: load_model_bytes(blob_store, version)

    def load() -> bytes:
        try:
            return cache.read(
                version.sha256, version.size_bytes, lambda: blob_store.open(version.blob_key)
            )
        except BlobIntegrityError as exc:
            log.error("artifact of version %s: %s", version.id, exc.log_detail)
            raise StorageUnavailable("The stored artifact does not match its record.") from None
        except OSError as exc:
            # The cache's disk (full, read-only, not a directory): it is only a cache, so the
            # model comes straight from the store, verified as it would have been.
            log.warning("blob cache unusable (%s); version %s read from the store", exc, version.id)
            return load_model_bytes(blob_store, version)

    return load


def run(
    *,
    pool: SandboxPool,
    blob_store: BlobStore,
    version: ModelVersion,
    caller_org_id: int,
    inputs: Mapping[str, np.ndarray],
    deadline_s: float | None = None,
    json_output_bytes_max: int | None = None,
    blob_cache: BlobCache | None = None,
    record_deadline_call: Callable[[], object] | None = None,
) -> EvalResult:
    """Run ``version`` for the organisation ``caller_org_id``; sandbox failures as problems.

    ``deadline_s`` defaults to the pool's ``eval_timeout_s``, the one place the evaluation
    deadline is read from the settings. ``json_output_bytes_max`` is the output limit when the
    caller wants JSON. A run that
    reached its deadline used the compute a successful call would have, so it is recorded by
    ``record_deadline_call`` (the caller's usual recording of a call) before the 504; a refusal
    to record it (the trial ran out meanwhile) leaves the 504 as it is.
    """
    try:
        # The content hash keys the warm cache (two listings with identical bytes share
        # workers); quarantine and throttling go by version and caller.
        return pool.evaluate(
            version.sha256,
            model_loader(blob_store, blob_cache, version),
            inputs,
            version=f"version:{version.id}",
            caller=f"org:{caller_org_id}",
            deadline_s=deadline_s,
            output_bytes_max=json_output_bytes_max,
        )
    except OutputTooLarge:
        raise DomainError(
            f"The outputs exceed the {json_output_bytes_max} bytes a JSON response may carry; "
            "ask for them with Accept: application/x-npz.",
            code="json_output_too_large",
        ) from None
    except DeadlineExceeded as exc:
        if exc.ran_to_deadline and record_deadline_call is not None:
            try:
                record_deadline_call()
            except DomainError as refused:
                log.info("deadline call of version %s not recorded: %s", version.id, refused.code)
        raise library_problem(exc) from None
    except SandboxError as exc:
        raise library_problem(exc) from None


def health(lazy: LazyPool, *, detailed: bool) -> dict[str, Any]:
    body = lazy.get().health()
    if not detailed:
        # Which models are quarantined is the vendors' business, not the public's.
        body["quarantined"] = len(body.get("quarantined") or {})
    return body


@dataclass(frozen=True)
class Target:
    """A version found evaluable, with what the call needs of its listing."""

    version: ModelVersion
    listing_id: int
    owner_organization_id: int


@dataclass(frozen=True)
class Evaluation:
    """A successful, recorded call: outputs, where the time went, and what it counted."""

    outputs: dict[str, np.ndarray]
    timing: dict[str, float]
    usage: dict[str, Any]


@dataclass(frozen=True)
class EvaluateLimits(FromSettings):
    """The caps on one evaluate call, from the settings."""

    body_bytes_max: int = field(metadata=setting("eval_body_bytes_max"))
    # A JSON body is also an evaluation body: the smaller cap holds.
    json_body_bytes_max: int = field(
        metadata=setting(lambda s: min(s.eval_body_bytes_max, s.eval_json_body_bytes_max))
    )
    input_elements_max: int = field(metadata=setting("eval_input_elements_max"))
    input_bytes_max: int = field(metadata=setting("eval_input_bytes_max"))
    json_input_bytes_max: int = field(metadata=setting("eval_json_input_bytes_max"))
    json_output_bytes_max: int = field(metadata=setting("eval_json_output_bytes_max"))


class EvaluationService:
    """The evaluate use case with its caches, limits and group committer; one per app."""

    def __init__(
        self,
        *,
        database: Database,
        pool: LazyPool,
        blob_store: BlobStore,
        settings: Settings,
        blob_cache: BlobCache | None = None,
        writer_lock: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.database = database
        self.pool = pool
        self.limits = EvaluateLimits.from_settings(settings)
        self.blob_store = blob_store
        self.blob_cache = blob_cache
        self.targets: TTLCache[tuple[int, str], Target] = TTLCache(settings.eval_lookup_cache_ttl_s)
        self.entitlements: TTLCache[tuple[int, int], Entitlement] = TTLCache(
            settings.eval_lookup_cache_ttl_s
        )
        self.committer = GroupCommitter.for_database(
            database,
            window_s=settings.usage_commit_window_s,
            reserve_calls=settings.metering_reserve_calls,
            writer_lock=writer_lock,
        )

    def decode_npz(self, body: bytes) -> dict[str, np.ndarray]:
        """An npz body's input tensors within this node's caps; 422 otherwise."""
        try:
            return tensors.decode_npz(
                body,
                elements_max=self.limits.input_elements_max,
                bytes_max=self.limits.input_bytes_max,
            )
        except tensors.TensorDecodeError as exc:
            raise ValidationFailed(str(exc), code=exc.code) from None

    def decode_json(self, body: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """A JSON body's ``{"inputs": {...}}`` tensors within this node's caps; 422 otherwise."""
        if set(body) != {"inputs"}:
            raise ValidationFailed('The body must be {"inputs": {...}}.', code="input_invalid")
        try:
            return tensors.decode_json_tensors(
                body["inputs"],
                elements_max=self.limits.input_elements_max,
                bytes_max=self.limits.json_input_bytes_max,
            )
        except tensors.TensorDecodeError as exc:
            raise ValidationFailed(str(exc), code=exc.code) from None

    def forget_listing(self, listing_id: int) -> None:
        """Drop what the caches know of a listing (after a revoke, suspension or reinstatement)."""
        self.targets.discard_where(lambda _key, target: target.listing_id == listing_id)
        self.entitlements.discard_where(lambda key, _ent: key[1] == listing_id)

    def _target(self, model_id: int, version: str) -> Target:
        key = (model_id, version)
        target = self.targets.get(key)
        if target is None:
            session = self.database.session()
            try:
                row, listing = get_version_for_evaluation(session, model_id, version)
            finally:
                session.close()
            assert listing.id is not None
            target = Target(row, listing.id, listing.organization_id)
            self.targets.put(key, target)
        return target

    def _cached_entitlement(self, organization_id: int, target: Target) -> Entitlement | None:
        found = self.entitlements.get((organization_id, target.listing_id))
        if (
            found is not None
            and found.version_id == target.version.id
            and (found.expires_at is None or found.expires_at > utcnow())
        ):
            return found
        return None

    def _entitlement(self, organization_id: int, target: Target) -> Entitlement:
        key = (organization_id, target.listing_id)
        assert target.version.id is not None
        session = self.database.session()
        try:
            found = entitlements.check_entitlement(
                session=session,
                organization_id=organization_id,
                listing_id=target.listing_id,
                version_id=target.version.id,
            )
        finally:
            session.close()
        self.entitlements.put(key, found)
        return found

    def evaluate(
        self,
        *,
        organization_id: int,
        model_id: int,
        version: str,
        read_inputs: Callable[[], Mapping[str, np.ndarray]],
        json_outputs: bool = False,
    ) -> Evaluation:
        """Look up, admit, run, record: the outputs of one call that has been counted.

        ``read_inputs`` is called after the entitlement check, so a caller without one costs
        no body parsing. ``json_outputs`` says the outputs will be sent as JSON, which has a
        smaller output limit (``json_output_too_large`` beyond it).
        """
        target = self._target(model_id, version)
        entitlement = None
        cached = False
        if target.owner_organization_id != organization_id:
            entitlement = self._cached_entitlement(organization_id, target)
            cached = entitlement is not None
            if entitlement is None:
                entitlement = self._entitlement(organization_id, target)
        inputs = read_inputs()
        # A call that will be recorded tells the committer it is running, so that a commit
        # about to start may wait a moment for its record; an owner's call records nothing.
        with self.committer.running() if entitlement is not None else nullcontext() as running:
            result = run(
                pool=self.pool.get(),
                blob_store=self.blob_store,
                version=target.version,
                caller_org_id=organization_id,
                inputs=inputs,
                json_output_bytes_max=self.limits.json_output_bytes_max if json_outputs else None,
                blob_cache=self.blob_cache,
                record_deadline_call=None
                if entitlement is None
                else lambda: self.committer.record(entitlement, running),
            )
            if entitlement is None:
                usage: dict[str, Any] = {"licence_id": None, "kind": "owner"}
            else:
                try:
                    usage = self.committer.record(entitlement, running)
                except DomainError:
                    # Used up, revoked or unpaid. A cached cover may have been replaced since it
                    # was cached (a trial used up, then a licence bought): look once afresh and
                    # count the call against what covers it now, or refuse it.
                    self.entitlements.discard((organization_id, target.listing_id))
                    if not cached:
                        raise
                    fresh = self._entitlement(organization_id, target)
                    if fresh.license_id == entitlement.license_id:
                        self.entitlements.discard((organization_id, target.listing_id))
                        raise
                    usage = self.committer.record(fresh)
        timing = {
            "queue_ms": round(result.queue_ms, 3),
            "load_ms": round(result.load_ms, 3),
            "run_ms": round(result.run_ms, 3),
        }
        return Evaluation(result.outputs, timing, usage)
