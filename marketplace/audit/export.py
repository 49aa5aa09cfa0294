"""Exports of a range of the journal, streamed: JSONL for verifiers, CSV for spreadsheets.

**JSONL.** Every line but the last is one record's exact bytes, so ``SHA-256(0x00 ‖ line)`` is
its leaf hash. The last line is the manifest (canonical JSON)::

    {"jishi_audit_manifest": 1, "origin", "from_seq": m, "to_size": n,
     "checkpoint": <the signed note of the tree at n>,
     "prefix": [hex, ...],          # the compact range of the tree at m (largest first)
     "cover_level": L, "cover": [hex, ...],
     "consistency": {"from_size": m, "from_root", "proof": [hex, ...]} | null,
     "from_checkpoint": <the stored signed note at m> | null}

``cover`` holds the perfect nodes, at most ``2**L`` leaves each, that cover ``[m, n)`` left to
right (at most :data:`COVER_NODES_MAX` of them, so ``L`` is 0, one hash per record, for exports
of up to that many records). ``prefix`` followed by ``cover`` folds into the checkpoint's root,
which authenticates every cover hash before a record is read; the records then rebuild each
cover hash, so a verifier names the first record that is not the log's, and a spliced or
altered export is caught even where the hash chain cannot tell. From seq 0, the records alone
fold into the checkpoint's root. ``consistency`` is the RFC 9162 proof from the tree at ``m``
to the tree at ``n``, which ties this export to an earlier one ending at ``m``.

**CSV** carries the same fields per record, the record's SHA-256 and its leaf hash, and no
manifest (use JSONL to verify). Free text (memos, reasons) only ever sits inside the ``subject``
and ``money`` cells, which are canonical JSON objects: no cell a spreadsheet would run as a
formula starts with user text.

The API and ``jishi audit export`` produce the same bytes for the same range.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from marketplace.audit import merkle, services
from marketplace.audit.errors import RangeInvalid
from marketplace.audit.keys import AuditKeyStore
from marketplace.audit.models import records_t as _records_t
from marketplace.canonical import canonical_json
from marketplace.ledger import bulk

MANIFEST_KEY = "jishi_audit_manifest"
MANIFEST_VERSION = 1
COVER_NODES_MAX = 1024
CHUNK_ROWS = 5000
FORMATS = ("jsonl", "csv")
CSV_COLUMNS = (
    "seq",
    "at",
    "kind",
    "actor_organization_id",
    "actor_client_id",
    "actor_via",
    "subject",
    "currency",
    "amount_minor",
    "money",
    "prev",
    "sha256",
    "leaf_hash",
)
MEDIA_TYPES = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}

# In a record's canonical bytes the top-level keys are sorted (actor, at, kind, money, prev,
# seq, subject) and no other object holds "prev" or "seq" (the journal refuses such keys), so
# this pattern matches once, at the record's own seq and prev, with "subject" after them.
SEQ_PREV = re.compile(rb'"prev":"([0-9a-f]{64})","seq":(0|[1-9][0-9]{0,18}),"subject":')

_PAGE_SQL = "SELECT record FROM audit_records WHERE seq >= %s AND seq < %s ORDER BY seq LIMIT %s"


def iter_cover_nodes(start: int, end: int, level_max: int) -> Iterator[merkle.Node]:
    """The aligned perfect nodes of at most ``2**level_max`` leaves covering ``[start, end)``,
    left to right."""
    while start < end:
        level = level_max if start == 0 else min(level_max, (start & -start).bit_length() - 1)
        while (1 << level) > end - start:
            level -= 1
        yield (level, start >> level)
        start += 1 << level


def cover_level(start: int, end: int, nodes_max: int = COVER_NODES_MAX) -> int:
    """The lowest level whose cover of ``[start, end)`` has at most ``nodes_max`` nodes, or, if
    none has (the ragged ends of an unaligned range take up to 2·log2 of its length), the level
    above which raising it changes nothing."""
    top = max(0, (end - start).bit_length())
    level = 0
    while level < top and (
        sum(1 for _ in itertools.islice(iter_cover_nodes(start, end, level), nodes_max + 1))
        > nodes_max
    ):
        level += 1
    return level


@dataclass(frozen=True)
class Export:
    """A validated export: its range, format and manifest, ready to stream."""

    from_seq: int
    to_size: int
    format: str
    manifest: dict[str, Any]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    @property
    def filename(self) -> str:
        return f"jishi-audit-{self.from_seq}-{self.to_size}.{self.format}"

    def chunks(self, session: Session) -> Iterator[bytes]:
        """The export's bytes in chunks of records (reads only sequenced, immutable rows)."""
        if self.format == "csv":
            yield _csv_line(CSV_COLUMNS)
        for records in record_pages(session, self.from_seq, self.to_size):
            if self.format == "jsonl":
                yield b"\n".join(records) + b"\n"
            else:
                yield _csv_rows(records)
        if self.format == "jsonl":
            yield canonical_json(self.manifest) + b"\n"


def record_pages(session: Session, start: int, end: int) -> Iterator[list[bytes]]:
    """The bytes of records ``[start, end)`` in order, a page per transaction (so a long export
    holds no snapshot open)."""
    position = start
    while position < end:
        if bulk.is_postgresql(session):
            # Binary results: bytea arrives as bytes, not as hex text to decode (twice as fast).
            raw: Any = session.connection().connection.dbapi_connection
            with raw.cursor(binary=True) as cursor:
                cursor.execute(_PAGE_SQL, (position, end, CHUNK_ROWS))
                records = [row[0] for row in cursor.fetchall()]
        else:
            rows = session.execute(
                sa.select(_records_t.c.record)
                .where(_records_t.c.seq >= position, _records_t.c.seq < end)
                .order_by(_records_t.c.seq)
                .limit(CHUNK_ROWS)
            ).scalars()
            records = [bytes(raw) for raw in rows]
        session.rollback()
        if not records:
            raise RuntimeError(f"the journal has no record {position} below its head")
        position += len(records)
        yield records


def prepare_export(
    session: Session,
    keys: AuditKeyStore,
    *,
    from_seq: int | None,
    to_size: int | None,
    fmt: str,
    nodes_max: int = COVER_NODES_MAX,
) -> Export:
    """Check the range (422 when negative, reversed or past the tree) and build the manifest."""
    if fmt not in FORMATS:
        raise RangeInvalid(f"format must be one of {', '.join(FORMATS)}.", code="format_invalid")
    size = services.tree_size(session)
    start = 0 if from_seq is None else from_seq
    end = size if to_size is None else to_size
    services.check_range(start=start, end=end, size=size, start_name="from_seq", end_name="to_size")
    manifest = build_manifest(session, keys, start, end, nodes_max)
    session.rollback()
    return Export(from_seq=start, to_size=end, format=fmt, manifest=manifest)


def build_manifest(
    session: Session, keys: AuditKeyStore, start: int, end: int, nodes_max: int = COVER_NODES_MAX
) -> dict[str, Any]:
    """The JSONL export's last line for records ``[start, end)``."""
    checkpoint = services.checkpoint_at(session, keys, end)
    level = cover_level(start, end, nodes_max)
    prefix = merkle.compact_nodes(start)
    cover = list(iter_cover_nodes(start, end, level))
    reader = services.DatabaseNodes(session)
    found = reader.nodes(prefix + cover)
    consistency = None
    if 0 < start < end:
        consistency = {
            "from_size": start,
            "from_root": merkle.fold([found[n] for n in prefix]).hex(),
            "proof": [p.hex() for p in merkle.consistency_proof(reader, start, end)],
        }
    earlier = services.stored_checkpoint(session, start) if start else None
    return {
        MANIFEST_KEY: MANIFEST_VERSION,
        "origin": keys.origin,
        "from_seq": start,
        "to_size": end,
        "checkpoint": checkpoint.note,
        "prefix": [found[n].hex() for n in prefix],
        "cover_level": level,
        "cover": [found[n].hex() for n in cover],
        "consistency": consistency,
        "from_checkpoint": None if earlier is None else earlier.note,
    }


def _csv_field(value: Any) -> str:
    """One CSV field as Python's csv module writes it by default (QUOTE_MINIMAL, RFC 4180)."""
    text = value if isinstance(value, str) else str(value)
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    if "," in text or "\r" in text or "\n" in text:
        return '"' + text + '"'
    return text


def _csv_line(values: tuple[Any, ...] | list[Any]) -> bytes:
    return (",".join(map(_csv_field, values)) + "\r\n").encode("utf-8")


def _csv_rows(records: list[bytes]) -> bytes:
    # Formatted by hand rather than with csv.writer: a third of the cost per row went there,
    # and the fields are few and simple (the test checks the bytes against csv.writer's).
    lines: list[str] = []
    field = _csv_field
    for data in records:
        record = json.loads(data)
        actor = record.get("actor") or {}
        money = record.get("money")
        # The record is canonical JSON, so its values' canonical forms are its own bytes:
        # "money" ends just before "prev", and "subject" is the last member.
        fields = SEQ_PREV.search(data)
        assert fields is not None
        organization_id = actor.get("organization_id")
        if money is None:
            currency = amount = money_text = ""
        else:
            currency = money.get("currency", "")
            amount = money.get("amount_minor", "")
            money_text = data[data.index(b'"money":') + 8 : fields.start() - 1].decode("utf-8")
        lines.append(
            ",".join(
                (
                    str(record["seq"]),
                    field(record["at"]),
                    field(record["kind"]),
                    "" if organization_id is None else str(organization_id),
                    field(actor.get("client_id") or ""),
                    field(actor.get("via") or ""),
                    field(data[fields.end() : -1].decode("utf-8")),
                    field(currency),
                    field(amount),
                    field(money_text),
                    record["prev"],
                    hashlib.sha256(data).hexdigest(),
                    merkle.leaf_hash(data).hex(),
                )
            )
        )
    lines.append("")
    return "\r\n".join(lines).encode("utf-8")


def write_export(
    export: Export, session: Session, out: Any, progress: Callable[[int], None] | None = None
) -> int:
    """Write the export's bytes to a binary file; the number of bytes written."""
    written = 0
    for chunk in export.chunks(session):
        out.write(chunk)
        written += len(chunk)
        if progress is not None:
            progress(written)
    return written
