"""The audit journal's cost to the ledger, and export and offline verification at scale.

Run: .venv/bin/python -m bench.bench_audit [--seconds 3] [--rounds 2] [--records 1000000]
     [--pg postgresql+psycopg://...]

Creates a scratch PostgreSQL database next to the given one, migrates it, and prints:

  * ledger throughput, journal off versus on, two ways in the same run: cells of ``--seconds``
    alternating off/on over ``--rounds`` rounds (median), and, steadier on a shared machine,
    every writer alternating blocks of 10 transactions off and on (so both modes meet the
    same load). ``post_transaction`` (one transfer per database transaction, the API's path)
    from 1 and 8 writer processes, on spread accounts (each writer its own) and on one hot
    wallet. "On" runs the journal as production does: every transaction appends its record,
    and one sequencer process (the periodic task) sequences every ``--sequence-interval-s``.
    The ratio on/off is the journal's cost (goal >= 0.8). After each coarse "on" cell, the
    backlog left for the sequencer and the time it took to clear it are printed (the bound
    on a record's wait for its seq). ``--async-commit`` repeats both with
    ``synchronous_commit=off``;
  * the sequencer's own rate (records/s) while it fills the journal to ``--records``;
  * export of all records to a JSONL file and to CSV (rows/s, peak RSS of the exporting
    process), beside a baseline in the same run: reading the same rows with no formatting;
  * offline verification of the JSONL file (rows/s, peak RSS), beside a baseline: hashing
    every line's leaf and nothing else.

Writers, the sequencer, the exporter and the verifier are separate processes (no shared GIL),
so peak RSS is each process's own (``ru_maxrss``), with its resident size after imports given
for comparison. PostgreSQL runs on the same machine with durable commits.

A run on the 2-core host while other jobs shared it (load average 4 to 7; earlier runs at
load 9 to 14 gave ratios from 0.6 to 1.0 in single cells, which is why the interleaved
measurement is there):

    ledger transactions/s (durable commits), journal off vs on (3 interleaved rounds, median)
    accounts writers       off        on  on/off   sequencer backlog
      spread       1       152       124    0.82   54 left, cleared in 32 ms; ...
      spread       8        55        56    1.01   33 left, cleared in 50 ms; ...
         hot       1       108       136    1.25   45 left, cleared in 21 ms; ...
         hot       8        86        81    0.95   53 left, cleared in 16 ms; ...
    ... in alternating blocks of 10 transactions within each writer, 12.0 s per cell
      spread       1       118       108    0.92
      spread       8       118       103    0.87
         hot       1        81        76    0.94
         hot       8        68        68    0.99
    filled the journal to 1,000,000 records: ... sequencer 12,600 records/s
       baseline: read rows: 1,000,000 rows in 6.67 s =   149,952 rows/s; peak RSS 122.1 MiB
              export JSONL: 1,000,000 rows in 3.41 s =   293,111 rows/s; peak RSS 132.0 MiB
                            (after imports 111.1 MiB); 617 MiB written
                export CSV: 1,000,000 rows in 35.73 s =   27,989 rows/s; peak RSS 136.4 MiB
     baseline: leaf hashes: 1,000,000 rows in 1.37 s =   731,919 rows/s; peak RSS 111.8 MiB
            verify offline: 1,000,000 rows in 4.97 s =   201,408 rows/s; peak RSS 118.5 MiB
                            (after imports 111.1 MiB)

The JSONL export reads with binary results, which is why it beats the baseline's plain
SQLAlchemy read of the same rows.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from bench.bench_ledger import _legs, _setup_accounts
from bench.scratch import DEFAULT_PG, scratch_database
from marketplace.audit import export, journal
from marketplace.audit.keys import AuditKeyStore
from marketplace.audit.verify import verify_export
from marketplace.db import make_engine
from marketplace.ledger import services as ledger

FUNDS = 10**15
ORIGIN = "bench.jishi.test/journal"


def _rss_mib() -> float:
    """This process's resident memory now (from /proc), in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- Ledger throughput, journal off and on ---------------------------------------------------------


def _engine(url: str, async_commit: bool) -> Any:
    if not async_commit:
        return make_engine(url)
    # Commits that do not wait for the WAL flush: the cost of the journal's own work shows
    # without the disk's (and a shared machine's) flush latency around it.
    return sa.create_engine(url, connect_args={"options": "-c synchronous_commit=off"})


def _writer(
    url: str, ids: dict[str, Any], hot: bool, on: bool, async_commit: bool, worker: int,
    start_at: float, seconds: float, out: Any,
) -> None:  # fmt: skip
    if on:
        journal.install()
    else:
        journal.uninstall()
    engine = _engine(url, async_commit)
    session = Session(engine, expire_on_commit=False)
    legs = _legs(ids, worker, hot, three=False)
    prefix = uuid.uuid4().hex[:12]
    done = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    while time.time() < deadline:
        ledger.post_transaction(
            session, idempotency_key=f"{prefix}-{done}", kind="bench", legs=legs
        )
        done += 1
    out.put((done, time.time() - start_at))
    session.close()
    engine.dispose()


AB_BLOCK = 10  # transactions per block in the interleaved measurement


def _ab_writer(
    url: str, ids: dict[str, Any], hot: bool, async_commit: bool, worker: int, start_at: float,
    seconds: float, out: Any,
) -> None:  # fmt: skip
    """Alternate blocks of transactions with the journal off and on, timing each mode."""
    engine = _engine(url, async_commit)
    session = Session(engine, expire_on_commit=False)
    legs = _legs(ids, worker, hot, three=False)
    prefix = uuid.uuid4().hex[:12]
    spent = [0.0, 0.0]
    done = [0, 0]
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + seconds
    block = worker % 2  # half the writers start with the journal on
    while time.time() < deadline:
        if block % 2:
            journal.install()
        else:
            journal.uninstall()
        started = time.perf_counter()
        for _ in range(AB_BLOCK):
            ledger.post_transaction(
                session, idempotency_key=f"{prefix}-{n}", kind="bench", legs=legs
            )
            n += 1
        spent[block % 2] += time.perf_counter() - started
        done[block % 2] += AB_BLOCK
        block += 1
    out.put((done, spent))
    session.close()
    engine.dispose()


def bench_ledger_ab(url: str, seconds: float, interval_s: float, async_commit: bool) -> None:
    """Off and on in alternating blocks inside every writer: both modes meet the same load."""
    ids = _setup_accounts(url, 8)
    commits = "synchronous_commit=off" if async_commit else "durable commits"
    print(
        f"\nledger transactions/s ({commits}), journal off and on in alternating blocks of "
        f"{AB_BLOCK} transactions within each writer, {seconds} s per cell"
    )
    print(f"{'accounts':>8} {'writers':>7} {'off':>9} {'on':>9} {'on/off':>7}")
    ctx = mp.get_context("fork")
    for hot in (False, True):
        for writers in (1, 8):
            out = ctx.Queue()
            stop = ctx.Event()
            sequencer = ctx.Process(target=_sequencer, args=(url, interval_s, stop))
            sequencer.start()
            start_at = time.time() + 0.5
            procs = [
                ctx.Process(
                    target=_ab_writer,
                    args=(url, ids, hot, async_commit, w, start_at, seconds, out),
                )
                for w in range(writers)
            ]
            for p in procs:
                p.start()
            results = [out.get(timeout=seconds + 120) for _ in procs]
            for p in procs:
                p.join()
            stop.set()
            sequencer.join()
            # Per writer, transactions per second of its own time in each mode, summed.
            off = sum(d[0] / t[0] for d, t in results if t[0])
            on = sum(d[1] / t[1] for d, t in results if t[1])
            print(
                f"{'hot' if hot else 'spread':>8} {writers:>7} {off:>9,.0f} {on:>9,.0f} "
                f"{on / off:>7.2f}",
                flush=True,
            )


def _sequencer(url: str, interval_s: float, stop: Any) -> None:
    engine = make_engine(url)
    session = Session(engine, expire_on_commit=False)
    while not stop.is_set():
        journal.sequence(session, wait=False)
        stop.wait(interval_s)
    session.close()
    engine.dispose()


def _ledger_cell(
    url: str, ids: dict[str, Any], writers: int, hot: bool, on: bool, seconds: float,
    interval_s: float, async_commit: bool,
) -> tuple[float, int, float]:  # fmt: skip
    """Transactions/s; with the journal on, also the backlog left and the time to clear it."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    stop = ctx.Event()
    sequencer = ctx.Process(target=_sequencer, args=(url, interval_s, stop)) if on else None
    if sequencer is not None:
        sequencer.start()
    start_at = time.time() + 0.5
    procs = [
        ctx.Process(
            target=_writer, args=(url, ids, hot, on, async_commit, w, start_at, seconds, out)
        )
        for w in range(writers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    rate = sum(d for d, _ in results) / max(e for _, e in results)
    backlog, clear_s = 0, 0.0
    if sequencer is not None:
        stop.set()
        sequencer.join()
        engine = make_engine(url)
        session = Session(engine, expire_on_commit=False)
        backlog = journal.pending_count(session)
        started = time.perf_counter()
        journal.sequence(session)
        clear_s = time.perf_counter() - started
        session.close()
        engine.dispose()
    return rate, backlog, clear_s


def bench_ledger(
    url: str, seconds: float, rounds: int, interval_s: float, async_commit: bool
) -> None:
    ids = _setup_accounts(url, 8)
    commits = "synchronous_commit=off" if async_commit else "durable commits"
    print(
        f"\nledger transactions/s ({commits}), journal off vs on "
        f"({rounds} interleaved rounds, median)"
    )
    print(f"{'accounts':>8} {'writers':>7} {'off':>9} {'on':>9} {'on/off':>7}   sequencer backlog")
    for hot in (False, True):
        for writers in (1, 8):
            offs, ons, notes = [], [], []
            for _ in range(rounds):
                offs.append(
                    _ledger_cell(url, ids, writers, hot, False, seconds, interval_s, async_commit)[
                        0
                    ]
                )
                rate, backlog, clear_s = _ledger_cell(
                    url, ids, writers, hot, True, seconds, interval_s, async_commit
                )
                ons.append(rate)
                notes.append(f"{backlog} left, cleared in {clear_s * 1000:.0f} ms")
            off, on = statistics.median(offs), statistics.median(ons)
            print(
                f"{'hot' if hot else 'spread':>8} {writers:>7} {off:>9,.0f} {on:>9,.0f} "
                f"{on / off:>7.2f}   {'; '.join(notes)}",
                flush=True,
            )


# --- A million records: fill, export, verify --------------------------------------------------------


def fill(url: str, records: int) -> None:
    """Append ``records`` records (as the ledger hook would) and sequence them, timed."""
    engine = make_engine(url)
    session = Session(engine, expire_on_commit=False)
    have = journal.read_head(session)
    assert have is not None
    missing = records - have.size - journal.pending_count(session)
    session.rollback()
    batch = 10_000
    started = time.perf_counter()
    for start in range(0, max(0, missing), batch):
        entries = [
            journal.Entry(
                kind="ledger.transaction",
                subject={
                    "ledger_transaction_id": start + i,
                    "transaction_kind": "royalty",
                    "idempotency_key": f"royalty:{start + i}:0-1000",
                    "pending": False,
                    "resolves_id": None,
                    "reverses_id": None,
                    "memo": f"royalties for calls 1..1000 of licence {start + i}",
                },
                money=journal.Money(
                    "CNY",
                    37,
                    legs=(
                        {"account_id": 11, "side": "debit", "amount_minor": 37},
                        {"account_id": 12, "side": "credit", "amount_minor": 33},
                        {"account_id": 13, "side": "credit", "amount_minor": 4},
                    ),
                ),
            )
            for i in range(min(batch, missing - start))
        ]
        ledger.run_in_transaction(session, lambda s, e=entries: journal.append_many(s, e))
    appended = time.perf_counter() - started
    started = time.perf_counter()
    sequenced = journal.sequence(session)
    elapsed = time.perf_counter() - started
    print(
        f"\nfilled the journal to {records:,} records: appended {max(0, missing):,} in "
        f"{appended:.1f} s; sequencer {sequenced:,} records in {elapsed:.1f} s "
        f"({sequenced / max(elapsed, 1e-9):,.0f} records/s)",
        flush=True,
    )
    session.close()
    engine.dispose()


def _in_child(target: Callable[..., Any], *args: Any) -> Any:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=lambda: out.put(target(*args)))
    proc.start()
    result = out.get()
    proc.join()
    return result


def _export(url: str, key_path: str, path: str, fmt: str) -> dict[str, float]:
    base = _rss_mib()
    engine = make_engine(url)
    session = Session(engine, expire_on_commit=False)
    keys = AuditKeyStore(Path(key_path), ORIGIN, generate=True)
    started = time.perf_counter()
    prepared = export.prepare_export(session, keys, from_seq=None, to_size=None, fmt=fmt)
    with open(path, "wb") as out:
        written = export.write_export(prepared, session, out)
    elapsed = time.perf_counter() - started
    rows = prepared.to_size - prepared.from_seq
    session.close()
    engine.dispose()
    return {"rows": rows, "s": elapsed, "bytes": written, "base": base, "peak": _peak_mib()}


def _read_baseline(url: str) -> dict[str, float]:
    """The same rows read in the same chunks, written nowhere: what the database costs."""
    base = _rss_mib()
    engine = make_engine(url)
    table = sa.table("audit_records", sa.column("seq"), sa.column("record"))
    rows = position = 0
    started = time.perf_counter()
    with engine.connect() as conn:
        while True:
            got = conn.execute(
                sa.select(table.c.record)
                .where(table.c.seq >= position)
                .order_by(table.c.seq)
                .limit(export.CHUNK_ROWS)
            ).scalars()
            chunk = [bytes(r) for r in got]
            if not chunk:
                break
            rows += len(chunk)
            position += len(chunk)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"rows": rows, "s": elapsed, "base": base, "peak": _peak_mib()}


def _verify(path: str, key_path: str) -> dict[str, float]:
    base = _rss_mib()
    keys = AuditKeyStore(Path(key_path), ORIGIN, generate=False)
    started = time.perf_counter()
    summary = verify_export(path, [keys.verifier()])
    elapsed = time.perf_counter() - started
    return {"rows": summary.records, "s": elapsed, "base": base, "peak": _peak_mib()}


def _hash_baseline(path: str) -> dict[str, float]:
    """Every record line's leaf hash and nothing else: the floor under any verifier."""
    base = _rss_mib()
    rows = 0
    started = time.perf_counter()
    with open(path, "rb") as handle:
        for line in handle:
            hashlib.sha256(b"\x00" + line[:-1]).digest()
            rows += 1
    elapsed = time.perf_counter() - started
    return {"rows": rows - 1, "s": elapsed, "base": base, "peak": _peak_mib()}


def _line(name: str, result: dict[str, float], baseline: dict[str, float] | None = None) -> str:
    rate = result["rows"] / result["s"]
    text = (
        f"{name:>22}: {result['rows']:>9,.0f} rows in {result['s']:6.2f} s = {rate:>9,.0f} rows/s"
        f"; peak RSS {result['peak']:6.1f} MiB (after imports {result['base']:5.1f} MiB)"
    )
    if baseline is not None:
        text += f"; {rate / (baseline['rows'] / baseline['s']):.2f}x the baseline"
    return text


def bench_export_verify(url: str, records: int) -> None:
    fill(url, records)
    with tempfile.TemporaryDirectory(prefix="jishi-bench-audit-") as tmp:
        key_path = os.path.join(tmp, "audit.key")
        AuditKeyStore(Path(key_path), ORIGIN, generate=True)
        jsonl, csv_path = os.path.join(tmp, "journal.jsonl"), os.path.join(tmp, "journal.csv")
        read = _in_child(_read_baseline, url)
        print(_line("baseline: read rows", read), flush=True)
        exported = _in_child(_export, url, key_path, jsonl, "jsonl")
        print(_line("export JSONL", exported, read), flush=True)
        print(f"{'':>24}{exported['bytes'] / 2**20:,.0f} MiB written", flush=True)
        print(_line("export CSV", _in_child(_export, url, key_path, csv_path, "csv"), read))
        hashed = _in_child(_hash_baseline, jsonl)
        print(_line("baseline: leaf hashes", hashed), flush=True)
        print(_line("verify offline", _in_child(_verify, jsonl, key_path), hashed), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequence-interval-s", type=float, default=1.0)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--skip-ledger", action="store_true")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="also measure the ledger with synchronous_commit=off (the journal's CPU cost alone)",
    )
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()

    with scratch_database(args.pg, "jishi_bench_audit") as url:
        print(
            f"PostgreSQL scratch database {url.rsplit('/', 1)[1]}; {os.cpu_count()} CPUs; "
            f"load {os.getloadavg()}"
        )
        if not args.skip_ledger:
            for async_commit in (False, True) if args.async_commit else (False,):
                bench_ledger(url, args.seconds, args.rounds, args.sequence_interval_s, async_commit)
                bench_ledger_ab(url, args.seconds * 3, args.sequence_interval_s, async_commit)
        if not args.skip_export:
            bench_export_verify(url, args.records)
        print(f"load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
