"""Shared fixtures for the workers' integration tests: a real HTTP/1.1 server on loopback, and a tripwire
that makes any connection attempt to a non-loopback address fail loudly (and be recorded) instead of
leaving the machine."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import pytest

Handler = Callable[["RouteContext"], None]


@dataclass
class RouteContext:
    """What a route handler gets: the raw handler plus helpers that count what was really sent."""

    handler: BaseHTTPRequestHandler
    server: LoopbackHTTPServer

    @property
    def path(self) -> str:
        return self.handler.path

    def head(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.handler.send_response(status)
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.end_headers()

    def body(self, data: bytes, *, chunk: int = 65536, delay: float = 0.0) -> bool:
        """Write ``data`` in chunks; False (and the abort recorded) if the client hung up first."""
        key = self.handler.path
        try:
            for start in range(0, len(data), chunk):
                piece = data[start : start + chunk]
                self.handler.wfile.write(piece)
                self.handler.wfile.flush()
                with self.server.lock:
                    self.server.bytes_sent[key] += len(piece)
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            with self.server.lock:
                self.server.aborted[key] += 1
            self.handler.close_connection = True
            return False
        with self.server.lock:
            self.server.finished[key] += 1
        return True

    def send(self, status: int, data: bytes, content_type: str | None = "application/octet-stream") -> None:
        headers = {"Content-Length": str(len(data))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        self.head(status, headers)
        self.body(data)

    def redirect(self, location: str, status: int = 302) -> None:
        self.head(status, {"Location": location, "Content-Length": "0"})

    def stall(self) -> None:
        """Block this handler until the test ends (the server's ``release`` event), with a deadline."""
        self.server.release.wait(timeout=30)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackHTTPServer

    def do_GET(self) -> None:
        srv = self.server
        route = srv.routes.get(self.path.split("?", 1)[0])
        with srv.lock:
            srv.hits[self.path] += 1
            srv.host_headers.append(self.headers.get("Host", ""))
        if route is None:
            RouteContext(self, srv).send(404, b"not found", "text/plain")
            return
        route(RouteContext(self, srv))

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server on 127.0.0.1 with a free port, a deep accept queue (the default of 5
    collapses under concurrent clients) and counters of hits, connections and bytes actually sent."""

    request_queue_size = 256
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RequestHandler)
        self.routes: dict[str, Handler] = {}
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.aborted: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.host_headers: list[str] = []
        self.connections = 0
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route(self, path: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.routes[path] = fn
            return fn

        return register

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.01)
        return False


def _wait_ready(port: int, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def http_server() -> Iterator[LoopbackHTTPServer]:
    server = LoopbackHTTPServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        _wait_ready(server.port)
        # The readiness probe is not a client: wait until the server has counted it, then forget it.
        assert server.wait_for(lambda: server.connections >= 1)
        with server.lock:
            server.connections = 0
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class DialLog:
    """Every address the code under test dialled; ``refused`` are those the tripwire blocked."""

    dialled: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> DialLog:
    """No test in this package may open a connection outside 127.0.0.0/8 and ::1, whatever the code does."""
    log = DialLog()
    original = httpcore.AnyIOBackend.connect_tcp

    async def guarded_connect(self: httpcore.AnyIOBackend, host: str, port: int, **kwargs: Any) -> Any:
        log.dialled.append(host)
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback:
                return await original(self, host, port, **kwargs)
        log.refused.append(host)
        raise httpcore.ConnectError(f"test tripwire: refused to dial non-loopback {host!r}")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", guarded_connect)
    return log


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    """A resolver for ``FetchPolicy``/``MediaConnector``: names from ``table``, anything else unknown."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        from triptych_workers.media.errors import MediaFetchError

        if host not in table:
            raise MediaFetchError(f"cannot resolve {host!r}")
        return table[host]

    return resolve


# --- A real nats-server on loopback (transport tests) -------------------------------------------------------

NATS_SERVER_BINARY = "/usr/sbin/nats-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServerProcess:
    """``nats-server`` on 127.0.0.1 at a free port; ``restart()`` keeps the port so clients can reconnect."""

    def __init__(self, binary: str = NATS_SERVER_BINARY) -> None:
        self.binary = binary
        self.port = _free_port()
        self.process: Any = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 10.0) -> None:
        import subprocess

        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + deadline_s
        while True:  # ready when it greets a client with its INFO line
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.settimeout(1)
                    if conn.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"nats-server not ready on port {self.port} within {deadline_s} s")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except Exception:
                process.kill()
                process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server() -> Iterator[NatsServerProcess]:
    import os

    if not os.path.exists(NATS_SERVER_BINARY):
        pytest.skip(f"{NATS_SERVER_BINARY} is not installed")
    server = NatsServerProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll ``predicate`` on the event loop until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
