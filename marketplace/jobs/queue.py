"""The task queue of evaluation jobs: Celery on a broker named by URL, or files on one node.

``MARKETPLACE_BROKER_URL`` names RabbitMQ (``amqp://``) or Redis (``redis://``). Left empty,
the queue is kombu's filesystem transport under ``instance/broker``: a directory of message
files that every process of the node shares. That is what gunicorn's process model needs: a
job created in one server process must reach the worker that runs in another (an in-memory
transport lives and dies with one process), and a message file is taken by exactly one
consumer (an atomic rename). It needs no server and, unlike kombu's SQLAlchemy transport on
SQLite, takes no database write lock on every poll and keeps no delivered rows for ever.

Delivery is at least once, by design: tasks are acknowledged late (after they ran) and
rejected back to the queue when their worker dies, each worker takes one message at a time,
and a broker that goes away is reconnected to for ever. What the broker cannot promise (a
Redis or file queue loses the messages it held when it restarts or its consumer is killed)
the sweeper makes up for: it publishes again every chunk whose lease ran out
(:mod:`marketplace.jobs.sweeper`). Chunks are idempotent, so a message delivered twice costs
some compute and nothing else.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Flask
from kombu.utils.url import maybe_sanitize_url

from marketplace.config import Settings

log = logging.getLogger(__name__)

RUN_CHUNK = "jishi.jobs.run_chunk"
EMBEDDED_BROKER = "filesystem://localhost//"


def broker_folder(instance_path: str | Path) -> Path:
    """Where the embedded queue keeps its message files."""
    return Path(instance_path) / "broker"


def is_embedded(settings: Settings) -> bool:
    return not settings.broker_url


def describe_broker(settings: Settings) -> str:
    """The broker for people to read: its URL without the password, or the embedded queue."""
    if is_embedded(settings):
        return "the embedded file queue (one node, no server)"
    return str(maybe_sanitize_url(settings.broker_url))


def _transport_options(settings: Settings, instance_path: str) -> dict[str, Any]:
    if not is_embedded(settings):
        return {}
    folder = broker_folder(instance_path)
    queue, processed, control = folder / "queue", folder / "processed", folder / "control"
    for path in (queue, processed, control):
        path.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        # Taken messages are moved here (an atomic rename within one file system, so two
        # consumers never both take one) and removed by the sweeper after a while.
        "store_processed": True,
        "processed_folder": str(processed),
        "control_folder": str(control),
        "polling_interval": 0.05,
    }


def make_celery(app: Flask, run_chunk: Callable[[int, bool], str]) -> Celery:
    """The Celery app of ``app``: its broker, its delivery guarantees, its one task.

    ``run_chunk(chunk_id, redelivered)`` runs one chunk in a worker and says what became of it.
    """
    settings: Settings = app.extensions["settings"]
    celery = Celery("jishi", set_as_current=False)
    celery.conf.update(
        broker_url=settings.broker_url or EMBEDDED_BROKER,
        broker_transport_options=_transport_options(settings, app.instance_path),
        # At least once: acknowledged after the task ran, back to the queue if its worker dies,
        # one message at a time per worker thread.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A task keeps running when the broker connection drops; its acknowledgement is lost
        # and the broker delivers it again, which a finished chunk answers at once.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=4.0,
        broker_heartbeat=10,
        task_default_queue=settings.job_queue_name,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )

    # Registered on this app alone, at once: a shared task would reach every Celery app the
    # process makes later (tests make many), each calling the first app's runner. It takes its
    # delivery guarantees (acks_late, reject_on_worker_lost) from the configuration above.
    @celery.task(name=RUN_CHUNK, bind=True, shared=False, lazy=False)
    def run_chunk_task(task: Any, chunk_id: int) -> str:
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        return run_chunk(int(chunk_id), redelivered)

    return celery


def publish(celery: Celery, chunk_ids: Iterable[int]) -> bool:
    """Send one task per chunk; False when the broker could not be reached (the sweeper will
    publish them once their lease runs out)."""
    ids = list(chunk_ids)
    if not ids:
        return True
    try:
        with celery.producer_or_acquire() as producer:
            for chunk_id in ids:
                celery.send_task(
                    RUN_CHUNK,
                    args=[chunk_id],
                    producer=producer,
                    retry=True,
                    retry_policy={
                        "max_retries": 2,
                        "interval_start": 0.2,
                        "interval_step": 0.5,
                        "interval_max": 1.0,
                    },
                )
    except Exception as exc:  # any broker failure; the chunks wait for the sweeper
        log.warning("could not publish %d chunks to the broker: %s", len(ids), exc)
        return False
    return True


def serve_tasks_of(celery: Celery) -> None:
    """Make ``celery`` the app whose tasks this process's worker runs.

    A Celery worker finds the task of a message in the process's default app (its pool threads
    have no other), so the worker's app must be that one; a process runs one worker.
    """
    celery.set_default()
    celery.set_current()


def worker_name(kind: str) -> str:
    """A node-unique worker name: the kind, the host and the process."""
    return f"{kind}-{os.getpid()}@{socket.gethostname()}"


class EmbeddedWorker:
    """A Celery worker on threads inside a server process (``jishi serve``)."""

    def __init__(self, celery: Celery, threads: int) -> None:
        self.celery = celery
        self.threads = threads
        self._controller: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        serve_tasks_of(self.celery)
        self._controller = self.celery.WorkController(
            hostname=worker_name("embedded"),
            pool_cls="threads",
            concurrency=self.threads,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
            logfile=None,
        )
        self._thread = threading.Thread(
            target=self._controller.start, name="job-worker", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the running tasks (up to ``timeout_s``) and stop consuming."""
        if self._controller is not None:
            self._controller.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._controller = None
        self._thread = None
