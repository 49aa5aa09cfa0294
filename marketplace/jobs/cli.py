"""``jishi worker``: a node that runs evaluation jobs' chunks, with its own sandbox pool."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import with_appcontext

WORKER_SWITCH_INTERVAL_S = 0.0005


@click.command("worker")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=2,
    show_default=True,
    help="Chunks run at once (each takes one message from the broker at a time).",
)
@click.option(
    "--sweep/--no-sweep",
    default=True,
    show_default=True,
    help="Also publish again the chunks whose lease ran out (any number of nodes may).",
)
@with_appcontext
def worker(threads: int, sweep: bool) -> None:
    """Run evaluation jobs from the broker until stopped (SIGTERM: finish running chunks)."""
    from marketplace import periodic
    from marketplace.jobs import queue

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = app.extensions["settings"]
    runner = app.extensions["job_runner"]
    runner.worker_kind = "worker"
    # The thread running a chunk waits on the sandbox between batches; when it wakes it must
    # take the GIL back from the recorder thread, which by default lets go only every 5 ms.
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL_S)
    click.echo(
        f"job worker {queue.worker_name('worker')}: {threads} threads on "
        f"{queue.describe_broker(settings)}, queue {settings.job_queue_name}, "
        "its own sandbox pool"
    )
    queue.serve_tasks_of(app.extensions["celery"])
    sweeper = periodic.Runner(app, names={"jobs.sweep"}) if sweep else None
    if sweeper is not None:
        sweeper.start()
    try:
        app.extensions["celery"].Worker(
            hostname=queue.worker_name("worker"),
            pool_cls="threads",
            concurrency=threads,
            # Workers do not coordinate with each other (the broker shares out the chunks, and
            # the sweeper those whose lease ran out), so Celery's worker-to-worker messages stay
            # off, as in the embedded worker.
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="INFO",
            quiet=True,  # the line echoed above replaces Celery's start-up banner
        ).start()
    finally:
        if sweeper is not None:
            sweeper.stop()
        runner.drain()
        app.extensions["job_pool"].close()
        app.extensions["db"].engine.dispose()
