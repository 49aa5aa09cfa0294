"""Offline verification of a JSONL journal export: no database, no network, bounded memory.

Usage: ``python -m marketplace.audit.verify EXPORT --public-key KEY`` (or ``jishi audit verify``),
where KEY is a verifier-key string (``name+hash+base64``, as ``GET /api/v1/audit/public-keys``
lists it) or a file holding one or more of them.

What is checked, in order (see :mod:`marketplace.audit.export` for the format):

1. the last line is the manifest (otherwise the export was truncated);
2. its checkpoint is a signed note from a trusted key named after the origin, for the size the
   manifest claims;
3. the manifest's prefix and cover hashes fold into the checkpoint's root, the consistency
   proof from the export's first size verifies, and so does any earlier checkpoint given;
4. every record line, streamed: the expected ``seq`` (deleted, inserted, duplicated and
   reordered lines are named), a ``prev`` equal to the SHA-256 of the line before (64 zeros at
   seq 0), and leaves that rebuild every cover hash (a line that fails is then parsed in full
   to say whether it is broken JSON, not canonical, or altered);
5. the number of records is the checkpoint's size minus the first seq.

The first failure ends the run with its ``seq`` and reason. Memory holds the manifest (at most
:data:`~marketplace.audit.export.COVER_NODES_MAX` hashes) and O(log n) hashes, whatever the
export's size. Exit status: 0 verified, 1 not verified, 2 unusable arguments.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import itertools
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from marketplace.audit import merkle
from marketplace.audit.export import (
    MANIFEST_KEY,
    MANIFEST_VERSION,
    SEQ_PREV,
    iter_cover_nodes,
)
from marketplace.audit.notes import (
    NOTE_BYTES_MAX,
    NoteError,
    VerifierKey,
    open_note,
    parse_verifier_keys,
)
from marketplace.audit.tlog import Checkpoint
from marketplace.canonical import CanonicalJsonError, canonical_json

MANIFEST_BYTES_MAX = 4 * 1024 * 1024
# No record the log writes comes near this; a longer line is refused before it is held whole.
RECORD_LINE_BYTES_MAX = MANIFEST_BYTES_MAX
# A file of verifier keys: a few lines of ~100 characters each.
KEY_FILE_BYTES_MAX = 64 * 1024
ZERO_HASH_HEX = "0" * 64
PROGRESS_EVERY_BYTES = 4 * 1024 * 1024

Progress = Callable[[int, int], None]


class VerificationFailed(Exception):
    """The export does not verify; ``seq`` is the first bad record when one can be named."""

    def __init__(self, reason: str, seq: int | None = None, where: str = "") -> None:
        self.reason = reason
        self.seq = seq
        self.where = where
        prefix = f"seq {seq}" if seq is not None else (where or "export")
        super().__init__(f"{prefix}: {reason}")


@dataclass(frozen=True)
class Summary:
    origin: str
    from_seq: int
    to_size: int
    root: bytes
    signed_by: str

    @property
    def records(self) -> int:
        return self.to_size - self.from_seq

    def line(self) -> str:
        span = (
            f"records {self.from_seq}..{self.to_size - 1} ({self.records:,})"
            if self.records
            else "no records"
        )
        return (
            f"verified: {span} of {self.origin}; checkpoint size {self.to_size} root "
            f"{base64.b64encode(self.root).decode()} signed by {self.signed_by}"
        )


def _refuse_number(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")


def _loads(data: bytes) -> Any:
    return json.loads(data, parse_float=_refuse_number, parse_constant=_refuse_number)


def _hex_hash(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise VerificationFailed(f"{what} is not a 64-digit hex hash", where="manifest")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise VerificationFailed(f"{what} is not a 64-digit hex hash", where="manifest") from None


def _hashes(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list):
        raise VerificationFailed(f"{what} is not a list of hashes", where="manifest")
    return [_hex_hash(v, what) for v in value]


def _int(manifest: dict[str, Any], name: str) -> int:
    value = manifest.get(name)
    if type(value) is not int or value < 0:
        raise VerificationFailed(f"{name} is not a non-negative integer", where="manifest")
    return value


# --- Reading the file ------------------------------------------------------------------------------


def _read_manifest(handle: BinaryIO, file_size: int) -> tuple[int, bytes]:
    """The byte offset where the last line starts, and that line (without its newline)."""
    if file_size == 0:
        raise VerificationFailed("the file is empty", where="export")
    tail_size = min(file_size, MANIFEST_BYTES_MAX + 1)
    handle.seek(file_size - tail_size)
    tail = handle.read(tail_size)
    if not tail.endswith(b"\n"):
        raise VerificationFailed("it does not end with a complete line (truncated)", where="export")
    start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
    if start == 0 and tail_size < file_size:
        raise VerificationFailed("its last line is too long to be a manifest", where="export")
    return file_size - tail_size + start, tail[start:-1]


def _last_line(handle: BinaryIO, file_size: int) -> tuple[int, bytes, dict[str, Any] | None]:
    """Where the last line starts, the line, and the JSON object it holds (None if none)."""
    offset, last = _read_manifest(handle, file_size)
    try:
        parsed = _loads(last)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
        parsed = None
    return offset, last, parsed if isinstance(parsed, dict) else None


def _truncated(last_line: bytes) -> VerificationFailed:
    """The failure for an export whose last line is not a manifest."""
    try:
        record = _loads(last_line)
        seq = record["seq"] if isinstance(record, dict) else None
    except (ValueError, KeyError, RecursionError):
        seq = None
    if type(seq) is int:
        return VerificationFailed(
            f"missing: the export ends after seq {seq} without its manifest (truncated)",
            seq=seq + 1,
        )
    return VerificationFailed("its last line is not a manifest (truncated)", where="export")


# --- The manifest and its checkpoint ---------------------------------------------------------------


@dataclass
class _Plan:
    origin: str
    from_seq: int
    to_size: int
    root: bytes
    signed_by: str
    cover: list[tuple[int, int, bytes]]  # (level, index, hash), left to right


def _open_checkpoint(
    note: Any, verifiers: Sequence[VerifierKey], where: str
) -> tuple[Checkpoint, VerifierKey]:
    if not isinstance(note, str):
        raise VerificationFailed("there is no signed checkpoint", where=where)
    try:
        opened = open_note(note, verifiers)
        checkpoint = Checkpoint.parse(opened.text)
    except NoteError as exc:
        reasons = {
            "unknown_key": f"not signed by any trusted key ({exc})",
            "bad_signature": f"its signature does not verify: altered or replaced ({exc})",
        }
        raise VerificationFailed(reasons.get(exc.code, str(exc)), where=where) from None
    key = opened.verified_by[0]
    if key.name != checkpoint.origin:
        raise VerificationFailed(
            f"signed by {key.name}, which is not the key of its origin {checkpoint.origin}",
            where=where,
        )
    return checkpoint, key


def _plan(
    manifest: dict[str, Any], verifiers: Sequence[VerifierKey], previous: str | None
) -> _Plan:
    if manifest.get(MANIFEST_KEY) != MANIFEST_VERSION:
        raise VerificationFailed("unknown manifest version", where="manifest")
    start, end, level = (_int(manifest, k) for k in ("from_seq", "to_size", "cover_level"))
    if start > end:
        raise VerificationFailed("from_seq is after to_size", where="manifest")
    if level > 63:
        raise VerificationFailed("cover_level is out of range", where="manifest")
    checkpoint, key = _open_checkpoint(manifest.get("checkpoint"), verifiers, "checkpoint")
    if checkpoint.origin != manifest.get("origin"):
        raise VerificationFailed(
            # The manifest's origin is the file's word, not the log's: shown quoted and cut,
            # so that control characters cannot rewrite the verdict on a terminal.
            f"it is for origin {checkpoint.origin}, the export for {manifest.get('origin')!r:.80}",
            where="checkpoint",
        )
    if checkpoint.size != end:
        raise VerificationFailed(
            f"it is for size {checkpoint.size}, but the export ends at size {end} (replaced "
            "checkpoint)",
            where="checkpoint",
        )
    prefix = _hashes(manifest.get("prefix"), "a prefix hash")
    cover_hashes = _hashes(manifest.get("cover"), "a cover hash")
    # A hostile manifest may claim any range: take no more nodes than it holds hashes for.
    nodes = list(itertools.islice(iter_cover_nodes(start, end, level), len(cover_hashes) + 1))
    if len(prefix) != start.bit_count() or len(cover_hashes) != len(nodes):
        raise VerificationFailed(
            "its prefix or cover has the wrong number of hashes", where="manifest"
        )
    tree = merkle.CompactRange(start, prefix)
    first_root = tree.root()
    for (node_level, _index), digest in zip(nodes, cover_hashes, strict=True):
        tree.append_node(node_level, digest)
    if tree.root() != checkpoint.root:
        raise VerificationFailed(
            "its tree hashes do not lead to the checkpoint's root (altered manifest, spliced "
            "export or replaced checkpoint)",
            where="manifest",
        )
    consistency = manifest.get("consistency")
    if 0 < start < end:
        if not isinstance(consistency, dict) or consistency.get("from_size") != start:
            raise VerificationFailed("the consistency proof is missing", where="manifest")
        if _hex_hash(consistency.get("from_root"), "from_root") != first_root:
            raise VerificationFailed(
                "the consistency proof starts from another root", where="manifest"
            )
        try:
            merkle.verify_consistency(
                start,
                end,
                first_root,
                checkpoint.root,
                _hashes(consistency.get("proof"), "a consistency proof hash"),
            )
        except merkle.ProofError as exc:
            raise VerificationFailed(
                f"the consistency proof fails: {exc}", where="manifest"
            ) from None
    elif consistency is not None:
        raise VerificationFailed("a consistency proof where none belongs", where="manifest")
    earlier_note = manifest.get("from_checkpoint")
    for note, where in ((earlier_note, "from_checkpoint"), (previous, "previous checkpoint")):
        if note is None:
            continue
        earlier, _ = _open_checkpoint(note, verifiers, where)
        if earlier.origin != checkpoint.origin:
            raise VerificationFailed("it is from another log", where=where)
        if earlier.size == start:
            expected = first_root
        elif earlier.size == end:
            expected = checkpoint.root
        else:
            raise VerificationFailed(
                f"it is for size {earlier.size}; this export starts at {start} and ends at {end}",
                where=where,
            )
        if earlier.root != expected:
            raise VerificationFailed(
                f"the log at size {earlier.size} has another root now: the history was "
                "rewritten (a fork)",
                where=where,
            )
    return _Plan(
        origin=checkpoint.origin,
        from_seq=start,
        to_size=end,
        root=checkpoint.root,
        signed_by=key.encode().rsplit("+", 1)[0],
        cover=[(lvl, idx, h) for (lvl, idx), h in zip(nodes, cover_hashes, strict=True)],
    )


# --- The records -----------------------------------------------------------------------------------


class _Lines:
    """The record lines (up to the manifest) of an open export, with one line of lookahead.

    The hot loop iterates :attr:`raw` itself (the file's own line iterator); ``peek`` is for
    explaining a failure, after which nothing more is read.
    """

    def __init__(self, handle: BinaryIO, end: int, progress: Progress | None, total: int) -> None:
        self.raw = handle
        self.end = end
        self.pos = 0
        self.progress = progress
        self.total = total
        self._peeked: bytes | bool | None = False

    def peek(self) -> bytes | None:
        if self._peeked is False:
            self._peeked = None
            if self.pos < self.end:
                line = self.raw.readline(RECORD_LINE_BYTES_MAX + 1)
                self.pos += len(line)
                self._peeked = line[:-1]
        return self._peeked  # type: ignore[return-value]


def _seq_and_prev(line: bytes, expected: int) -> tuple[int, Any]:
    """A record's seq and prev, read from the one match of :data:`SEQ_PREV` (far cheaper than
    parsing the JSON, which is done only where that match is not unique)."""
    found = SEQ_PREV.search(line)
    if found is not None and SEQ_PREV.search(line, found.end()) is None:
        return int(found[2]), found[1].decode("ascii")
    record = _parse_record(line, expected)
    return record["seq"], record.get("prev")


def _record_seq(line: bytes | None) -> int | None:
    if line is None:
        return None
    try:
        return _seq_and_prev(line, -1)[0]
    except VerificationFailed:
        return None


def _out_of_place(expected: int, found: int, lines: _Lines) -> VerificationFailed:
    after = _record_seq(lines.peek())
    if found == expected + 1 and after == expected:
        reason = f"out of order: seq {expected} and seq {found} are swapped (reordered)"
    elif found > expected:
        reason = f"missing: the line in its place holds seq {found} (deleted or reordered)"
    else:
        reason = f"the line in its place holds seq {found} again (inserted or duplicated)"
    return VerificationFailed(reason, seq=expected)


def _parse_record(line: bytes, expected: int) -> dict[str, Any]:
    try:
        record = _loads(line)
    except (ValueError, RecursionError):
        raise VerificationFailed("not valid JSON (altered)", seq=expected) from None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        raise VerificationFailed("not a journal record (altered)", seq=expected)
    return record


def _altered(line: bytes, seq: int) -> VerificationFailed:
    """The most precise reason why a record's bytes are not the log's."""
    record = _parse_record(line, seq)  # raises for broken JSON
    try:
        canonical = canonical_json(record) == line
    except CanonicalJsonError:
        canonical = False
    if not canonical:
        return VerificationFailed("not canonical JSON (altered)", seq=seq)
    return VerificationFailed(
        "altered: its hash is not the log's leaf (edited, or from another log)", seq=seq
    )


def _broken_chain(seq: int) -> VerificationFailed:
    # Authentic records (their leaves are the log's) whose links do not hold: the log itself
    # wrote a broken chain.
    return VerificationFailed(
        "the log's own chain is broken: prev is not the hash of the record before", seq=seq
    )


def _verify_records(plan: _Plan, lines: _Lines) -> None:
    prev_hex = ZERO_HASH_HEX if plan.from_seq == 0 else None
    expected = plan.from_seq
    to_size = plan.to_size
    cover = iter(plan.cover)
    chunk: tuple[int, int, bytes] | None = None
    chunk_start = chunk_end = 0
    # The chunk's compact range, kept inline (the hot loop): hashes and leaf count.
    chunk_hashes: list[bytes] = []
    chunk_leaves = 0
    chain_break: int | None = None  # the first record in this chunk whose prev did not match
    next_also_broke = False
    sha256 = hashlib.sha256
    search = SEQ_PREV.search
    end, pos = lines.end, 0
    progress, reported = lines.progress, 0
    # Lines are read with a bound (a hostile export may hold one line of gigabytes); the
    # readline is called from C, at nearly the speed of iterating the file.
    for raw in iter(functools.partial(lines.raw.readline, RECORD_LINE_BYTES_MAX + 1), b""):
        if pos >= end:
            break  # the manifest
        if len(raw) > RECORD_LINE_BYTES_MAX:
            raise VerificationFailed(
                f"a line is longer than any record ({RECORD_LINE_BYTES_MAX} bytes)", seq=expected
            )
        pos += len(raw)
        lines.pos = pos
        if progress is not None and pos - reported >= PROGRESS_EVERY_BYTES:
            reported = pos
            progress(pos, lines.total)
        line = raw[:-1]
        if expected >= to_size:
            raise VerificationFailed(
                f"the export holds more records than its checkpoint covers ({to_size}): "
                "records were inserted",
                seq=expected,
            )
        # The first match is the record's own seq and prev in every record the log wrote; a
        # forged line that hides another match earlier is caught by its leaf hash below.
        found = search(line)
        if found is not None:
            seq, prev = int(found[2]), found[1].decode("ascii")
        else:
            seq, prev = _seq_and_prev(line, expected)
        if seq != expected:
            raise _out_of_place(expected, seq, lines)
        linked = prev_hex is None or prev == prev_hex
        prev_hex = sha256(line).hexdigest()
        leaf = sha256(b"\x00" + line).digest()
        if chunk is None:
            chunk = next(cover)
            chunk_start, chunk_end = expected, expected + (1 << chunk[0])
            chunk_hashes, chunk_leaves = [], 0
        if chunk[0] == 0:
            # One cover hash per record: each record is checked on its own, exactly.
            if leaf != chunk[2]:
                raise _altered(line, expected)
            if not linked:
                raise _broken_chain(expected)
            chunk = None
        else:
            if not linked and chain_break is None:
                chain_break = expected
            elif chain_break is not None and expected == chain_break + 1:
                next_also_broke = not linked
            carry = chunk_leaves
            while carry & 1:
                leaf = sha256(b"\x01" + chunk_hashes.pop() + leaf).digest()
                carry >>= 1
            chunk_hashes.append(leaf)
            chunk_leaves += 1
            if expected + 1 == chunk_end:
                # A full chunk is one perfect subtree: its compact range is its root alone.
                if chunk_hashes[0] != chunk[2]:
                    raise _blame(
                        chunk_start, chunk_end, chain_break, next_also_broke, lines, prev_hex
                    )
                if chain_break is not None:
                    raise _broken_chain(chain_break)
                chunk = None
        expected += 1
    if chain_break is not None:
        raise _blame(chunk_start, chunk_end, chain_break, next_also_broke, lines, prev_hex or "")
    if expected < to_size:
        raise VerificationFailed(
            f"missing: the export ends after seq {expected - 1} but its checkpoint covers "
            f"{to_size} records (truncated)",
            seq=expected,
        )


def _next_prev(lines: _Lines) -> Any:
    after = lines.peek()
    if after is None:
        return None
    try:
        return _seq_and_prev(after, -1)[1]
    except VerificationFailed:
        return None


def _blame(
    start: int,
    end: int,
    chain_break: int | None,
    next_also_broke: bool,
    lines: _Lines,
    last_hex: str,
) -> VerificationFailed:
    """Name the record that made a chunk of records differ from the log's cover hash.

    A single edited record breaks the link after it; if the edit was to its own ``prev``, the
    link before it breaks too. The chunk before this one verified, so a break at the chunk's
    first record is that record's.
    """
    if chain_break is not None:
        if chain_break == end - 1 and chain_break != start:
            next_also_broke = _next_prev(lines) != last_hex
        if chain_break == start or next_also_broke:
            return VerificationFailed(
                "altered: its prev does not match the record before it (edited, or from "
                "another log)",
                seq=chain_break,
            )
        return VerificationFailed(
            "altered: its hash does not match the next record's prev", seq=chain_break - 1
        )
    if _next_prev(lines) not in (None, last_hex):
        return VerificationFailed(
            "altered: its hash does not match the next record's prev", seq=end - 1
        )
    return VerificationFailed(
        f"records {start}..{end - 1} are not the log's, though they chain (a record was "
        "altered and the chain rebuilt)",
        seq=start,
    )


# --- Entry points ----------------------------------------------------------------------------------


def verify_export(
    path: str | os.PathLike[str],
    verifiers: Sequence[VerifierKey],
    *,
    previous: str | None = None,
    progress: Progress | None = None,
) -> Summary:
    """Verify the JSONL export at ``path``; a summary, or :class:`VerificationFailed`."""
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        offset, last, manifest = _last_line(handle, file_size)
        if manifest is None or MANIFEST_KEY not in manifest:
            raise _truncated(last)
        plan = _plan(manifest, verifiers, previous)
        handle.seek(0)
        _verify_records(plan, _Lines(handle, offset, progress, file_size))
        if progress is not None:
            progress(file_size, file_size)
    return Summary(plan.origin, plan.from_seq, plan.to_size, plan.root, plan.signed_by)


def read_small_text(path: str, bytes_max: int, code: str) -> str:
    """The UTF-8 text of the regular file at ``path``, at most ``bytes_max`` bytes; NoteError
    (with ``code``) otherwise.

    Opened without blocking and checked before it is read: a FIFO would wait forever for a
    writer, and /dev/zero would fill memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise NoteError(code, f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NoteError(code, f"{path} is not a regular file")
        data = handle.read(bytes_max + 1)
    if len(data) > bytes_max:
        raise NoteError(code, f"{path} is larger than {bytes_max} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError(code, f"{path} is not UTF-8 text") from None


def load_verifier_keys(argument: str) -> list[VerifierKey]:
    """Keys from a verifier-key string, or from a file holding one or more of them."""
    if "+" not in argument or Path(argument).is_file():
        return parse_verifier_keys(read_small_text(argument, KEY_FILE_BYTES_MAX, "no_verifier_key"))
    return [VerifierKey.parse(argument)]


def keys_for_file(path: str, public_key: str) -> list[VerifierKey]:
    """The keys that are to verify the file at ``path`` (an export or a report); NoteError when
    the keys cannot be read or ``path`` is not a file."""
    keys = load_verifier_keys(public_key)
    if not Path(path).is_file():
        raise NoteError("not_a_file", f"{path} is not a file")
    return keys


def load_checkpoint(path: str) -> str:
    """A signed checkpoint from a note file, or from an earlier export's manifest."""
    if not Path(path).is_file():
        raise NoteError("not_a_file", f"{path} is not a regular file")
    with open(path, "rb") as handle:
        _offset, _last, manifest = _last_line(handle, os.fstat(handle.fileno()).st_size)
    if manifest is not None and isinstance(manifest.get("checkpoint"), str):
        return str(manifest["checkpoint"])
    return read_small_text(path, NOTE_BYTES_MAX, "malformed_note")


class ProgressBar:
    """A one-line progress bar on a terminal's standard error; silent elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        rate = done / max(time.monotonic() - self.started, 1e-9) / 1e6
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}% "
            f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB {rate:,.0f} MB/s"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marketplace.audit.verify``: exit 0 verified, 1 not verified, 2 bad arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m marketplace.audit.verify",
        description="Verify a Jishi journal export (JSONL) offline against a public key.",
    )
    parser.add_argument("export", help="the JSONL export file")
    parser.add_argument(
        "--public-key",
        required=True,
        help="a verifier key (name+hash+base64) or a file with one per line",
    )
    parser.add_argument(
        "--previous",
        help="a checkpoint you trusted before (a signed note file, or the earlier export that "
        "carries it) at this export's first or last size: the export must be consistent with it",
    )
    args = parser.parse_args(argv)
    return run(args.export, args.public_key, args.previous)


def run(export: str, public_key: str, previous: str | None) -> int:
    """Verify and print the outcome: one line on standard output, or the failure on stderr."""
    try:
        keys = keys_for_file(export, public_key)
        previous_note = load_checkpoint(previous) if previous else None
    except (NoteError, OSError, VerificationFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = verify_export(export, keys, previous=previous_note, progress=ProgressBar())
    except VerificationFailed as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
