"""Model versions: upload and inspection, reads, revocation, artifacts, samples, sweeping."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from marketplace.audit import events as audit_events
from marketplace.catalog.errors import (
    ContentDigestMismatch,
    DownloadNotAllowed,
    InspectionBusy,
    InspectionUnavailable,
    InvalidVersion,
    ListingNotFound,
    ListingSuspended,
    ModelRejected,
    ModelTooLarge,
    SampleInvalid,
    SampleNotFound,
    SampleTooLarge,
    StorageUnavailable,
    VersionExists,
    VersionNotFound,
    VersionRevoked,
)
from marketplace.catalog.models import (
    LISTING_ACTIVE,
    Listing,
    ModelVersion,
    VersionSample,
)
from marketplace.catalog.schemas import (
    SEMVER,
    VERSION_CHARS_MAX,
    SamplePublic,
    VersionPublic,
)
from marketplace.catalog.services.listings import (
    _get_listing,
    get_owned_listing,
    get_visible_listing,
)
from marketplace.catalog.services.presenters import version_public
from marketplace.db import begin_write, utcnow
from marketplace.errors import library_problem
from marketplace.evaluation.tensors import TensorDecodeError, decode_npz
from marketplace.rows import attributes
from model_registry.blobstore import (
    CONTENT_PREFIX,
    BlobStore,
    sha256_of_content_key,
)
from model_registry.confined import BUSY_RETRY_AFTER_S
from model_registry.errors import BlobStoreError, BlobTooLarge
from model_registry.upload import (
    DigestMismatch,
    Ingested,
    Inspector,
    Spool,
    ingest,
    ingest_declared,
    spool_stream,
)
from sandbox.errors import SandboxBusy, SandboxError

log = logging.getLogger(__name__)


def parse_version(text: str | None) -> str:
    """A semantic version string, or 422 ``invalid_version``."""
    text = text or ""
    if not text or len(text) > VERSION_CHARS_MAX or not SEMVER.fullmatch(text):
        raise InvalidVersion("The version must be semantic versioning, such as 1.0.0.")
    return text


def _find_version(session: Session, listing_id: int, version: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(
            ModelVersion.listing_id == listing_id, ModelVersion.version == version
        )
    ).first()


def ensure_version_free(*, session: Session, listing: Listing, version: str) -> None:
    """409 ``version_exists`` when the listing already has ``version`` (versions are immutable)."""
    if _find_version(session, listing.id or 0, version) is not None:
        raise VersionExists(f"Version {version} exists; versions are immutable.")
    session.rollback()  # end the read transaction before the long upload


@dataclass(frozen=True)
class UploadContext:
    """What publishing a version needs from its surroundings (built by the web layer)."""

    store: BlobStore
    inspect: Inspector
    spool_dir: Path
    size_max: int


def inspection_busy(retry_after_s: float = BUSY_RETRY_AFTER_S) -> InspectionBusy:
    """503 ``inspection_busy``: the node runs as many inspections as it may."""
    return InspectionBusy(
        "Too many models are being inspected on this server; retry later.",
        headers={"Retry-After": str(max(1, round(retry_after_s))), "Connection": "close"},
    )


def _inspection_problem(
    exc: SandboxError,
) -> ModelRejected | InspectionUnavailable | InspectionBusy:
    if exc.log_detail:
        log.warning("inspection %s: %s", exc.code, exc.log_detail)
    if isinstance(exc, SandboxBusy):
        return inspection_busy(exc.retry_after_s)
    if exc.code == "sandbox_unavailable":
        return InspectionUnavailable("Model inspection is unavailable; retry later.")
    finding = {
        "code": f"inspection_{exc.code}",
        "severity": "error",
        "message": "The model could not be inspected within the limits "
        f"({exc.code.replace('_', ' ')}).",
    }
    return ModelRejected("The model was rejected.", findings=[finding])


def _receive(
    body: IO[bytes], context: UploadContext, declared_sha256: str | None, body_size: int | None
) -> tuple[Spool, Ingested]:
    """Spool, inspect and store the body, by the declared-digest path when there is one."""
    if declared_sha256 is not None:
        return ingest_declared(
            body,
            sha256=declared_sha256,
            directory=context.spool_dir,
            size_max=context.size_max,
            store=context.store,
            inspect=context.inspect,
            size=body_size,
        )
    spool = spool_stream(body, directory=context.spool_dir, size_max=context.size_max)
    try:
        return spool, ingest(spool, store=context.store, inspect=context.inspect)
    except BaseException:
        spool.discard()
        raise


def publish_version(
    *,
    session: Session,
    listing: Listing,
    version: str,
    body: IO[bytes],
    context: UploadContext,
    declared_sha256: str | None = None,
    body_size: int | None = None,
) -> VersionPublic:
    """Receive an upload, inspect it, store its bytes once, and record the version.

    The body streams to a local spool (for the inspection) and to the store: after the body
    when its digest is unknown, or while it arrives when the client declared it (the store
    write then completes only if the digest matches and the model is accepted). The blob is
    written before the row, so no row ever points to nothing. If the row cannot be written (a
    concurrent upload took the version), a blob this call wrote and no row uses is deleted;
    the sweeper catches what a crash leaves. ``body_size`` is the body's declared length (its
    Content-Length), when it has one.
    """
    try:
        spool, ingested = _receive(body, context, declared_sha256, body_size)
    except BlobTooLarge:
        raise ModelTooLarge(
            f"Models are limited to {context.size_max} bytes.", headers={"Connection": "close"}
        ) from None
    except DigestMismatch:
        raise ContentDigestMismatch("The body does not match its Content-Digest.") from None
    except SandboxError as exc:
        raise _inspection_problem(exc) from None
    except BlobStoreError as exc:
        raise library_problem(exc) from None
    try:
        return _record_version(session, listing, version, spool, ingested, context)
    finally:
        spool.discard()


def _record_version(
    session: Session,
    listing: Listing,
    version: str,
    spool: Spool,
    ingested: Ingested,
    context: UploadContext,
) -> VersionPublic:
    report = ingested.report
    if not report.ok:
        raise ModelRejected(
            "The model was rejected; see findings.",
            findings=[f.to_dict() for f in report.findings],
        )
    # The listing was expired by an earlier rollback: reading it again must happen inside the
    # writing transaction, or on SQLite the insert after that read is refused at once when the
    # journal's sequencer wrote in between (a stale snapshot cannot take the write lock).
    begin_write(session)
    row = ModelVersion(
        listing_id=listing.id or 0,
        version=version,
        sha256=spool.sha256,
        size_bytes=spool.size,
        blob_key=ingested.key,
        **attributes(report, "ir_version opsets inputs outputs stats"),
        findings=[f.to_dict() for f in report.findings],
    )
    session.add(row)
    try:
        # Everything that can fail runs before the commit (the response is built from the
        # flushed row), so an error never leaves a committed row behind a 4xx or 5xx.
        session.flush()
        published = version_public(row)
        audit_events.version_published(session, row, listing)
        if not spool.whole:
            _ensure_stored(context.store, ingested.key)
        session.commit()
    except IntegrityError:
        session.rollback()
        if ingested.stored_new:
            _delete_if_unreferenced(session, context.store, ingested.key, spool.sha256)
        raise VersionExists(f"Version {version} exists; versions are immutable.") from None
    except BaseException:
        session.rollback()
        if ingested.stored_new:
            _delete_if_unreferenced(session, context.store, ingested.key, spool.sha256)
        raise
    # A concurrent failed upload of the same bytes may have deleted the blob between our
    # existence check and our commit; our row now references it, so put it back. A spool
    # without its bulk weights cannot: its upload checked the blob just before the commit.
    try:
        if not context.store.exists(ingested.key):
            if not spool.whole:
                log.error("blob %s deleted while its version was committed", ingested.key)
                return published
            with open(spool.path, "rb") as body:
                context.store.put_stream(
                    ingested.key, body, size_max=spool.size, sha256=spool.sha256, size=spool.size
                )
    except BlobStoreError as exc:
        log.error("could not re-store blob %s: %s", ingested.key, exc.log_detail)
    return published


def _ensure_stored(store: BlobStore, key: str) -> None:
    """Refuse (503, retry) to commit a version whose blob a concurrent failed upload of the same
    bytes deleted after this upload wrote it."""
    try:
        present = store.exists(key)
    except BlobStoreError as exc:
        raise library_problem(exc) from None
    if not present:
        log.warning("blob %s deleted by a concurrent upload before its version was committed", key)
        raise StorageUnavailable("The model's storage changed during the upload; upload it again.")


def _delete_if_unreferenced(session: Session, store: BlobStore, key: str, sha256: str) -> None:
    used = session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha256)).first()
    session.rollback()
    if used is None:
        try:
            store.delete(key)
        except BlobStoreError as exc:
            log.warning("could not delete unreferenced blob %s: %s", key, exc.log_detail)


def list_versions(
    *, session: Session, listing_id: int, viewer_org_id: int | None
) -> list[VersionPublic]:
    get_visible_listing(session=session, listing_id=listing_id, viewer_org_id=viewer_org_id)
    rows = session.exec(
        select(ModelVersion)
        .where(ModelVersion.listing_id == listing_id)
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
    ).all()
    return [version_public(r) for r in rows]


LATEST = "latest"


def resolve_version(*, session: Session, listing_id: int, version: str) -> str:
    """``version``, or for the alias ``latest`` the newest version that is not revoked.

    Versions are semantic version numbers, so the alias can never name a real version.
    """
    if version != LATEST:
        return version
    newest = session.exec(
        select(ModelVersion.version)
        .where(ModelVersion.listing_id == listing_id, col(ModelVersion.revoked_at).is_(None))
        .order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
        .limit(1)
    ).first()
    if newest is None:
        _get_listing(session, listing_id)  # no such model is model_not_found, as for a number
        raise VersionNotFound("The model has no version that is not revoked.")
    return newest


def get_version(
    *, session: Session, listing_id: int, version: str, viewer_org_id: int | None
) -> ModelVersion:
    get_visible_listing(session=session, listing_id=listing_id, viewer_org_id=viewer_org_id)
    version = resolve_version(session=session, listing_id=listing_id, version=version)
    row = _find_version(session, listing_id, version)
    if row is None:
        raise VersionNotFound("No such version.")
    return row


def revoke_version(
    *, session: Session, listing_id: int, version: str, organization_id: int, is_admin: bool
) -> VersionPublic:
    """Revoke a version (its vendor or an administrator): no more trials, runs or downloads."""
    begin_write(session)
    listing = _get_listing(session, listing_id)
    if listing.organization_id != organization_id and not is_admin:
        raise ListingNotFound("No such model.")
    row = _find_version(session, listing_id, version)
    if row is None:
        raise VersionNotFound("No such version.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        audit_events.version_revoked(session, row, listing)
        session.commit()
    return version_public(row)


class DownloadPolicy(Protocol):
    """Whether an organisation other than the vendor may download a version's artifact.

    The app injects licensing's rule; the catalog itself knows nothing of licences.
    """

    def __call__(
        self, *, session: Session, organization_id: int, listing_id: int, version_id: int
    ) -> bool: ...


def vendor_only(
    *, session: Session, organization_id: int, listing_id: int, version_id: int
) -> bool:
    """The policy of a catalog without licensing: only the vendor downloads its artifacts."""
    return False


@dataclass(frozen=True)
class ArtifactAccess:
    """How artifacts are handed out: the store, presigned URLs' lifetime, who else may download."""

    store: BlobStore
    url_ttl_s: int
    may_download: DownloadPolicy = vendor_only


@dataclass(frozen=True)
class Artifact:
    """Where an artifact can be fetched: a presigned URL, or a stream to send."""

    url: str | None
    stream: BinaryIO | None
    filename: str
    size: int


def open_artifact(
    *,
    session: Session,
    access: ArtifactAccess,
    listing_id: int,
    version: str,
    organization_id: int,
) -> Artifact:
    """The artifact for the vendor, or a licensee whose offer allows download."""
    listing = get_visible_listing(
        session=session, listing_id=listing_id, viewer_org_id=organization_id
    )
    version = resolve_version(session=session, listing_id=listing_id, version=version)
    row = _find_version(session, listing_id, version)
    if row is None:
        raise VersionNotFound("No such version.")
    if row.revoked_at is not None:
        raise VersionRevoked("This version has been revoked and cannot be downloaded.")
    if listing.organization_id != organization_id and not access.may_download(
        session=session,
        organization_id=organization_id,
        listing_id=listing_id,
        version_id=row.id or 0,
    ):
        raise DownloadNotAllowed("Your licences do not allow downloading this model.")
    filename = f"{listing.slug}-{row.version}.onnx"
    try:
        url = access.store.presigned_url(row.blob_key, access.url_ttl_s)
        stream = None if url is not None else access.store.open(row.blob_key)
    except BlobStoreError as exc:
        raise library_problem(exc) from None
    finally:
        session.rollback()
    return Artifact(url=url, stream=stream, filename=filename, size=row.size_bytes)


# --- for the evaluator -------------------------------------------------------------------------


def get_version_for_evaluation(
    session: Session, model_id: int, version: str
) -> tuple[ModelVersion, Listing]:
    """The version to evaluate and its listing; 404 if missing, 403 if suspended or revoked."""
    # One query on the evaluate hot path; the second only to tell which 404 it is.
    if version == LATEST:
        version = resolve_version(session=session, listing_id=model_id, version=version)
    found = session.exec(
        select(ModelVersion, Listing)
        .join(Listing, col(Listing.id) == col(ModelVersion.listing_id))
        .where(ModelVersion.listing_id == model_id, ModelVersion.version == version)
    ).first()
    if found is None:
        _get_listing(session, model_id)
        raise VersionNotFound("No such version.")
    row, listing = found
    if listing.status != LISTING_ACTIVE:
        raise ListingSuspended("This model is suspended.")
    if row.revoked_at is not None:
        raise VersionRevoked("This version has been revoked.")
    return row, listing


def load_model_bytes(blob_store: BlobStore, version: ModelVersion) -> bytes:
    """The artifact's bytes (for the sandbox, which loads models from memory), checked against
    the hash recorded at upload: bytes altered in the store are never run."""
    with blob_store.open(version.blob_key) as body:
        data = body.read(version.size_bytes + 1)
    if len(data) != version.size_bytes or hashlib.sha256(data).hexdigest() != version.sha256:
        log.error("artifact of version %s does not match its recorded hash", version.id)
        raise StorageUnavailable("The stored artifact does not match its record.")
    return data


def _check_sample(row: ModelVersion, arrays: dict[str, Any]) -> dict[str, Any]:
    """The sample's tensors against the signature the inspection recorded for the version.

    The sandbox checks every evaluation again against the signature the runtime reports; this
    check only keeps a sample that could never run from being offered to buyers.
    """
    expected = {spec["name"]: spec for spec in row.inputs}
    unknown = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays))
    if unknown:
        raise SampleInvalid(f"The model has no input {unknown[0][:100]!r}.")
    if missing:
        raise SampleInvalid(f"The sample lacks the input {missing[0][:100]!r}.")
    tensors: dict[str, Any] = {}
    for name, spec in expected.items():
        array = arrays[name]
        label = name[:100]
        if spec.get("dtype") != array.dtype.name:
            raise SampleInvalid(f"Input {label!r} must have dtype {spec.get('dtype')}.")
        shape = spec.get("shape")
        if shape is not None:
            if array.ndim != len(shape):
                raise SampleInvalid(f"Input {label!r} must have rank {len(shape)}.")
            for axis, (got, want) in enumerate(zip(array.shape, shape, strict=True)):
                if isinstance(want, int) and got != want:
                    raise SampleInvalid(f"Input {label!r} must have size {want} on axis {axis}.")
        tensors[name] = {"dtype": array.dtype.name, "shape": list(array.shape)}
    return tensors


def attach_sample(
    *,
    session: Session,
    listing_id: int,
    version: str,
    organization_id: int,
    data: bytes,
    bytes_max: int,
    elements_max: int,
) -> SamplePublic:
    """Attach (or replace) the version's sample input: an npz matching its signature (owner)."""
    begin_write(session)
    get_owned_listing(session=session, listing_id=listing_id, organization_id=organization_id)
    row = _find_version(session, listing_id, version)
    if row is None or row.id is None:
        raise VersionNotFound("No such version.")
    if row.revoked_at is not None:
        # Nobody can read a revoked version's sample (410): neither is one written.
        raise VersionRevoked("This version has been revoked.")
    if len(data) > bytes_max:
        raise SampleTooLarge(f"Sample inputs are limited to {bytes_max} bytes.")
    try:
        arrays = decode_npz(data, elements_max=elements_max, bytes_max=bytes_max)
    except TensorDecodeError as exc:
        raise SampleInvalid(str(exc)) from None
    tensors = _check_sample(row, arrays)
    digest = hashlib.sha256(data).hexdigest()
    sample = session.get(VersionSample, row.id)
    if sample is None:
        sample = VersionSample(version_id=row.id, sha256="", size_bytes=0, data=b"")
    sample.sha256, sample.size_bytes, sample.data = digest, len(data), data
    sample.tensors, sample.created_at = tensors, utcnow()
    session.add(sample)
    session.commit()
    return _sample_public(row, sample)


def _sample_public(row: ModelVersion, sample: VersionSample) -> SamplePublic:
    return SamplePublic.model_validate(
        {**sample.model_dump(exclude={"data"}), "version": row.version}
    )


def sample_of(*, session: Session, version: ModelVersion) -> tuple[SamplePublic, bytes]:
    """The version's sample and its bytes; the caller has checked who may have it."""
    sample = session.get(VersionSample, version.id)
    if sample is None:
        raise SampleNotFound("This version has no sample input.")
    return _sample_public(version, sample), sample.data


def samples_of(*, session: Session, listing_id: int) -> dict[str, SamplePublic]:
    """The listing's versions that have a sample, by version (without the bytes)."""
    rows = session.exec(
        select(VersionSample, ModelVersion.version)
        .join(ModelVersion, col(ModelVersion.id) == col(VersionSample.version_id))
        .where(ModelVersion.listing_id == listing_id)
        .options(sa.orm.defer(VersionSample.data))  # type: ignore[arg-type]
    ).all()
    return {
        version: SamplePublic(
            version=version,
            sha256=sample.sha256,
            size_bytes=sample.size_bytes,
            tensors=sample.tensors,
            created_at=sample.created_at,
        )
        for sample, version in rows
    }


def sweep_blobs(*, session: Session, store: BlobStore, grace_s: int) -> dict[str, int]:
    """Delete artifacts no version references (older than ``grace_s``, so uploads in flight
    survive) and abandoned partial uploads. Returns counts."""
    cutoff = utcnow().timestamp() - grace_s
    referenced = set(session.exec(select(ModelVersion.sha256).distinct()).all())
    session.rollback()
    deleted = 0
    for stat in store.list(CONTENT_PREFIX):
        digest = sha256_of_content_key(stat.key)
        if digest is None or digest in referenced or stat.modified_at.timestamp() > cutoff:
            continue
        store.delete(stat.key)
        deleted += 1
    incomplete = store.sweep_incomplete(grace_s)
    return {"deleted_blobs": deleted, "aborted_uploads": incomplete}
