"""Serving a node: gunicorn with threaded workers, one periodic runner per node, clean exits.

``jishi serve`` (``marketplace.cli``) migrates and loads demo data, then calls :func:`serve`:
gunicorn's ``gthread`` workers, each process with its own app, sandbox pool and caches, all
threads of a process sharing them. :func:`serve_dev` is Werkzeug's development server with the
reloader, for ``jishi serve --dev``.

What is per node and what is shared: each node has its own processes, sandbox pools, token
and lookup caches, evaluation slots (:mod:`marketplace.evaluation.admission`) and periodic
runner; nodes share the database and the object store. The periodic runner runs in exactly
one server process of a node: every process tries to take a lock file in the instance folder
(``run/periodic.lock``), the holder runs :class:`marketplace.periodic.Runner`, and when it
exits (or dies) another process takes over within :data:`PERIODIC_TAKEOVER_S`.

Shutdown (SIGTERM or SIGINT to the master): gunicorn stops accepting, lets in-flight requests
finish (up to ``graceful_timeout``: the evaluation deadline plus a margin), and each worker
then stops its periodic runner, kills its sandbox workers and zygote and closes its database
connections before it exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from flask import Flask

from marketplace import periodic
from marketplace.errors import problem_body

log = logging.getLogger(__name__)

PERIODIC_TAKEOVER_S = 2.0
# How long a thread waits on a kept-alive connection for its next request before handing it
# back to the poller.
KEEPALIVE_LINGER_S = 0.002


def default_processes() -> int:
    """One server process per core."""
    return max(1, os.cpu_count() or 1)


def default_threads(evaluation_slots: int) -> int:
    """Threads per process: enough to keep a core's sandbox workers busy while others wait,
    and more than the node's evaluation slots.

    Every slot may be held by one process's threads; with no thread left over, the next call
    to that process waited unbounded in gunicorn's queue for a thread instead of being told
    503 at once (60 one-second calls on 2 x 8 threads with 16 slots: 44 s for the last).
    """
    return max(8, evaluation_slots + 1)


class PeriodicHolder:
    """Runs the node's one :class:`periodic.Runner`, and the node's singletons (the embedded
    job worker), while this process holds the node's lock."""

    def __init__(self, app: Flask, lock_path: Path, takeover_s: float = PERIODIC_TAKEOVER_S):
        self.app = app
        self.lock_path = lock_path
        self.takeover_s = takeover_s
        self.runner: periodic.Runner | None = None
        self._fd = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stops: list[Callable[[], None]] = []

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="periodic-holder", daemon=True)
            self._thread.start()

    def _try_lock(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._try_lock():
                log.info("this process runs the node's periodic tasks")
                self.runner = periodic.Runner(self.app)
                self.runner.start()
                for start in periodic.singletons(self.app):
                    try:
                        self._stops.append(start(self.app))
                    except Exception:
                        log.exception("a node singleton did not start")
                return
            self._stop.wait(self.takeover_s)

    def stop(self) -> None:
        """Stop the runner (letting a running task finish) and hand the lock on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        while self._stops:
            self._stops.pop()()
        if self.runner is not None:
            self.runner.stop()
            self.runner = None
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock for another process
            self._fd = -1


def start_node_process(app: Flask) -> None:
    """What each server process does once its app exists: start its sandbox, join the race
    for the periodic runner."""
    # The app, its tables, schemas and routes are some 150,000 objects that live as long as
    # the process; a full collection walked them all (tens of milliseconds, in whichever
    # request allocated last). Frozen, before any thread of ours starts, they are left out of
    # every collection.
    gc.collect()
    gc.freeze()
    holder = PeriodicHolder(app, Path(app.instance_path) / "run" / "periodic.lock")
    app.extensions["periodic_holder"] = holder
    holder.start()
    pool = app.extensions.get("sandbox_pool")
    if pool is not None:
        # The zygote imports onnxruntime (about a second): start it now, in the background,
        # so that no caller's first evaluation waits for it.
        threading.Thread(
            target=_start_pool, args=(pool,), name="sandbox-start", daemon=True
        ).start()


def _start_pool(pool: Any) -> None:
    try:
        pool.get()
    except Exception:
        log.exception("the sandbox did not start; the first evaluation will try again")


def stop_node_process(app: Flask) -> None:
    """Release everything this process holds: runner, sandbox, database connections."""
    holder: PeriodicHolder | None = app.extensions.get("periodic_holder")
    if holder is not None:
        holder.stop()
    for name in ("sandbox_pool", "job_pool"):
        pool = app.extensions.get(name)
        if pool is not None:
            pool.close()
    database = app.extensions.get("db")
    if database is not None:
        database.engine.dispose()


def serve(
    app_factory: Callable[[], Flask],
    *,
    host: str,
    port: int,
    processes: int,
    threads: int,
    graceful_timeout_s: float,
    access_log: bool = False,
) -> None:
    """Run gunicorn until it is told to stop; returns after a clean shutdown."""
    from gunicorn.app.base import BaseApplication

    class NodeApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{host}:{port}",
                "workers": processes,
                "threads": threads,
                "worker_class": _node_worker_class(),
                "graceful_timeout": math.ceil(graceful_timeout_s),
                # The heartbeat: a worker silent for this long is killed and replaced.
                "timeout": max(30, math.ceil(graceful_timeout_s)),
                "keepalive": 5,
                "accesslog": "-" if access_log else None,
                "errorlog": "-",
                "loglevel": "warning",
                "post_worker_init": lambda worker: start_node_process(worker.wsgi),
                "worker_exit": lambda _server, worker: _worker_exit(worker),
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            app = app_factory()
            app.wsgi_app = _bounded_bodies(app.wsgi_app)  # type: ignore[method-assign]
            return app

    NodeApplication().run()


# The request line and headers must arrive within this once a request's thread takes its
# connection (gunicorn hands it over when its first bytes are there, then read the rest
# without a bound: a few connections sending a header byte now and then held every thread).
HEADERS_TIMEOUT_S = 10.0
# A request body must keep arriving: a client silent this long, or slower on average than the
# floor once the grace has passed, is cut off (400, connection closed). Without them a few
# connections sending a byte every few seconds held every request thread of a node.
BODY_IDLE_TIMEOUT_S = 30.0
BODY_RATE_GRACE_S = 10.0
BODY_RATE_MIN_BYTES_S = 8 * 1024


class _ConnectionSocket:
    """A connection's socket, read within the time bounds of what it is reading.

    gunicorn's parser and body readers ``recv`` from it many times per request, so this is
    where a stall or a trickle can be seen:

    - the request line and headers: all within :data:`HEADERS_TIMEOUT_S` of the first read;
    - the body: each ``recv`` within :data:`BODY_IDLE_TIMEOUT_S`, and after the grace at least
      :data:`BODY_RATE_MIN_BYTES_S` on average;
    - otherwise (writing a response, waiting in gunicorn's poller for the next request) the
      socket is gunicorn's as it left it.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._reading_headers = False
        self._headers_due: float | None = None
        self._body_since: float | None = None
        self._received = 0

    def expect_headers(self) -> None:
        self._reading_headers, self._headers_due = True, None
        self._body_since = None

    def pace_body(self) -> None:
        self._reading_headers = False
        self._body_since = time.monotonic()
        self._received = 0
        self._sock.settimeout(BODY_IDLE_TIMEOUT_S)

    def release(self) -> None:
        if self._reading_headers or self._body_since is not None:
            self._reading_headers, self._body_since = False, None
            self._sock.settimeout(None)

    def recv(self, size: int) -> bytes:
        if self._reading_headers:
            now = time.monotonic()
            if self._headers_due is None:
                # From the first read: gunicorn first waits (5 s at most) for the first bytes.
                self._headers_due = now + HEADERS_TIMEOUT_S
            left = self._headers_due - now
            if left > 0:
                self._sock.settimeout(left)
                with contextlib.suppress(TimeoutError):
                    data: bytes = self._sock.recv(size)
                    return data
            # Out of header mode: gunicorn's graceful close drains the socket through here.
            self._reading_headers = False
            log.info(
                "closed a connection whose request headers took over %.0f s", HEADERS_TIMEOUT_S
            )
            # As gunicorn reads a client gone mid-request: the connection is closed unanswered.
            raise self._gone(b"")
        data = self._sock.recv(size)
        if self._body_since is not None:
            self._received += len(data)
            elapsed = time.monotonic() - self._body_since
            if elapsed > BODY_RATE_GRACE_S and self._received < BODY_RATE_MIN_BYTES_S * elapsed:
                raise OSError(
                    f"request body arrives too slowly ({self._received} bytes in {elapsed:.0f} s)"
                )
        return data

    @staticmethod
    def _gone(buf: bytes) -> Exception:
        from gunicorn.http.errors import NoMoreData

        return NoMoreData(buf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _node_worker_class() -> type:
    """gunicorn's threaded worker, with each connection's socket read within time bounds."""
    from gunicorn.http import errors as http_errors
    from gunicorn.workers.gthread import ThreadWorker

    # What gunicorn refuses before the app sees a request, answered as the app answers errors
    # (problem+json with a stable code) instead of gunicorn's HTML page.
    refusals: list[tuple[type | tuple[type, ...], int, str, str]] = [
        (http_errors.LimitRequestLine, 414, "uri_too_long", "The request line is too long."),
        (
            http_errors.LimitRequestHeaders,
            431,
            "header_fields_too_large",
            "The request has too many headers, or one too large.",
        ),
        (
            (
                http_errors.InvalidRequestLine,
                http_errors.InvalidRequestMethod,
                http_errors.InvalidHTTPVersion,
                http_errors.InvalidHeader,
                http_errors.InvalidHeaderName,
                http_errors.ObsoleteFolding,
                http_errors.InvalidSchemeHeaders,
                http_errors.InvalidChunkSize,
                http_errors.ChunkMissingTerminator,
                http_errors.InvalidChunkExtension,
            ),
            400,
            "bad_request",
            "The request is not valid HTTP/1.1.",
        ),
    ]

    class NodeWorker(ThreadWorker):  # type: ignore[misc]
        def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
            refused = next((r for r in refusals if isinstance(exc, r[0])), None)
            response_fault = (
                http_errors.InvalidResponseHeader,
                http_errors.InvalidResponseHeaderName,
            )
            if refused is None or isinstance(exc, response_fault):
                super().handle_error(req, client, addr, exc)
                return
            _kinds, status, code, detail = refused
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
            body = json.dumps(problem_body(status, code, detail)).encode()
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
                f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                client.sendall(head.encode("latin-1") + body)

        def handle(self, conn: Any) -> Any:
            # Wrapped before gunicorn makes the connection's parser, which keeps the socket
            # for every request the connection carries.
            if not isinstance(conn.sock, _ConnectionSocket):
                conn.sock = _ConnectionSocket(conn.sock)
            while True:
                conn.sock.expect_headers()
                keepalive = super().handle(conn)
                if not (keepalive is True and self.alive and _next_request_soon(conn)):
                    return keepalive

    return NodeWorker


def _next_request_soon(conn: Any) -> bool:
    """Whether the kept-alive connection's next request starts within ``KEEPALIVE_LINGER_S``.

    A client calling again at once (a buyer's loop of evaluations) is served by the same
    thread. Handing the connection back to gunicorn's poller and then to a thread again costs
    two thread wake-ups and a pipe write per request (0.1–0.2 ms of the 0.8 ms the node added
    to a call); a connection that stays quiet goes back to the poller as before.
    """
    if conn.parser.unreader.buf.getvalue():
        return True
    # poll, not select: a busy process's descriptors may number past select's 1024.
    poller = select.poll()
    poller.register(conn.sock.fileno(), select.POLLIN)
    return bool(poller.poll(KEEPALIVE_LINGER_S * 1000))


class _GunicornBody:
    """gunicorn's request body, read within time bounds, whose errors read as a broken stream.

    A malformed chunked body (a chunk size of "zz", a missing CRLF, a bad trailer) raises
    gunicorn's ``ParseException`` from a read, which no reader expects: it was a 500 on every
    endpoint that reads a body. A body that stalls or trickles is cut off
    (:class:`_ConnectionSocket`). Either way the read raises ``OSError``, which Werkzeug's
    streams already turn into ``ClientDisconnected``, a 400, like a body cut short; gunicorn then
    closes the connection, since the rest of the body cannot be read to reach the next request.
    """

    def __init__(self, body: Any, sock: Any, parse_error: type[Exception]) -> None:
        self._body = body
        self._sock = sock if isinstance(sock, _ConnectionSocket) else None
        self._parse_error = parse_error
        self._paced = False
        self._broken = False

    @property
    def broken(self) -> bool:
        """Whether a read failed: the body was not read to its end."""
        return self._broken

    def disarm(self) -> None:
        """The headers are in, or the response begins: no time bounds until the body is read,
        none on writing the response, nor on waiting for the connection's next request."""
        if self._sock is not None:
            self._sock.release()

    def _read(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        if not self._paced and not self._broken and self._sock is not None:
            self._paced = True
            self._sock.pace_body()
        try:
            return read(size)
        except (self._parse_error, OSError) as exc:
            self._broken = True
            raise OSError(f"request body unreadable: {exc}") from None

    def read(self, size: int | None = None) -> bytes:
        return self._read(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._read(self._body.readline, size)

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _bounded_bodies(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    from gunicorn.http.errors import ParseException

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        body = _GunicornBody(environ["wsgi.input"], environ.get("gunicorn.socket"), ParseException)
        body.disarm()  # the request line and headers are in
        environ["wsgi.input"] = body

        def respond(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            body.disarm()
            if body.broken:
                # The rest of the body cannot be read to reach a next request: gunicorn closes
                # the connection, and its answer must say so rather than offer keep-alive (a
                # Connection header from the app is dropped as hop-by-hop).
                response = getattr(start_response, "__self__", None)
                if response is not None and hasattr(response, "force_close"):
                    response.force_close()
            return start_response(status, headers, *args)

        try:
            return wsgi_app(environ, respond)
        finally:
            body.disarm()  # also when the app answered without calling respond

    return app


def _worker_exit(worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        stop_node_process(app)


def serve_dev(app: Flask, *, host: str, port: int, debugger: bool) -> None:
    """Werkzeug's development server with the reloader (``jishi serve --dev``)."""
    from werkzeug.serving import is_running_from_reloader, run_simple

    if is_running_from_reloader():
        start_node_process(app)
    try:
        run_simple(
            host,
            port,
            app,
            threaded=True,
            use_reloader=True,
            use_debugger=debugger,
            reloader_type="stat",
        )
    finally:
        if is_running_from_reloader():
            stop_node_process(app)
