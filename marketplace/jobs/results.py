"""One version's outputs of a job as an npz download, assembled a chunk at a time."""

from __future__ import annotations

import io
import math
import zipfile
from typing import IO, Any

import numpy as np
from sqlmodel import Session, col, select

from marketplace.catalog.models import ModelVersion
from marketplace.errors import library_problem
from marketplace.evaluation.tensors import decode_npz, npz_member_name
from marketplace.jobs.errors import (
    JobNotFinished,
    JobVersionNotFound,
    ResultsNotStackable,
    ResultsTooLarge,
)
from marketplace.jobs.models import CHUNK_DONE, JOB_ACTIVE, JobChunk, JobVersion
from marketplace.jobs.services import find_job
from model_registry.blobstore import BlobStore
from model_registry.errors import BlobStoreError
from model_registry.inspection import RESERVED_NAME_PREFIX

# The results' own arrays, under the prefix no model output may use.
OK_ARRAY = RESERVED_NAME_PREFIX + "ok"
SAMPLE_ARRAY = RESERVED_NAME_PREFIX + "sample"


def open_npy_member(
    archive: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> IO[bytes]:
    """A stored member of ``archive`` for array ``name``, its ``.npy`` header written; the caller
    writes the C-ordered data, exactly ``shape`` of ``dtype``, and closes it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape},
    )
    info = zipfile.ZipInfo(npz_member_name(name))
    # The declared size lets zipfile write Zip64 records only for a member that needs them.
    info.file_size = header.tell() + dtype.itemsize * math.prod(shape)
    stream = archive.open(info, "w")
    stream.write(header.getvalue())
    return stream


def write_results(
    *,
    session: Session,
    store: BlobStore,
    job_id: int,
    organization_id: int,
    version_id: int,
    bytes_max: int,
    out: IO[bytes],
) -> str:
    """Write one version's outputs of a finished or cancelled job to ``out`` as npz; its name.

    One array per output with a row per sample of the chunks that ran (zeros where a sample
    failed), ``jishi.ok`` (did the sample run) and ``jishi.sample`` (its index in the dataset).
    Chunks are read one at a time, so memory holds one chunk whatever the job's size. Arrays
    of a chunk under the reserved prefix other than its ``jishi.ok`` (a model output stored
    before such names were refused) are left out: no member is ever written twice.
    """
    job = find_job(session, job_id, organization_id)
    if job.state in JOB_ACTIVE:
        raise JobNotFinished("Results are ready when the job has finished or was cancelled.")
    found = session.exec(
        select(col(JobVersion.id), col(ModelVersion.version))
        .join(ModelVersion, col(ModelVersion.id) == col(JobVersion.version_id))
        .where(JobVersion.job_id == job_id, JobVersion.version_id == version_id)
    ).first()
    if found is None:
        raise JobVersionNotFound("The job did not run that version.")
    job_version_id, version = found
    chunks = session.exec(
        select(JobChunk)
        .where(JobChunk.job_version_id == job_version_id, JobChunk.state == CHUNK_DONE)
        .order_by(col(JobChunk.chunk_index))
    ).all()
    session.commit()  # ends the read; the rows stay loaded (a rollback would expire them)

    def load(chunk: JobChunk) -> dict[str, np.ndarray]:
        if chunk.output_key is None:
            return {}
        try:
            with store.open(chunk.output_key) as body:
                data = body.read()
        except BlobStoreError as exc:
            raise library_problem(exc) from None
        return decode_npz(data, elements_max=len(data), bytes_max=len(data))

    # First pass: each output's row shape and dtype, and the size of the whole.
    layouts: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    rows = 0
    for chunk in chunks:
        rows += chunk.stop - chunk.start
        for name, array in load(chunk).items():
            if name.startswith(RESERVED_NAME_PREFIX):
                continue
            layout = (tuple(array.shape[1:]), array.dtype)
            if layouts.setdefault(name, layout) != layout:
                raise ResultsNotStackable(
                    f"Output {name[:100]!r} differs in shape between chunks; it cannot be one "
                    "array."
                )
    total = rows * (1 + 8) + sum(
        rows * dtype.itemsize * math.prod(shape) for shape, dtype in layouts.values()
    )
    if total > bytes_max:
        raise ResultsTooLarge(
            f"The results hold {total} bytes; downloads are limited to {bytes_max}."
        )

    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, (shape, dtype) in layouts.items():
            with open_npy_member(archive, name, (rows, *shape), dtype) as stream:
                for chunk in chunks:
                    arrays = load(chunk)
                    block = np.zeros((chunk.stop - chunk.start, *shape), dtype=dtype)
                    ok = arrays.get(OK_ARRAY)
                    if ok is not None and name in arrays:
                        block[ok] = arrays[name]
                    stream.write(block.tobytes())
        with open_npy_member(archive, OK_ARRAY, (rows,), np.dtype(np.bool_)) as stream:
            for chunk in chunks:
                ok = load(chunk).get(OK_ARRAY)
                if ok is None:
                    ok = np.zeros(chunk.stop - chunk.start, dtype=np.bool_)
                stream.write(ok.astype(np.bool_).tobytes())
        with open_npy_member(archive, SAMPLE_ARRAY, (rows,), np.dtype(np.int64)) as stream:
            for chunk in chunks:
                stream.write(np.arange(chunk.start, chunk.stop, dtype=np.int64).tobytes())
    return f"job-{job_id}-{version}.npz"
