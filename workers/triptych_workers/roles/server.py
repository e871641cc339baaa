"""The process plumbing every role shares: HTTP servers inside one event loop, the probe/metrics app,
SIGTERM handling, and the worker runtime that serves a role's verbs over NATS.

Signals belong to the process, not to uvicorn: ``main`` installs SIGTERM/SIGINT handlers that set one stop
event, and each role then shuts down in order (not ready -> stop taking work -> drain in-flight work within
the drain deadline -> close connections -> exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from triptych_contract import LIVENESS_PATH, METRICS_PATH, READINESS_PATH

from triptych_workers.config import Settings
from triptych_workers.engines.base import Engine, EngineLoad, ReportsLoad
from triptych_workers.engines.errors import EngineError
from triptych_workers.engines.sampling import TokenFrame
from triptych_workers.errors import ClientError, TriptychError
from triptych_workers.metrics import WorkerMetrics
from triptych_workers.roles.common import CachedEncoder, Plane, error_chunk
from triptych_workers.roles.messages import FrameMessage
from triptych_workers.transport import (
    DataPlaneSettings,
    Handler,
    NatsConnection,
    NatsSettings,
    Request,
    Subjects,
    TransferPlane,
    TransportError,
    WorkerServer,
    WorkerSettings,
)

log = logging.getLogger(__name__)


class StartupError(TriptychError):
    """A process could not start (server did not bind, NATS unreachable within the startup deadline)."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the process's stop event drives shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """One ASGI app served by uvicorn as a task of the current event loop."""

    def __init__(self, app: FastAPI, host: str, port: int, *, graceful_timeout_s: float) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=max(1, round(graceful_timeout_s)),
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, timeout_s: float) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="http-server")
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if self._task.done():
                raise StartupError(f"HTTP server on port {self._server.config.port} exited while starting")
            if time.monotonic() > deadline:
                raise StartupError(f"HTTP server on port {self._server.config.port} did not start in time")
            await asyncio.sleep(0.02)

    @property
    def port(self) -> int:
        """The bound port (useful when the configured one was 0)."""
        sockets = [s for server in self._server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self._server.config.port

    def stop_accepting(self) -> None:
        self._server.should_exit = True

    async def stop(self, *, timeout_s: float) -> None:
        """Stop listening, let open requests finish (uvicorn's graceful timeout), then return."""
        self._server.should_exit = True
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task
        except SystemExit:  # uvicorn exits this way when the app's lifespan failed
            log.warning("HTTP server on port %s ended with a startup failure", self._server.config.port)


def probe_app(metrics: WorkerMetrics, ready: Callable[[], bool]) -> FastAPI:
    """``/livez``, ``/readyz`` and ``/metrics``, served on the metrics port of every role."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(LIVENESS_PATH)
    async def livez() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get(READINESS_PATH)
    async def readyz() -> PlainTextResponse:
        if ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    @app.get(METRICS_PATH)
    async def prometheus() -> Response:
        return Response(await metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return app


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (the first one; a second SIGINT is left to the default handler)."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def connect_nats(settings: Settings, *, name: str) -> NatsConnection:
    """Connect, retrying until the startup deadline (NATS may come up after the worker)."""
    conn = NatsConnection(NatsSettings(servers=(settings.config.nats.url,), name=name))
    deadline = time.monotonic() + settings.config.serving.startup_timeout_seconds
    while True:
        try:
            await conn.start()
        except TransportError as exc:
            if time.monotonic() > deadline:
                raise StartupError(str(exc)) from exc
            log.warning("%s; retrying", exc)
            await asyncio.sleep(0.5)
        else:
            return conn


def transfer_plane(settings: Settings, conn: NatsConnection, metrics: WorkerMetrics) -> TransferPlane:
    dp = settings.config.data_plane
    return TransferPlane.create(
        conn,
        Subjects(settings.config.namespace, settings.deployment),
        settings.worker_id,
        metrics.transport,
        DataPlaneSettings(
            nixl_enabled=dp.nixl,
            nixl_min_bytes=dp.nixl_min_bytes,
            lease_timeout_s=dp.lease_timeout_seconds,
            requested_transport=dp.requested_transport,
        ),
    )


# -- workers ---------------------------------------------------------------------------------------------


@dataclass
class WorkerContext:
    """What a role's verb handlers use."""

    settings: Settings
    engine: Engine
    plane: Plane
    metrics: WorkerMetrics
    encoder: CachedEncoder | None
    kv_tokens: int = field(default=0)

    @property
    def kv_capacity_tokens(self) -> int:
        """The most KV tokens this worker can hold: ``serving.concurrency`` requests at once (the request
        plane never runs more), each at most the model's context length. The denominator of the KV-cache
        utilization gauge, which therefore stays within 0..1."""
        return self.settings.config.serving.concurrency * self.engine.info.max_model_len

    @contextlib.contextmanager
    def holding_kv(self, tokens: int) -> Iterator[Callable[[int], None]]:
        """Counts this request's KV tokens into the KV-cache utilization gauge while it runs: ``tokens`` from
        the start, then whatever the yielded function is last called with; nothing once it is over."""
        held = 0

        def hold(now: int) -> None:
            nonlocal held
            self.kv_tokens += now - held
            held = now
            self.metrics.set_kv_utilization(self.kv_tokens / self.kv_capacity_tokens)

        try:
            hold(tokens)
            yield hold
        finally:
            hold(0)

    async def stream_frames(
        self, frames: AsyncIterator[TokenFrame], started: float, *, kv_base: int
    ) -> AsyncIterator[bytes]:
        """Frames as reply chunks, timing TTFT and inter-token latency and holding the request's KV: the
        prompt's ``kv_base`` tokens, plus, once a frame is out, every token before its last (the newest
        token's KV is written by the step that computes the next one). A frame's tokens arrived together,
        so the latency to the frame counts for its first token and none for the others, as a client sees
        them. The gauge and the latency histograms move together, between two awaits, so one scrape sees
        them agree."""
        count = 0
        last = started
        with self.holding_kv(kv_base) as hold_kv:
            try:
                async for frame in frames:
                    if frame.token_ids:
                        now = time.monotonic()
                        if count == 0:
                            self.metrics.observe_ttft(now - started)
                        else:
                            self.metrics.observe_itl(now - last)
                        last = now
                        hold_kv(kv_base + count + len(frame) - 1)
                        count += len(frame)
                    yield FrameMessage.of(frame).dumps()
            finally:
                close = getattr(frames, "aclose", None)
                if close is not None:
                    await close()


def instrumented(handler: Handler, metrics: WorkerMetrics) -> Handler:
    """Counts each request's outcome; a client error travels back as an error chunk (the frontend answers
    with its status), anything else as the transport's error reply."""

    async def run(request: Request) -> AsyncIterator[bytes]:
        try:
            async for chunk in handler(request):
                yield chunk
        except ClientError as exc:
            metrics.request_done("client_error")
            yield error_chunk(exc)
            return
        except asyncio.CancelledError:
            metrics.request_done("cancelled")
            raise
        except TimeoutError:
            metrics.request_done("timeout")
            raise
        except Exception:
            metrics.request_done("error")
            raise
        metrics.request_done("ok")

    return run


HandlerFactory = Callable[[WorkerContext], Mapping[str, Handler]]


class EngineLoadReader:
    """Reads an engine server's own load for the contract's metrics, at each scrape of the sidecar's
    ``/metrics`` (``WorkerMetrics.follow_engine``): no timer, so the engine renders its ``/metrics`` only as
    often as Prometheus or the autoscaler asks. A failed read gives ``None`` (the last figures stay) and is
    logged once until reads work again."""

    def __init__(self, engine: ReportsLoad) -> None:
        self._engine = engine
        self._failing = False

    async def __call__(self) -> EngineLoad | None:
        try:
            load = await self._engine.read_load()
        except EngineError as exc:
            if not self._failing:
                log.warning("cannot read the engine's load (keeping the last figures): %s", exc)
            self._failing = True
            return None
        self._failing = False
        return load


async def run_worker(
    settings: Settings, load_engine: Callable[[], Awaitable[Engine]], handlers: HandlerFactory
) -> None:
    """A worker role's whole life: probes up, engine loaded, NATS joined, verbs served until SIGTERM, then
    drained and closed in order."""
    config = settings.config
    metrics = WorkerMetrics(settings.metrics_role, settings.deployment)
    state: dict[str, object] = {}

    def ready() -> bool:
        conn = state.get("conn")
        return bool(state.get("serving")) and isinstance(conn, NatsConnection) and conn.is_connected

    stop = asyncio.Event()
    probes = HttpServer(
        probe_app(metrics, ready), settings.host, config.ports.metrics, graceful_timeout_s=1.0
    )
    with stop_on_signals(stop):
        await probes.start(timeout_s=config.serving.startup_timeout_seconds)
        engine = await load_engine()
        conn: NatsConnection | None = None
        plane: TransferPlane | None = None
        server: WorkerServer | None = None
        try:
            conn = await connect_nats(settings, name=settings.worker_id)
            state["conn"] = conn
            plane = transfer_plane(settings, conn, metrics)
            await plane.start()
            encoder = None
            if "encode" in settings.stages:
                encoder = CachedEncoder(engine, config.encoder_cache.capacity_bytes)
                metrics.watch_encoder_cache(encoder.stats)
            context = WorkerContext(settings, engine, plane, metrics, encoder)
            verbs = {verb: instrumented(h, metrics) for verb, h in handlers(context).items()}
            server = WorkerServer(
                conn,
                Subjects(config.namespace, settings.deployment),
                settings.nats_role,
                settings.worker_id,
                verbs,
                settings=WorkerSettings(
                    concurrency=config.serving.concurrency,
                    queue_capacity=config.serving.queue_capacity,
                    heartbeat_interval_s=config.serving.heartbeat_seconds,
                    drain_timeout_s=config.serving.drain_timeout_seconds,
                ),
                metrics=metrics.transport,
                cache_keys=encoder.keys if encoder is not None else None,
            )
            await server.start()
            if isinstance(engine, ReportsLoad):
                metrics.follow_engine(
                    EngineLoadReader(engine),
                    lambda: server.queue_depth if server is not None else 0,
                    lambda: server.in_flight if server is not None else 0,
                )
            state["serving"] = True
            log.info(
                "%s worker %s serving %s on NATS role %s",
                settings.role,
                settings.worker_id,
                ", ".join(verbs),
                settings.nats_role,
            )
            await stop.wait()
            log.info("stopping: draining in-flight work (up to %.0f s)", config.serving.drain_timeout_seconds)
        finally:
            state["serving"] = False
            if server is not None:
                await server.close()
            if plane is not None:
                await plane.close()
            if conn is not None:
                with contextlib.suppress(TransportError, TimeoutError):
                    await asyncio.wait_for(conn.close(), timeout=5)
            await engine.aclose()
            await probes.stop(timeout_s=5)
