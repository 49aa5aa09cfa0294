"""The sweeper: publish again every chunk whose lease ran out.

A chunk's lease is set when it is published (``job_requeue_s``: long enough to wait in the
queue) and when a worker starts it (``job_lease_s``, renewed while it runs). A lease runs out
when the message was lost (a Redis or embedded queue restarted, a consumer killed before it
acknowledged) or the worker died. Each such chunk is put back in the queue by exactly one node
(a conditional ``UPDATE`` on its lease) and published again; a duplicate of a message that was
not lost after all finds the chunk running or done and is dropped.
"""

from __future__ import annotations

import logging

from flask import Flask

from marketplace.jobs import chunks, queue
from model_registry.blobstore import remove_stale_files

log = logging.getLogger(__name__)

SWEEP_BATCH_MAX = 500
# Messages the embedded queue has handed out are kept this long, then deleted.
PROCESSED_KEEP_S = 3600


def sweep(app: Flask) -> int:
    """One pass; returns how many chunks were published again."""
    settings = app.extensions["settings"]
    session = app.extensions["db"].session()
    try:
        chunk_ids = chunks.expired_chunks(
            session, requeue_s=settings.job_requeue_s, batch_max=SWEEP_BATCH_MAX
        )
    finally:
        session.close()
    if chunk_ids:
        log.info("publishing %d chunks again whose lease ran out", len(chunk_ids))
        queue.publish(app.extensions["celery"], chunk_ids)
    if queue.is_embedded(settings):
        processed = queue.broker_folder(app.instance_path) / "processed"
        if processed.is_dir():
            remove_stale_files(processed, "*.msg", PROCESSED_KEEP_S)
    return len(chunk_ids)
