"""Signed evaluation reports: what a job measured, in a form anyone can check offline.

A report is a JSON object in the format ``jishi-evaluation-report/1``: the job, the dataset (its
SHA-256 and sample count), the metric, the onnxruntime version and execution settings, and one
entry per model version with its figures. Run parameters that change a figure's meaning (``k``
of ``top_k``, chunk sizes, timeouts) belong in ``execution``.

Figures that are fractions travel as decimal strings with a fixed number of places
(:data:`METRIC_PLACES` for metric values, :data:`LATENCY_PLACES` for latencies): canonical JSON
refuses floats, because JCS implementations disagree on a float's shortest form, while Python
formats a float64 to fixed places correctly rounded on every version. Counts and money are
integers, money in minor units of ``currency``.

The server signs the report's RFC 8785 canonical bytes (:mod:`marketplace.canonical`) with the
journal's Ed25519 key: the key ``GET /api/v1/audit/public-keys`` publishes, so a report verifies
with the verifier key an audit export verifies with (``jishi reports verify REPORT --public-key
KEY``). The journal signs C2SP notes, whose text always ends in a newline; canonical JSON of an
object ends in ``}``, so a report signature can never pass for a note signature or the reverse.
No Flask, no database: the offline verifier uses this module alone.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from marketplace.audit.notes import Signer, VerifierKey
from marketplace.canonical import CanonicalJsonError, canonical_json

if TYPE_CHECKING:
    from marketplace.audit.keys import AuditKeyStore

REPORT_FORMAT = "jishi-evaluation-report/1"
SIGNATURE_ALGORITHM = "ed25519"
METRIC_PLACES = 6
LATENCY_PLACES = 3
# A report holds a few figures per version; anything this large is not one of ours.
REPORT_BYTES_MAX = 8 * 1024 * 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_HASH = re.compile(r"[0-9a-f]{8}")
_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_CURRENCY = re.compile(r"[A-Z]{3}")
_SIGNATURE_FIELDS = frozenset({"algorithm", "key_name", "key_hash", "value"})


class ReportInvalid(ValueError):
    """The document is not a report signed by a trusted key; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _decimal(value: float | None, places: int, what: str) -> str | None:
    """``value`` as a plain decimal string with ``places`` places (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number or None, not {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, not {value!r}")
    # -0.0 passes the sign check above but would print as "-0.000…".
    return f"{abs(float(value)):.{places}f}"


# --- the fields of format /1 ----------------------------------------------------------------------


def _decimal_string(places: int) -> Callable[[Any], bool]:
    pattern = re.compile(rf"(0|[1-9][0-9]*)\.[0-9]{{{places}}}")
    return lambda v: v is None or (isinstance(v, str) and pattern.fullmatch(v) is not None)


def _count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 256


def _sha256(v: Any) -> bool:
    return isinstance(v, str) and _SHA256.fullmatch(v) is not None


def _opsets(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(domain, str) and _count(version) for domain, version in v.items()
    )


def _at(v: Any) -> bool:
    if not isinstance(v, str) or _AT.fullmatch(v) is None:
        return False
    try:
        dt.datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


_VERSION_FIELDS: dict[str, Callable[[Any], bool]] = {
    "model_id": _count,
    "model_slug": _text,
    "version": _text,
    "model_sha256": _sha256,
    "opsets": _opsets,
    "metric_value": _decimal_string(METRIC_PLACES),
    "samples_done": _count,
    "samples_failed": _count,
    "latency_p50_ms": _decimal_string(LATENCY_PLACES),
    "latency_p99_ms": _decimal_string(LATENCY_PLACES),
    "cost_per_1000_minor": lambda v: v is None or _count(v),
    "currency": lambda v: v is None or (isinstance(v, str) and _CURRENCY.fullmatch(v) is not None),
}

_REPORT_FIELDS: dict[str, Callable[[Any], bool]] = {
    "format": lambda v: v == REPORT_FORMAT,
    "job_id": _count,
    "created_at": _at,
    "dataset_sha256": _sha256,
    "dataset_samples": _count,
    "metric": _text,
    "onnxruntime_version": _text,
    "execution": lambda v: isinstance(v, dict),
    "versions": lambda v: isinstance(v, list) and len(v) > 0,
}


def _check_fields(value: Any, fields: dict[str, Callable[[Any], bool]], where: str) -> None:
    if not isinstance(value, dict):
        raise ReportInvalid(f"{where} is not an object")
    missing = sorted(fields.keys() - value.keys())
    if missing:
        raise ReportInvalid(f"{where} lacks {', '.join(missing)}")
    unknown = sorted(value.keys() - fields.keys())
    if unknown:
        raise ReportInvalid(f"{where} holds fields {REPORT_FORMAT} does not know: {unknown}")
    for name, valid in fields.items():
        if not valid(value[name]):
            raise ReportInvalid(f"{where}.{name} is not valid: {value[name]!r:.80}")


def _check_report(report: Any) -> None:
    """Raise ReportInvalid unless ``report`` has exactly the fields of format /1, well formed."""
    _check_fields(report, _REPORT_FIELDS, "report")
    for index, version in enumerate(report["versions"]):
        _check_fields(version, _VERSION_FIELDS, f"report.versions[{index}]")
        if version["samples_done"] + version["samples_failed"] > report["dataset_samples"]:
            raise ReportInvalid(
                f"report.versions[{index}] counts more samples than the dataset holds"
            )
        if (version["cost_per_1000_minor"] is None) != (version["currency"] is None):
            raise ReportInvalid(
                f"report.versions[{index}] gives a cost and its currency, or neither"
            )


# --- build, sign, verify ----------------------------------------------------------------------


def build_report(
    *,
    job_id: int,
    dataset_sha256: str,
    dataset_samples: int,
    metric: str,
    created_at: dt.datetime,
    onnxruntime_version: str,
    execution: dict[str, Any],
    versions: list[dict[str, Any]],
) -> dict[str, Any]:
    """The report of a finished job, ready for :func:`sign_report`; ValueError if a field is bad."""
    from marketplace.audit.journal import format_at

    entries = []
    for item in versions:
        missing = sorted(_VERSION_FIELDS.keys() - item.keys())
        if missing:
            raise ValueError(f"cannot build the evaluation report: a version lacks {missing}")
        entry = dict(item)
        entry["opsets"] = dict(item["opsets"])
        entry["metric_value"] = _decimal(item["metric_value"], METRIC_PLACES, "metric_value")
        for name in ("latency_p50_ms", "latency_p99_ms"):
            entry[name] = _decimal(item[name], LATENCY_PLACES, name)
        entries.append(entry)
    report = {
        "format": REPORT_FORMAT,
        "job_id": job_id,
        "created_at": format_at(created_at),
        "dataset_sha256": dataset_sha256,
        "dataset_samples": dataset_samples,
        "metric": metric,
        "onnxruntime_version": onnxruntime_version,
        "execution": dict(execution),
        "versions": entries,
    }
    try:
        _check_report(report)
        canonical_json(report)
    except (ReportInvalid, CanonicalJsonError) as exc:
        raise ValueError(f"cannot build the evaluation report: {exc}") from None
    return report


def sign_report(report: dict[str, Any], signer: Signer | AuditKeyStore) -> dict[str, Any]:
    """``{"report", "signature"}``: Ed25519 over the report's canonical bytes with the journal key.

    ``signer`` is the journal's key store (its current key signs) or a key itself.
    """
    _check_report(report)
    key = signer if isinstance(signer, Signer) else signer.signer
    # The key signs C2SP notes through the key store; a report is signed with the same key
    # material directly, over bytes no note can have (see the module docstring).
    value = key.private_key.sign(canonical_json(report))
    return {
        "report": report,
        "signature": {
            "algorithm": SIGNATURE_ALGORITHM,
            "key_name": key.name,
            "key_hash": f"{key.key_hash:08x}",
            "value": base64.b64encode(value).decode("ascii"),
        },
    }


def verify_report(document: Any, verifier: VerifierKey | Iterable[VerifierKey]) -> dict[str, Any]:
    """The report, if ``document`` is one signed by a trusted key; ReportInvalid otherwise."""
    if not isinstance(document, dict) or document.keys() != {"report", "signature"}:
        raise ReportInvalid("a signed report is an object of exactly `report` and `signature`")
    report, signature = document["report"], document["signature"]
    if not isinstance(signature, dict) or signature.keys() != _SIGNATURE_FIELDS:
        raise ReportInvalid("the signature is an object of algorithm, key_name, key_hash, value")
    if signature["algorithm"] != SIGNATURE_ALGORITHM:
        raise ReportInvalid(
            f"the signature algorithm {signature['algorithm']!r:.40} is not ed25519"
        )
    name, key_hash = signature["key_name"], signature["key_hash"]
    if (
        not isinstance(name, str)
        or not isinstance(key_hash, str)
        or not _KEY_HASH.fullmatch(key_hash)
    ):
        raise ReportInvalid("the signature names its key by key_name and an 8-hex-digit key_hash")
    try:
        value = base64.b64decode(str(signature["value"]).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ReportInvalid("the signature value is not base64") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        found = report.get("format") if isinstance(report, dict) else None
        raise ReportInvalid(f"the report's format is {found!r:.60}, not {REPORT_FORMAT!r}")
    try:
        message = canonical_json(report)
    except CanonicalJsonError as exc:
        raise ReportInvalid(f"the report is not canonical JSON: {exc}") from None

    trusted = [verifier] if isinstance(verifier, VerifierKey) else list(verifier)
    key = next((k for k in trusted if (k.name, k.key_hash_hex) == (name, key_hash)), None)
    if key is None:
        known = ", ".join(f"{k.name}+{k.key_hash_hex}" for k in trusted)
        # The name is the file's word: quoted and cut, so that it cannot rewrite the terminal.
        raise ReportInvalid(
            f"signed by {name!r:.80}+{key_hash}, which is not a trusted key ({known})"
        )
    if not key.verify(message, value):
        raise ReportInvalid(
            f"the signature of {name}+{key_hash} does not verify: the report was altered"
        )
    _check_report(report)
    return report


# --- the offline command ----------------------------------------------------------------------


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A second value under one key would be verified while a reader sees the first.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ReportInvalid(f"the field {key!r:.60} appears twice")
        out[key] = value
    return out


def load_report(path: str) -> Any:
    """The JSON document in ``path``; ReportInvalid if it is too large or not JSON."""
    with open(path, "rb") as handle:
        data = handle.read(REPORT_BYTES_MAX + 1)
    if len(data) > REPORT_BYTES_MAX:
        raise ReportInvalid(f"the file is larger than {REPORT_BYTES_MAX} bytes")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except ReportInvalid:
        raise
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of thousands of digits
        raise ReportInvalid(f"the file is not JSON: {exc!s:.200}") from None
    except RecursionError:
        raise ReportInvalid("the file nests deeper than any report") from None


def summary(report: dict[str, Any], signed_by: str) -> list[str]:
    """The lines ``jishi reports verify`` prints for a verified report."""
    lines = [
        f"OK: evaluation report of job {report['job_id']} ({report['created_at']}), "
        f"{report['metric']} on dataset {report['dataset_sha256'][:16]} "
        f"({report['dataset_samples']} samples), signed by {signed_by}"
    ]
    for v in report["versions"]:
        cost = (
            "no price"
            if v["cost_per_1000_minor"] is None
            else f"{v['cost_per_1000_minor']} {v['currency']} minor units per 1000"
        )
        lines.append(
            f"  {v['model_slug']} {v['version']} ({v['model_sha256'][:16]}): "
            f"{report['metric']} {v['metric_value'] or '-'}, {v['samples_done']} done, "
            f"{v['samples_failed']} failed, p50 {v['latency_p50_ms'] or '-'} ms, "
            f"p99 {v['latency_p99_ms'] or '-'} ms, {cost}"
        )
    return lines


def run(path: str, public_key: str) -> int:
    """Verify the report in ``path``: 0 verified, 1 not verified, 2 unusable arguments."""
    from marketplace.audit.notes import NoteError
    from marketplace.audit.verify import keys_for_file

    try:
        keys = keys_for_file(path, public_key)
    except NoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        document = load_report(path)
        report = verify_report(document, keys)
    except ReportInvalid as exc:
        print(f"NOT VERIFIED: {exc.detail}", file=sys.stderr)
        return 1
    signature = document["signature"]
    print("\n".join(summary(report, f"{signature['key_name']}+{signature['key_hash']}")))
    return 0
