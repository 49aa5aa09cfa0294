"""Upload of a >= 1 GiB ONNX model through the HTTP API to S3 (SeaweedFS) vs raw minio put_object.

Run: .venv/bin/python -m bench.bench_upload [--gib 1.0] [--rounds 3] [--server gunicorn|werkzeug]

Starts SeaweedFS (``weed server -s3``) and the marketplace in a child process (``jishi serve``,
gunicorn with one worker process, or werkzeug's threaded server; SQLite,
``MARKETPLACE_STORAGE_URL`` on SeaweedFS), builds a valid ONNX model whose single initializer
holds almost all of its bytes (written straight to disk, never held in memory), then in the
same run:

  * raw: ``minio.put_object`` of the file to the same server (its default part size and
    parallelism), timed;
  * api: a streamed ``POST /api/v1/models/{id}/versions`` of the same file (Content-Length,
    1 MiB chunks), timed until the 201, so it includes the confined inspection and the store
    write; once with a ``Content-Digest`` (as ``jishi models push`` sends it, the client's
    hashing included in the time: the server writes to S3 while the body arrives) and once
    without (the server spools, then uploads while it inspects);

in interleaved rounds, and prints the throughputs, their ratios (median over rounds), the CPU
seconds each party spent on each upload (this process, the server's process tree with its
inspectors, SeaweedFS), and the server's peak resident memory growth during the API uploads
(sampled from /proc every 20 ms and checked against VmHWM).

Where the time goes, on the 2-core host: SeaweedFS spends 13-16 s of CPU per GiB, so the raw
put alone keeps both cores busy, and whatever the server spends comes out of the store's share.
With a declared digest the server now spends 3-4 s per GiB: its own SHA-256 of the body (the
check of the declared digest), minio's SigV4 SHA-256 of every part over plain HTTP (the raw put
pays it too), and receiving and sending the body. Without a digest it must also write the whole
body to the spool before it knows the key: that write costs 0.3 s to 2.2 s of system time per
GiB on this host, depending on whether the page cache reuses freed pages or takes fresh ones
(the same loop, timed alone).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import jishi_serve  # noqa: E402
from model_registry.blobstore import content_key as _content_key  # noqa: E402
from tests.model_registry.seaweed import SeaweedS3  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The header of a length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(length)


def write_big_model(path: Path, data_bytes: int) -> int:
    """``y = x + W`` with W a float32 initializer of ``data_bytes`` bytes; returns the file size.

    The nested messages are written by hand (protobuf fields may come in any order), so the
    initializer's bytes stream from a small random block instead of being built in memory.
    """
    import onnx
    from onnx import TensorProto, helper

    count = data_bytes // 4
    data_bytes = count * 4
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[count])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [count])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [count])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.graph.ClearField("initializer")
    graph_head = model.graph.SerializeToString()
    model.ClearField("graph")
    model_head = model.SerializeToString()

    tensor = weight.SerializeToString() + _field(9, data_bytes)  # raw_data = field 9
    tensor_len = len(tensor) + data_bytes
    graph_part = graph_head + _field(5, tensor_len)  # initializer = field 5
    graph_len = len(graph_part) + tensor_len
    head = model_head + _field(7, graph_len) + graph_part + tensor  # graph = field 7
    block = os.urandom(4 * MiB)
    with open(path, "wb") as out:
        out.write(head)
        left = data_bytes
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            left -= len(piece)
    size = path.stat().st_size
    # A cheap sanity check that the framing is right, without parsing a gigabyte here.
    small = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)  # noqa: SIM115
    small.close()
    if data_bytes > 1024:
        write_big_model(Path(small.name), 1024)
        onnx.checker.check_model(onnx.load(small.name), full_check=True)
    os.unlink(small.name)
    return size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVER = """
import logging
import sys
from werkzeug.serving import make_server
from marketplace import create_app, migrate
from marketplace.db import make_engine
config = dict(ENV="testing", DATABASE_URL=sys.argv[1], STORAGE_URL=sys.argv[2],
              INSTANCE_PATH=sys.argv[3], MODEL_BYTES_MAX=2 * 1024**3, LOG_LEVEL="WARNING")
migrate.upgrade(make_engine(sys.argv[1]))
app = create_app(config)
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = make_server("127.0.0.1", int(sys.argv[4]), app, threaded=True)
print("ready", flush=True)
server.serve_forever()
"""


def _serve(
    work: Path, database_url: str, storage_url: str, port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """`jishi serve` (gunicorn, one worker process) on the bench's database and store; returns
    the server and the pid of the worker that serves the uploads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETPLACE_")}
    env.update(
        MARKETPLACE_DATABASE_URL=database_url,
        MARKETPLACE_STORAGE_URL=storage_url,
        MARKETPLACE_INSTANCE_PATH=str(work / "instance"),
        MARKETPLACE_MODEL_BYTES_MAX=str(2 * GiB),
        MARKETPLACE_LOG_LEVEL="WARNING",
    )
    server = jishi_serve(port, ["--processes", "1"], env)
    workers = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _parent(int(p.name)) == server.pid
    ]
    if len(workers) != 1:
        raise SystemExit(f"expected one worker process, found {workers}")
    return server, workers[0]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid)[0])
            time.sleep(0.02)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every live process under it."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents[int(entry.name)] = int(fields[1])
        # Its own time, and that of the children it has reaped (a confined inspection).
        times[int(entry.name)] = sum(int(v) for v in fields[11:15]) / tick
    total = 0.0
    for pid, cpu in times.items():
        at = pid
        while at > 1 and at != root:
            at = parents.get(at, 0)
        if at == root:
            total += cpu
    return total


class CpuMeter:
    """CPU seconds spent by this process (the client), the server's and the store's process
    trees between two readings: where an upload's time goes on a machine of few cores."""

    def __init__(self, server: int, store: int) -> None:
        self.server, self.store = server, store

    def read(self) -> tuple[float, float, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (
            own.ru_utime + own.ru_stime,
            _tree_cpu_s(self.server),
            _tree_cpu_s(self.store),
        )

    @staticmethod
    def spent(before: tuple[float, ...], after: tuple[float, ...]) -> str:
        client, server, store = (b - a for a, b in zip(before, after, strict=True))
        return f"cpu s: client {client:.1f}, server {server:.1f}, store {store:.1f}"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while chunk := stream.read(MiB):
            yield chunk


class _Sized:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        return _file_chunks(self.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="initializer size in GiB")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--server",
        choices=["gunicorn", "werkzeug"],
        default="gunicorn",
        help="`jishi serve` (production), or werkzeug's threaded server in one process",
    )
    args = parser.parse_args()

    from minio import Minio

    work = Path(tempfile.mkdtemp(prefix="jishi-bench-upload-"))
    weed = SeaweedS3(bucket="bench")
    weed.start()
    server: subprocess.Popen[bytes] | None = None
    try:
        model = work / "big.onnx"
        t0 = time.perf_counter()
        size = write_big_model(model, int(args.gib * GiB))
        print(
            f"model: {size / GiB:.3f} GiB ({size} bytes), built in {time.perf_counter() - t0:.1f} s"
        )

        port = _free_port()
        database_url = f"sqlite:///{work / 'bench.sqlite3'}"
        if args.server == "werkzeug":
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SERVER,
                    database_url,
                    weed.storage_url(),
                    str(work / "instance"),
                    str(port),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
            )
            assert server.stdout is not None
            if server.stdout.readline().strip() != b"ready":
                raise SystemExit("the server did not start")
            served_by = server.pid
        else:
            server, served_by = _serve(work, database_url, weed.storage_url(), port)
        url = f"http://127.0.0.1:{port}"
        reg = requests.post(
            f"{url}/api/v1/register",
            json={
                "email": "bench@example.test",
                "password": "Correct-Horse-9-Battery",
                "organization_name": "Bench vendor",
                "organization_roles": ["vendor"],
            },
            timeout=30,
        ).json()
        token = requests.post(
            f"{url}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "models:write"},
            auth=(reg["client"]["client_id"], reg["client"]["client_secret"]),
            timeout=30,
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        listing = requests.post(
            f"{url}/api/v1/models",
            json={"name": "Bench", "task": "benchmark", "tags": ["bench"]},
            headers=auth,
            timeout=30,
        ).json()

        def upload(path: Path, version: str, declare: bool) -> requests.Response:
            headers = {**auth, "Content-Type": "application/octet-stream"}
            if declare:  # what `jishi models push` does: hash first, then stream
                digest = hashlib.sha256()
                for chunk in _file_chunks(path):
                    digest.update(chunk)
                headers["Content-Digest"] = (
                    f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
                )
            return requests.post(
                f"{url}/api/v1/models/{listing['id']}/versions",
                params={"version": version},
                data=_Sized(path),
                headers=headers,
                timeout=3600,
            )

        # Warm up: every import and connection pool of the upload path, with a small model.
        warm = work / "warm.onnx"
        write_big_model(warm, 16 * MiB)
        resp = upload(warm, "0.0.1", declare=True)
        if resp.status_code != 201:
            raise SystemExit(f"warm-up upload failed: {resp.status_code} {resp.text}")

        client = Minio(
            weed.endpoint,
            access_key=weed.access_key,
            secret_key=weed.secret_key,
            secure=False,
            region="us-east-1",
        )

        def raw_put() -> float:
            t0 = time.perf_counter()
            with open(model, "rb") as stream:
                client.put_object(weed.bucket, "raw/big.onnx", stream, size)
            elapsed = time.perf_counter() - t0
            client.remove_object(weed.bucket, "raw/big.onnx")
            return elapsed

        versions = iter(f"1.0.{i}" for i in range(1000))

        def api_put(declare: bool) -> tuple[float, int, dict[str, object]]:
            rss_before, hwm_before = _rss_kib(served_by)
            sampler = _Sampler(served_by)
            sampler.start()
            t0 = time.perf_counter()
            resp = upload(model, next(versions), declare)
            elapsed = time.perf_counter() - t0
            peak = sampler.stop()
            _, hwm_after = _rss_kib(served_by)
            if resp.status_code != 201:
                raise SystemExit(f"API upload failed: {resp.status_code} {resp.text[:500]}")
            # Remove the stored object so that the next upload writes it again.
            client.remove_object(weed.bucket, _content_key(resp.json()["sha256"]))
            # VmHWM only counts if it rose during the upload (it also remembers start-up peaks).
            peak = max(peak, hwm_after if hwm_after > hwm_before else 0)
            return elapsed, peak - rss_before, resp.json()["stats"]

        # Interleaved rounds: the store's speed drifts (and the host may be shared), so each
        # API upload is compared with the raw upload of its own round.
        ratios: dict[str, list[float]] = {"declared digest": [], "no digest": []}
        growths: list[int] = []
        stats: dict[str, object] = {}
        assert weed.process is not None
        meter = CpuMeter(server.pid, weed.process.pid)
        for round_no in range(1, args.rounds + 1):
            before = meter.read()
            raw_s = raw_put()
            cpu = [f"  raw put_object: {meter.spent(before, meter.read())}"]
            line = f"round {round_no}: raw put_object {size / raw_s / MiB:6.1f} MiB/s"
            for label, declare in (("declared digest", True), ("no digest", False)):
                before = meter.read()
                api_s, growth, stats = api_put(declare)
                cpu.append(f"  API {label}: {meter.spent(before, meter.read())}")
                ratios[label].append(raw_s / api_s)
                growths.append(growth)
                line += f" | API {label} {size / api_s / MiB:6.1f} MiB/s ({raw_s / api_s:.2f}x)"
            print(line, *cpu, sep="\n", flush=True)
        for label, values in ratios.items():
            print(
                f"API/raw throughput, {label:>15}: median {statistics.median(values):.2f} "
                f"(rounds: {', '.join(f'{v:.2f}' for v in values)}; goal >= 0.80)"
            )
        print(
            f"server RSS growth during an API upload: max {max(growths) / 1024:.1f} MiB "
            f"(goal <= 64 MiB)"
        )
        print(f"stats of the stored version: {stats}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        weed.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
