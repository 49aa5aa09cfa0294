"""Evaluation jobs: a buyer's dataset against one or more model versions, on a task queue.

Web nodes accept datasets and jobs and publish one task per (version, chunk); workers run the
tasks in a sandbox pool of their own: ``jishi worker`` nodes, or the worker ``jishi serve`` runs
in one of its processes. Everything a node keeps (the dataset and model caches, the warm
sandbox workers, the broker connection) is a cache: nodes share only the database, the blob
store and the broker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from marketplace.config import build_from_settings, setting

if TYPE_CHECKING:
    from flask import Flask

    from marketplace.config import Settings
    from marketplace.jobs.datasets import DatasetLimits
    from marketplace.jobs.services import JobLimits
    from sandbox.pool import PoolConfig


@dataclasses.dataclass(frozen=True)
class JobsContext:
    """What the jobs API needs from the settings, built once in :func:`init_app`."""

    limits: JobLimits
    dataset_limits: DatasetLimits
    results_bytes_max: int = dataclasses.field(metadata=setting("job_results_bytes_max"))

    @classmethod
    def from_settings(cls, s: Settings) -> JobsContext:
        from marketplace.jobs.datasets import DatasetLimits
        from marketplace.jobs.services import JobLimits

        # Each limit is the setting named with its class's prefix, but for these.
        jobs = {"active_per_organization_max": "jobs_active_per_organization_max"}
        datasets = {"per_organization_max": "datasets_per_organization_max"}
        return build_from_settings(
            cls,
            s,
            limits=build_from_settings(JobLimits, s, prefix="job_", sources=jobs),
            dataset_limits=build_from_settings(
                DatasetLimits, s, prefix="dataset_", sources=datasets
            ),
        )


def job_pool_config(settings: Settings) -> PoolConfig:
    """The sandbox of a job worker: the evaluation sandbox's limits, the job's sample deadline,
    and no throttling (a job's samples are paid and bounded; one that hits its deadline must
    not hold up the next)."""
    from marketplace.evaluation.services import pool_config

    return dataclasses.replace(
        pool_config(settings), eval_timeout_s=settings.job_sample_timeout_s, throttle_s=0.0
    )


def _start_embedded_worker(app: Flask) -> Callable[[], None]:
    from marketplace.jobs.queue import EmbeddedWorker

    worker = EmbeddedWorker(
        app.extensions["celery"], app.extensions["settings"].job_embedded_worker_threads
    )
    worker.start()

    def stop() -> None:
        worker.stop()
        app.extensions["job_runner"].drain()

    return stop


def init_app(app: Flask) -> None:
    """The job sandbox (started on first use), the chunk runner, the queue, the sweeper, the
    embedded worker and the API."""
    from marketplace import periodic
    from marketplace.evaluation.services import LazyPool
    from marketplace.jobs import queue, sweeper
    from marketplace.jobs.runner import ChunkRunner
    from marketplace.jobs.views import bp

    settings = app.extensions["settings"]
    app.extensions["jobs"] = JobsContext.from_settings(settings)
    pool = LazyPool(job_pool_config(settings))
    app.extensions["job_pool"] = pool
    app.extensions["job_runner"] = ChunkRunner(
        database=app.extensions["db"],
        blob_store=app.extensions["blob_store"],
        blob_cache=app.extensions["evaluation"].blob_cache,
        pool=pool,
        worker_kind="web",
        lease_s=settings.job_lease_s,
        sample_timeout_s=settings.job_sample_timeout_s,
        sample_outputs_bytes_max=settings.job_sample_outputs_bytes_max,
    )
    app.extensions["celery"] = queue.make_celery(
        app, lambda chunk_id, redelivered: app.extensions["job_runner"].run(chunk_id, redelivered)
    )
    periodic.register(app, "jobs.sweep", settings.job_sweep_interval_s, sweeper.sweep)
    if settings.job_embedded_worker_threads > 0:
        periodic.register_singleton(app, "jobs.embedded_worker", _start_embedded_worker)
    app.register_blueprint(bp)
