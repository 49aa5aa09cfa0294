"""Offline verification of exports: every tampering is caught and named; honest exports pass."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.audit import export, journal, services
from marketplace.audit.journal import Money
from marketplace.audit.notes import Signer, sign_note
from marketplace.audit.verify import VerificationFailed, load_checkpoint, verify_export

RECORDS = 40


def _fill(session, count, start=0):
    for i in range(start, start + count):
        money = Money("CNY", 100 + i) if i % 3 else None
        journal.append(
            session,
            kind="test.event",
            subject={"thing_id": i, "memo": f"record {i} 中文 \U0001f600"},
            money=money,
        )
    session.commit()
    journal.sequence(session)


@pytest.fixture
def keys(app):
    return app.extensions["audit_keys"]


@pytest.fixture
def write_export(db_session, keys, tmp_path):
    counter = iter(range(1000))

    def write(from_seq=None, to_size=None, nodes_max=export.COVER_NODES_MAX, fmt="jsonl"):
        prepared = export.prepare_export(
            db_session, keys, from_seq=from_seq, to_size=to_size, fmt=fmt, nodes_max=nodes_max
        )
        path = tmp_path / f"export-{next(counter)}.{fmt}"
        with open(path, "wb") as out:
            export.write_export(prepared, db_session, out)
        return path

    return write


@pytest.fixture
def filled(app, db_session):
    _fill(db_session, RECORDS)
    return db_session


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def failure(path, keys, **kw) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as exc:
        verify_export(path, [keys.verifier()], **kw)
    return exc.value


# --- Honest exports -----------------------------------------------------------------------------


def test_an_export_from_zero_folds_into_its_checkpoint_and_verifies(filled, keys, write_export):
    path = write_export()
    lines = lines_of(path)
    assert len(lines) == RECORDS + 1
    manifest = json.loads(lines[-1])
    assert manifest["jishi_audit_manifest"] == 1 and manifest["to_size"] == RECORDS
    summary = verify_export(path, [keys.verifier()])
    assert (summary.from_seq, summary.to_size, summary.records) == (0, RECORDS, RECORDS)
    assert summary.root == services.root_at(filled, RECORDS)
    assert summary.line().startswith(f"verified: records 0..{RECORDS - 1} ({RECORDS})")
    # The checkpoint in the manifest is the standard note: origin, size, base64 root.
    text = manifest["checkpoint"].split("\n\n")[0]
    assert text.split("\n") == [
        keys.origin,
        str(RECORDS),
        base64.b64encode(summary.root).decode(),
    ]


@pytest.mark.parametrize("nodes_max", [export.COVER_NODES_MAX, 3])
def test_a_later_range_verifies_against_a_later_checkpoint(filled, keys, write_export, nodes_max):
    first = write_export(to_size=17)
    verify_export(first, [keys.verifier()])
    earlier_note = json.loads(lines_of(first)[-1])["checkpoint"]
    _fill(filled, 9, start=RECORDS)
    services.create_checkpoint(filled, keys)
    later = write_export(from_seq=17, nodes_max=nodes_max)
    manifest = json.loads(lines_of(later)[-1])
    assert manifest["from_seq"] == 17 and manifest["to_size"] == RECORDS + 9
    assert manifest["consistency"]["from_size"] == 17 and manifest["consistency"]["proof"]
    assert (manifest["cover_level"] > 0) == (nodes_max == 3)
    # The earlier checkpoint the auditor kept ties the two exports together; the earlier
    # export itself will do as well.
    assert load_checkpoint(str(first)) == earlier_note
    summary = verify_export(later, [keys.verifier()], previous=earlier_note)
    assert (summary.from_seq, summary.to_size) == (17, RECORDS + 9)
    # A "previous" checkpoint that the log's history does not contain is a fork.
    other = Signer.parse(keys.signer.encode())
    fake_root = base64.b64encode(b"\x01" * 32).decode()
    forged = sign_note(f"{keys.origin}\n17\n{fake_root}\n", [other])
    assert "history was rewritten" in str(failure(later, keys, previous=forged))


def test_an_empty_range_and_a_large_cover_level_verify(filled, keys, write_export):
    verify_export(write_export(from_seq=RECORDS, to_size=RECORDS), [keys.verifier()])
    verify_export(write_export(from_seq=5, to_size=39, nodes_max=2), [keys.verifier()])


# --- Tampering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes_max", [export.COVER_NODES_MAX, 4])
def test_a_flipped_byte_names_its_record(filled, keys, write_export, nodes_max):
    path = write_export(nodes_max=nodes_max)
    lines = lines_of(path)
    # An amount changes: still valid canonical JSON, only the hashes tell.
    lines[13] = lines[13].replace(b'"amount_minor":113', b'"amount_minor":713')
    assert b"713" in lines[13]
    exc = failure(rewrite(path, lines), keys)
    assert exc.seq == 13 and "altered" in exc.reason
    # A byte that breaks the JSON.
    lines = lines_of(write_export(nodes_max=nodes_max))
    lines[20] = lines[20][:5] + bytes([lines[20][5] ^ 0x20]) + lines[20][6:]
    exc = failure(rewrite(path, lines), keys)
    assert exc.seq == 20


@pytest.mark.parametrize("nodes_max", [export.COVER_NODES_MAX, 4])
def test_an_edited_prev_names_its_own_record(filled, keys, write_export, nodes_max):
    path = write_export(nodes_max=nodes_max)
    lines = lines_of(path)
    record = json.loads(lines[9])
    record["prev"] = "f" * 64
    lines[9] = (
        json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n"
    )
    exc = failure(rewrite(path, lines), keys)
    assert exc.seq == 9 and "altered" in exc.reason


def test_a_deleted_line_is_named_missing(filled, keys, write_export):
    lines = lines_of(path := write_export())
    del lines[7]
    exc = failure(rewrite(path, lines), keys)
    assert exc.seq == 7 and "missing" in exc.reason


def test_swapped_lines_are_named_out_of_order(filled, keys, write_export):
    lines = lines_of(path := write_export())
    lines[3], lines[4] = lines[4], lines[3]
    exc = failure(rewrite(path, lines), keys)
    assert exc.seq == 3 and "swapped" in exc.reason


def test_an_inserted_line_is_named(filled, keys, write_export):
    lines = lines_of(path := write_export())
    lines.insert(6, lines[2])
    exc = failure(rewrite(path, lines), keys)
    assert exc.seq == 6 and "inserted or duplicated" in exc.reason


def test_a_dropped_tail_is_named_truncated(filled, keys, write_export):
    lines = lines_of(path := write_export())
    # Cut off the end of the file, manifest included.
    exc = failure(rewrite(path, lines[:30]), keys)
    assert exc.seq == 30 and "truncated" in exc.reason
    # Cut in the middle of a line.
    exc = failure(rewrite(path, [*lines[:30], lines[30][:25]]), keys)
    assert "truncated" in exc.reason
    # Records dropped, manifest kept.
    exc = failure(rewrite(path, [*lines[:25], lines[-1]]), keys)
    assert exc.seq == 25 and "truncated" in exc.reason


def test_two_exports_spliced_together_are_caught(filled, keys, write_export, app, db_session):
    first = lines_of(write_export(to_size=20))
    second = lines_of(write_export(from_seq=20))
    # The first export's records, the second's records and manifest.
    spliced = rewrite(Path(str(write_export()) + ".spliced"), [*first[:-1], *second])
    exc = failure(spliced, keys)
    assert exc.seq == 20
    # Records of another journal in the middle of this one (same seqs, another chain).
    other = lines_of(write_export())
    foreign = [line.replace(b"record 1", b"record X") for line in other[10:15]]
    mixed = rewrite(Path(str(spliced) + ".mixed"), [*other[:10], *foreign, *other[15:]])
    exc = failure(mixed, keys)
    assert exc.seq == 10 and "altered" in exc.reason


def test_a_replaced_checkpoint_is_caught(filled, keys, write_export):
    lines = lines_of(path := write_export(to_size=30))
    later = json.loads(lines_of(write_export(to_size=35))[-1])["checkpoint"]
    manifest = json.loads(lines[-1])
    manifest["checkpoint"] = later  # a genuine checkpoint, of another size
    lines[-1] = json.dumps(manifest).encode() + b"\n"
    exc = failure(rewrite(path, lines), keys)
    assert exc.where == "checkpoint" and "replaced checkpoint" in exc.reason
    # An edited root in the note: its signature no longer verifies.
    manifest["checkpoint"] = json.loads(lines_of(write_export(to_size=30))[-1])["checkpoint"]
    text, _, signatures = manifest["checkpoint"].partition("\n\n")
    origin, size, _root = text.split("\n")[:3]
    forged_root = base64.b64encode(bytes(32)).decode()
    manifest["checkpoint"] = f"{origin}\n{size}\n{forged_root}\n\n{signatures}"
    lines[-1] = json.dumps(manifest).encode() + b"\n"
    exc = failure(rewrite(path, lines), keys)
    assert exc.where == "checkpoint" and "does not verify" in exc.reason


def test_a_checkpoint_signed_with_another_key_is_refused(filled, keys, write_export):
    lines = lines_of(path := write_export())
    manifest = json.loads(lines[-1])
    text = manifest["checkpoint"].split("\n\n")[0] + "\n"
    manifest["checkpoint"] = sign_note(text, [Signer.generate(keys.origin)])
    lines[-1] = json.dumps(manifest).encode() + b"\n"
    exc = failure(rewrite(path, lines), keys)
    assert exc.where == "checkpoint" and "not signed by any trusted key" in exc.reason
    # The honest export, checked against someone else's key, is refused the same way.
    honest = write_export()
    exc = failure(honest, type("K", (), {"verifier": Signer.generate("x.test/y").verifier})())
    assert "not signed by any trusted key" in exc.reason


def test_an_altered_manifest_is_caught(filled, keys, write_export):
    lines = lines_of(path := write_export(from_seq=10))
    manifest = json.loads(lines[-1])
    manifest["cover"][3] = "00" * 32
    lines[-1] = json.dumps(manifest).encode() + b"\n"
    exc = failure(rewrite(path, lines), keys)
    assert exc.where == "manifest"


# --- The command lines ------------------------------------------------------------------------------


def _cli(*args, env_extra=None):
    env = {
        **os.environ,
        # Nothing here may be used: the verifier needs no database, network or instance.
        "MARKETPLACE_DATABASE_URL": "postgresql+psycopg://nobody@192.0.2.1:1/none",
        "MARKETPLACE_ENV": "production",
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_python_dash_m_verify_and_jishi_audit_verify_need_no_database(
    filled, keys, write_export, tmp_path
):
    path = write_export()
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# the journal's keys\n{keys.verifier().encode()}\n")
    jishi = str(Path(sys.executable).with_name("jishi"))
    for command in (
        ["-m", "marketplace.audit.verify", str(path), "--public-key", keys.verifier().encode()],
        ["-c", "import sys; from marketplace.cli import main; sys.argv[0] = 'jishi'; main()",
         "audit", "verify", str(path), "--public-key", str(key_file)],
    ):  # fmt: skip
        done = _cli(*command)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("\n") == 1 and done.stdout.startswith("verified: records 0..")
        assert done.stderr == ""  # no progress bar when stderr is not a terminal
    assert Path(jishi).exists()
    lines = lines_of(path)
    del lines[5]
    rewrite(path, lines)
    done = _cli("-m", "marketplace.audit.verify", str(path), "--public-key", str(key_file))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "NOT VERIFIED: seq 5: missing: the line in its place holds seq 6 (deleted or reordered)"
    )
    done = _cli("-m", "marketplace.audit.verify", str(path), "--public-key", "nonsense+1+2")
    assert done.returncode == 2 and done.stderr.startswith("error:")


def test_the_progress_bar_draws_on_a_terminal_only():
    import io

    from marketplace.audit.verify import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    quiet, loud = io.StringIO(), Terminal()
    ProgressBar(quiet)(50, 100)
    ProgressBar(loud)(50, 100)
    ProgressBar(loud)(100, 100)
    assert quiet.getvalue() == ""
    drawn = loud.getvalue()
    assert drawn.startswith("\r[###############...............]  50.0%")
    assert "\r[##############################] 100.0%" in drawn and drawn.endswith("\n")


# --- Hostile files --------------------------------------------------------------------------------


def test_hostile_key_and_checkpoint_files_are_refused_without_reading_them(
    filled, keys, write_export, tmp_path
):
    """/dev/zero as a key file grew to gigabytes, a FIFO hung, bytes that are not UTF-8 were a
    traceback: each is now an argument error (exit 2) with one line on stderr."""
    path = write_export()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    not_utf8 = tmp_path / "not-utf8"
    not_utf8.write_bytes(b"\xff\xfe\n")
    big = tmp_path / "big.note"
    with open(big, "wb") as out:
        out.truncate(3 * 1024**3)  # sparse: gigabytes to read, none on disk
    good_key = keys.verifier().encode()
    cases = [
        ("--public-key", "/dev/zero"),
        ("--public-key", str(fifo)),
        ("--public-key", str(not_utf8)),
        ("--previous", "/dev/zero"),
        ("--previous", str(fifo)),
        ("--previous", str(not_utf8)),
        ("--previous", str(big)),
    ]
    for option, value in cases:
        args = ["--public-key", good_key, option, value] if option == "--previous" else []
        args = args or [option, value]
        done = _cli("-m", "marketplace.audit.verify", str(path), *args)
        assert done.returncode == 2, (option, value, done.stderr[-300:])
        assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1, done.stderr


def test_hostile_export_lines_fail_verification_with_bounded_memory(filled, keys, write_export):
    path = write_export()
    lines = lines_of(path)
    # A line deeper than the JSON decoder's stack, where a record or the manifest should be.
    deep = b"[" * 200_000 + b"]" * 200_000 + b"\n"
    for at in (0, len(lines) - 1):
        changed = [*lines[:at], deep, *lines[at + 1 :]]
        done = _cli(
            "-m",
            "marketplace.audit.verify",
            str(rewrite(path, changed)),
            "--public-key",
            keys.verifier().encode(),
        )
        assert done.returncode == 1, done.stderr[-300:]
        assert done.stderr.startswith("NOT VERIFIED:") and "Traceback" not in done.stderr
    # A first line of gigabytes (a sparse file) is refused once it passes any record's length.
    rewrite(path, lines)
    huge = path.with_name("huge.jsonl")
    with open(huge, "wb") as out:
        out.truncate(4 * 1024**3)
        out.seek(0, os.SEEK_END)
        out.write(b"\n" + lines[-1])
    done = _cli(
        "-c",
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "from marketplace.audit.verify import main; sys.exit(main())",
        str(huge),
        "--public-key",
        keys.verifier().encode(),
    )
    assert done.returncode == 1, done.stderr[-300:]
    assert "longer than any record" in done.stderr


def test_text_from_the_file_cannot_rewrite_the_verdict_on_a_terminal(filled, keys, write_export):
    lines = lines_of(path := write_export())
    manifest = json.loads(lines[-1])
    manifest["origin"] = "\r\x1b[2K\x1b[1Averified: records 0..5 (6)" + "x" * 1_000_000
    lines[-1] = json.dumps(manifest).encode() + b"\n"
    done = _cli(
        "-m", "marketplace.audit.verify", str(rewrite(path, lines)), "--public-key",
        keys.verifier().encode(),
    )  # fmt: skip
    assert done.returncode == 1
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert len(done.stderr) < 500 and done.stderr.startswith("NOT VERIFIED:")
