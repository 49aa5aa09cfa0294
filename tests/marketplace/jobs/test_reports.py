"""Signed evaluation reports: built with fixed-place figures, signed with the journal's key,
verified offline; any edit, another key or a malformed document is refused."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import sys
from pathlib import Path

import pytest

from marketplace.audit.keys import AuditKeyStore
from marketplace.audit.notes import Signer
from marketplace.canonical import canonical_json
from marketplace.jobs.reports import (
    REPORT_FORMAT,
    ReportInvalid,
    build_report,
    sign_report,
    verify_report,
)

ORIGIN = "reports.test/jishi"
CREATED = dt.datetime(2026, 3, 1, 8, 30, 5, 250000, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@pytest.fixture
def keys(tmp_path):
    return AuditKeyStore(tmp_path / "audit.key", ORIGIN, generate=True)


def version(**overrides):
    item = {
        "model_id": 7,
        "model_slug": "road-defects",
        "version": "1.2.0",
        "model_sha256": "ab" * 32,
        "opsets": {"ai.onnx": 17},
        "metric_value": 0.9123456789,
        "samples_done": 998,
        "samples_failed": 2,
        "latency_p50_ms": 1.23449,
        "latency_p99_ms": 12.5,
        "cost_per_1000_minor": 350,
        "currency": "CNY",
    }
    item.update(overrides)
    return item


def report(**overrides):
    arguments = {
        "job_id": 41,
        "dataset_sha256": "cd" * 32,
        "dataset_samples": 1000,
        "metric": "accuracy",
        "created_at": CREATED,
        "onnxruntime_version": "1.18.1",
        "execution": {"chunk_samples": 256, "threads": 1},
        "versions": [
            version(),
            version(
                model_id=8,
                model_slug="free",
                cost_per_1000_minor=None,
                currency=None,
                metric_value=None,
                latency_p50_ms=None,
                latency_p99_ms=None,
                samples_done=0,
                samples_failed=0,
            ),
        ],
    }
    arguments.update(overrides)
    return build_report(**arguments)


def test_a_report_holds_fractions_as_fixed_place_strings_and_time_in_utc():
    built = report()
    assert built["format"] == REPORT_FORMAT == "jishi-evaluation-report/1"
    assert built["created_at"] == "2026-03-01T00:30:05.250000Z"
    first, second = built["versions"]
    assert first["metric_value"] == "0.912346"
    assert (first["latency_p50_ms"], first["latency_p99_ms"]) == ("1.234", "12.500")
    assert second["metric_value"] is None and second["latency_p50_ms"] is None
    # The canonical bytes hold no float: what is signed reads the same on every platform.
    assert b'"metric_value":"0.912346"' in canonical_json(built)
    zeros = report(versions=[version(metric_value=-0.0, latency_p50_ms=3)])["versions"][0]
    assert (zeros["metric_value"], zeros["latency_p50_ms"]) == ("0.000000", "3.000")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"versions": [version(metric_value=float("nan"))]}, "finite"),
        ({"versions": [version(latency_p99_ms=float("inf"))]}, "finite"),
        ({"versions": [version(metric_value=-0.5)]}, "negative"),
        ({"versions": [version(metric_value=True)]}, "finite number"),
        ({"versions": [{k: v for k, v in version().items() if k != "opsets"}]}, "lacks"),
        ({"versions": [{**version(), "secret": 1}]}, "does not know"),
        ({"versions": [version(model_sha256="AB" * 32)]}, "model_sha256"),
        ({"versions": [version(currency=None)]}, "currency"),
        ({"versions": [version(samples_done=1000)]}, "more samples than the dataset"),
        ({"versions": []}, "versions"),
        ({"execution": {"timeout_s": 2.5}}, "floats are not allowed"),
        ({"dataset_sha256": "cd"}, "dataset_sha256"),
        ({"created_at": dt.datetime(2026, 3, 1)}, "timezone-aware"),
    ],
)
def test_a_report_with_a_bad_field_is_not_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        report(**overrides)


def test_a_signed_report_verifies_with_the_journal_public_key(keys):
    built = report()
    document = sign_report(built, keys)
    signature = document["signature"]
    assert signature["algorithm"] == "ed25519"
    assert (signature["key_name"], signature["key_hash"]) == (ORIGIN, keys.verifier().key_hash_hex)
    # The file a client downloads, read back: the same report.
    reread = json.loads(json.dumps(document))
    assert verify_report(reread, keys.verifier()) == built
    assert verify_report(reread, [Signer.generate("other").verifier(), keys.verifier()]) == built
    # The signature is plain Ed25519 over the canonical bytes, checkable without this package.
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(keys.verifier().public_key).verify(
        base64.b64decode(signature["value"]), canonical_json(built)
    )


def _edits():
    """(name, edit of a signed document): each must make the document fail to verify."""

    def setter(*path, value):
        def edit(document):
            target = document
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value

        return edit

    def deleter(*path):
        def edit(document):
            target = document
            for step in path[:-1]:
                target = target[step]
            del target[path[-1]]

        return edit

    return [
        ("metric value", setter("report", "versions", 0, "metric_value", value="0.992346")),
        ("latency", setter("report", "versions", 0, "latency_p99_ms", value="1.500")),
        ("cost", setter("report", "versions", 0, "cost_per_1000_minor", value=35)),
        ("model hash", setter("report", "versions", 0, "model_sha256", value="ef" * 32)),
        ("dataset", setter("report", "dataset_samples", value=999)),
        ("job", setter("report", "job_id", value=42)),
        ("time", setter("report", "created_at", value="2026-03-02T00:30:05.250000Z")),
        ("execution", setter("report", "execution", "threads", value=8)),
        ("format", setter("report", "format", value="jishi-evaluation-report/2")),
        ("float figure", setter("report", "versions", 0, "metric_value", value=0.912346)),
        ("version dropped", deleter("report", "versions", 1)),
        ("field dropped", deleter("report", "versions", 0, "samples_failed")),
        ("field added", setter("report", "note", value="fine")),
        ("signature value", setter("signature", "value", value="AAAA" * 22)),
        ("signature not base64", setter("signature", "value", value="not base64!")),
        ("algorithm", setter("signature", "algorithm", value="rsa")),
        ("key hash", setter("signature", "key_hash", value="00000000")),
        ("no signature", deleter("signature")),
        ("no report", deleter("report")),
    ]


@pytest.mark.parametrize("edit", [e for _, e in _edits()], ids=[n for n, _ in _edits()])
def test_any_edit_of_a_signed_report_fails_verification(keys, edit):
    document = json.loads(json.dumps(sign_report(report(), keys)))
    verify_report(copy.deepcopy(document), keys.verifier())
    edit(document)
    with pytest.raises(ReportInvalid) as exc:
        verify_report(document, keys.verifier())
    assert exc.value.detail


def test_the_reasons_name_what_failed(keys):
    document = sign_report(report(), keys)
    altered = copy.deepcopy(document)
    altered["report"]["versions"][0]["metric_value"] = "0.999999"
    with pytest.raises(ReportInvalid, match="does not verify: the report was altered"):
        verify_report(altered, keys.verifier())
    other = Signer.generate(ORIGIN)  # same name, another key: another key hash
    with pytest.raises(ReportInvalid, match="not a trusted key"):
        verify_report(document, other.verifier())
    with pytest.raises(ReportInvalid, match="format is 'x/1'"):
        verify_report({**document, "report": {**document["report"], "format": "x/1"}}, [])
    with pytest.raises(ReportInvalid, match="exactly `report` and `signature`"):
        verify_report([document], keys.verifier())


def test_a_rotated_key_keeps_its_reports_verifying_with_its_public_key(keys):
    old = keys.verifier()
    signed_before = sign_report(report(), keys)
    new = Signer.generate(ORIGIN)
    keys.path.write_text(new.encode() + "\n")
    os.utime(keys.path, ns=(1, 1))  # a new stamp, even within the file system's clock tick
    signed_after = sign_report(report(), keys)
    assert signed_after["signature"]["key_hash"] == new.verifier().key_hash_hex
    assert verify_report(signed_before, [old, new.verifier()])["job_id"] == 41
    assert verify_report(signed_after, [old, new.verifier()])["job_id"] == 41
    with pytest.raises(ReportInvalid, match="not a trusted key"):
        verify_report(signed_before, new.verifier())


def test_a_report_signed_by_a_signer_equals_one_signed_by_its_store(keys):
    built = report()
    assert sign_report(built, keys.signer) == sign_report(built, keys)  # Ed25519 is deterministic
    with pytest.raises(ReportInvalid, match="lacks"):
        sign_report({k: v for k, v in built.items() if k != "metric"}, keys)


# --- the command -------------------------------------------------------------------------------


def _jishi(*args):
    import subprocess

    env = {
        **os.environ,
        # Nothing here may be used: verifying a report needs no database, network or instance.
        "MARKETPLACE_DATABASE_URL": "postgresql+psycopg://nobody@192.0.2.1:1/none",
        "MARKETPLACE_ENV": "production",
    }
    code = "import sys; from marketplace.cli import main; sys.argv[0] = 'jishi'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_jishi_reports_verify_prints_ok_or_the_reason_and_needs_no_database(keys, tmp_path):
    path = tmp_path / "report.json"
    document = sign_report(report(), keys)
    path.write_text(json.dumps(document, indent=2))
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# the journal's keys\n{keys.verifier().encode()}\n")

    for key in (keys.verifier().encode(), str(key_file)):
        done = _jishi("reports", "verify", str(path), "--public-key", key)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == (
            f"OK: evaluation report of job 41 (2026-03-01T00:30:05.250000Z), accuracy on dataset "
            f"{'cd' * 8} (1000 samples), signed by {ORIGIN}+{keys.verifier().key_hash_hex}"
        )
        assert lines[1] == (
            f"  road-defects 1.2.0 ({'ab' * 8}): accuracy 0.912346, 998 done, 2 failed, "
            "p50 1.234 ms, p99 12.500 ms, 350 CNY minor units per 1000"
        )
        assert lines[2].startswith("  free 1.2.0") and lines[2].endswith("no price")
        assert done.stderr == ""

    document["report"]["versions"][0]["metric_value"] = "0.999999"
    path.write_text(json.dumps(document))
    done = _jishi("reports", "verify", str(path), "--public-key", str(key_file))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"NOT VERIFIED: the signature of {ORIGIN}+{keys.verifier().key_hash_hex} does not "
        "verify: the report was altered"
    )

    other = Signer.generate("someone-else").verifier().encode()
    path.write_text(json.dumps(sign_report(report(), keys)))
    done = _jishi("reports", "verify", str(path), "--public-key", other)
    assert done.returncode == 1 and "not a trusted key" in done.stderr

    done = _jishi("reports", "verify", str(path), "--public-key", "nonsense+1+2")
    assert done.returncode == 2 and done.stderr.startswith("error:")


def test_the_command_refuses_files_that_are_not_one_signed_report(keys, tmp_path):
    from click.testing import CliRunner

    from marketplace.jobs.reports_cli import reports_cli

    key = keys.verifier().encode()
    body = json.dumps(sign_report(report(), keys))
    cases = {
        "not json": ("{", "not JSON"),
        "not utf-8": (b"\xff\xfe", "not JSON"),
        # A second copy of a field: a reader would see one value, the verifier another.
        "duplicate": ('{"report": 1, ' + body[1:], "'report' appears twice"),
        "bare report": (json.dumps(report()), "exactly `report` and `signature`"),
        "deep": ("[" * 100_000 + "]" * 100_000, "nests deeper"),
        "huge integer": (body.replace('"job_id": 41', '"job_id": ' + "9" * 20), "beyond 2**53"),
        # Past Python's digit limit for int(): a traceback before.
        "digits": (body.replace('"job_id": 41', '"job_id": ' + "9" * 5000), "not JSON"),
        # A key name that would rewrite the terminal is shown quoted.
        "key name": (
            body.replace(f'"key_name": "{ORIGIN}"', '"key_name": "\\u001b[2Kok"'),
            "'\\x1b[2Kok'+",
        ),
    }
    runner = CliRunner()
    for name, (content, reason) in cases.items():
        path = tmp_path / f"{name}.json"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        result = runner.invoke(reports_cli, ["verify", str(path), "--public-key", key])
        assert result.exit_code == 1, name
        assert "NOT VERIFIED" in result.stderr and reason in result.stderr, (name, result.stderr)
    result = runner.invoke(
        reports_cli, ["verify", str(tmp_path / "missing.json"), "--public-key", key]
    )
    assert result.exit_code == 2 and "is not a file" in result.stderr


def test_an_oversized_file_is_refused_before_it_is_parsed(keys, tmp_path, monkeypatch):
    from marketplace.jobs import reports

    monkeypatch.setattr(reports, "REPORT_BYTES_MAX", 100)
    path = tmp_path / "large.json"
    path.write_text(json.dumps(sign_report(report(), keys)))
    with pytest.raises(ReportInvalid, match="larger than 100 bytes"):
        reports.load_report(str(path))
    assert Path(path).stat().st_size > 100
