"""The CSV export's rows, formatted by hand, are the bytes Python's csv module writes."""

from __future__ import annotations

import csv
import hashlib
import io
import json

from marketplace.audit import merkle
from marketplace.audit.export import CSV_COLUMNS, _csv_line, _csv_rows
from marketplace.canonical import canonical_json

HOSTILE_TEXTS = ["plain", "with,comma", 'with "quotes"', "line\nbreak", "cr\rhere", "", '中文,"x"']


def _record(seq: int, text: str, money: bool) -> bytes:
    record = {
        "seq": seq,
        "at": "2026-11-30T12:00:00.123456Z",
        "kind": "ledger.transaction",
        "actor": {"organization_id": seq or None, "client_id": text, "via": "api"},
        "money": {"currency": "CNY", "amount_minor": 12345, "memo": text} if money else None,
        "prev": "ab" * 32,
        "subject": {"transaction_id": seq, "note": text},
    }
    return canonical_json(record)


def _with_csv_writer(records: list[bytes]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for data in records:
        record = json.loads(data)
        actor = record["actor"] or {}
        money = record["money"]
        subject = json.dumps(record["subject"], ensure_ascii=False, separators=(",", ":"))
        money_text = (
            "" if money is None else json.dumps(money, ensure_ascii=False, separators=(",", ":"))
        )
        writer.writerow(
            (
                record["seq"],
                record["at"],
                record["kind"],
                "" if actor.get("organization_id") is None else actor["organization_id"],
                actor.get("client_id") or "",
                actor.get("via") or "",
                subject,
                "" if money is None else money["currency"],
                "" if money is None else money["amount_minor"],
                money_text,
                record["prev"],
                hashlib.sha256(data).hexdigest(),
                merkle.leaf_hash(data).hex(),
            )
        )
    return out.getvalue().encode("utf-8")


def test_rows_are_the_bytes_csv_writer_gives():
    records = [_record(seq, text, money=seq % 2 == 0) for seq, text in enumerate(HOSTILE_TEXTS)]
    assert _csv_rows(records) == _with_csv_writer(records)
    parsed = list(csv.reader(io.StringIO(_csv_rows(records).decode(), newline="")))
    assert [row[4] for row in parsed] == HOSTILE_TEXTS


def test_the_header_line_is_the_bytes_csv_writer_gives():
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(CSV_COLUMNS)
    assert _csv_line(CSV_COLUMNS) == out.getvalue().encode()
