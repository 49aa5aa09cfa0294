"""Datasets: a buyer's test set, uploaded as npz, stored under its organisation, never shown to
vendors.

An upload streams to a local spool while it is hashed and capped (``dataset_bytes_max``), as a
model upload does; its arrays are then read from their headers (``npz_layout``: stored members
only, so that a worker reads a chunk's rows in place, each member's checksum verified), checked
(one first axis of N samples, plain numeric dtypes, the caps), and only then written to the
blob store under the organisation (``datasets/ORG/sha256/...``) and recorded. What a job
refuses for a given version (input names, dtypes, shapes) is checked when the job is created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlmodel import Session, col, select

from marketplace.db import begin_write, utcnow
from marketplace.errors import library_problem
from marketplace.evaluation.tensors import NpyMember, TensorDecodeError, npz_layout
from marketplace.jobs.errors import (
    DatasetInUse,
    DatasetInvalid,
    DatasetNotFound,
    DatasetTooLarge,
    TooManyDatasets,
)
from marketplace.jobs.models import JOB_ACTIVE, Dataset, EvaluationJob
from marketplace.jobs.schemas import EXPECTED_PREFIX, DatasetArray, DatasetPublic
from model_registry.blobstore import BlobStore
from model_registry.errors import BlobStoreError, BlobTooLarge
from model_registry.upload import spool_stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetLimits:
    bytes_max: int
    samples_max: int
    arrays_max: int
    per_organization_max: int


def dataset_key(organization_id: int, sha256: str) -> str:
    return f"datasets/{organization_id}/sha256/{sha256[:2]}/{sha256[2:]}.npz"


def dataset_public(row: Dataset) -> DatasetPublic:
    assert row.id is not None
    inputs, expected = [], []
    for array in row.arrays:
        item = DatasetArray(name=array["name"], dtype=array["dtype"], shape=array["shape"])
        if item.name.startswith(EXPECTED_PREFIX):
            expected.append(item.model_copy(update={"name": item.name[len(EXPECTED_PREFIX) :]}))
        else:
            inputs.append(item)
    return DatasetPublic.model_validate(
        {**row.model_dump(), "inputs": inputs, "expected": expected}
    )


def members_of(row: Dataset) -> dict[str, NpyMember]:
    """The dataset's arrays as recorded at upload, by name, for reading rows in place."""
    import numpy as np

    return {
        a["name"]: NpyMember(a["name"], np.dtype(a["descr"]), tuple(a["shape"]), a["offset"])
        for a in row.arrays
    }


def _check_layout(members: list[NpyMember], limits: DatasetLimits) -> int:
    """One first axis of N samples shared by every array; N within the cap. Returns N."""
    samples: int | None = None
    inputs = 0
    for member in members:
        label = member.name[:100]
        if not member.shape:
            raise DatasetInvalid(f"Array {label!r} is a scalar; every array needs a sample axis.")
        if samples is None:
            samples = member.shape[0]
        elif member.shape[0] != samples:
            raise DatasetInvalid(
                f"Array {label!r} has {member.shape[0]} samples on its first axis; the others "
                f"have {samples}. Every array must share the first axis.",
                errors=[{"field": label, "message": "first axis differs"}],
            )
        if member.name.startswith(EXPECTED_PREFIX):
            if not member.name[len(EXPECTED_PREFIX) :]:
                raise DatasetInvalid("An expected array needs an output name after 'expected:'.")
        else:
            inputs += 1
    if samples is None or samples < 1:
        raise DatasetInvalid("The dataset holds no samples.")
    if samples > limits.samples_max:
        raise DatasetInvalid(f"Datasets are limited to {limits.samples_max} samples.")
    if inputs == 0:
        raise DatasetInvalid("The dataset holds no input arrays (only expected outputs).")
    return samples


def upload_dataset(
    *,
    session: Session,
    store: BlobStore,
    organization_id: int,
    name: str | None,
    body: IO[bytes],
    spool_dir: Path,
    limits: DatasetLimits,
) -> DatasetPublic:
    """Receive, check, store and record a dataset; nothing is stored when it is refused."""
    count = session.execute(
        sa.select(sa.func.count())
        .select_from(Dataset)
        .where(col(Dataset.organization_id) == organization_id, col(Dataset.deleted_at).is_(None))
    ).scalar_one()
    session.rollback()
    if count >= limits.per_organization_max:
        raise TooManyDatasets(
            f"An organisation keeps at most {limits.per_organization_max} datasets; "
            "delete one first."
        )
    try:
        spool = spool_stream(body, directory=spool_dir, size_max=limits.bytes_max)
    except BlobTooLarge:
        raise DatasetTooLarge(
            f"Datasets are limited to {limits.bytes_max} bytes.", headers={"Connection": "close"}
        ) from None
    except BlobStoreError as exc:  # the spool's disk: full or unwritable
        raise library_problem(exc) from None
    try:
        try:
            with open(spool.path, "rb") as file:
                members = npz_layout(
                    file,
                    elements_max=limits.bytes_max,  # a byte holds at most one element
                    arrays_max=limits.arrays_max,
                )
        except TensorDecodeError as exc:
            raise DatasetInvalid(str(exc)) from None
        samples = _check_layout(members, limits)
        key = dataset_key(organization_id, spool.sha256)
        try:
            if not store.exists(key):
                with open(spool.path, "rb") as file:
                    store.put_stream(
                        key, file, size_max=spool.size, sha256=spool.sha256, size=spool.size
                    )
        except BlobStoreError as exc:
            raise library_problem(exc) from None
        row = Dataset(
            organization_id=organization_id,
            name=(name or "").strip() or f"dataset-{spool.sha256[:12]}",
            sha256=spool.sha256,
            size_bytes=spool.size,
            blob_key=key,
            samples=samples,
            arrays=[
                {
                    "name": m.name,
                    "dtype": m.dtype.newbyteorder("=").name,
                    "descr": m.dtype.str,
                    "shape": list(m.shape),
                    "offset": m.offset,
                }
                for m in members
            ],
        )
        session.add(row)
        session.commit()
        return dataset_public(row)
    finally:
        spool.discard()


def get_dataset(session: Session, *, dataset_id: int, organization_id: int) -> Dataset:
    """The organisation's dataset; 404 for anyone else's, as for one that does not exist."""
    row = session.get(Dataset, dataset_id)
    if row is None or row.organization_id != organization_id or row.deleted_at is not None:
        raise DatasetNotFound("No such dataset.")
    return row


def list_datasets(session: Session, *, organization_id: int) -> list[DatasetPublic]:
    rows = session.exec(
        select(Dataset)
        .where(Dataset.organization_id == organization_id, col(Dataset.deleted_at).is_(None))
        .order_by(col(Dataset.id).desc())
    ).all()
    return [dataset_public(r) for r in rows]


def delete_dataset(
    *, session: Session, store: BlobStore, dataset_id: int, organization_id: int
) -> None:
    """Forget a dataset and delete its bytes; 409 while a queued or running job uses it."""
    begin_write(session)
    row = session.exec(select(Dataset).where(Dataset.id == dataset_id).with_for_update()).first()
    if row is None or row.organization_id != organization_id or row.deleted_at is not None:
        raise DatasetNotFound("No such dataset.")
    running = session.exec(
        select(EvaluationJob.id).where(
            EvaluationJob.dataset_id == dataset_id, col(EvaluationJob.state).in_(JOB_ACTIVE)
        )
    ).first()
    if running is not None:
        raise DatasetInUse(f"Evaluation job {running} uses the dataset; cancel it or let it end.")
    row.deleted_at = utcnow()
    session.add(row)
    shared = session.exec(
        select(Dataset.id).where(
            Dataset.blob_key == row.blob_key,
            Dataset.id != row.id,
            col(Dataset.deleted_at).is_(None),
        )
    ).first()
    session.commit()
    if shared is None:
        try:
            store.delete(row.blob_key)
        except BlobStoreError as exc:
            log.warning("could not delete dataset blob %s: %s", row.blob_key, exc.log_detail)
