"""The frontend's app and process: ``create_app`` assembles the endpoints behind one error handler, with
the media connector and the decode pool in its lifespan; ``run_frontend`` is the process around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from triptych_workers.config import Settings, WorkerConfig
from triptych_workers.engines.base import Prompter
from triptych_workers.engines.registry import lookup_backend
from triptych_workers.errors import ClientError
from triptych_workers.media.connector import MediaConnector
from triptych_workers.metrics import WorkerMetrics
from triptych_workers.roles.frontend.errors import DeadlineExceeded, Overloaded, error_body
from triptych_workers.roles.frontend.media import MediaLoader
from triptych_workers.roles.frontend.router import api_router
from triptych_workers.roles.frontend.serving import Admission, ServingContext
from triptych_workers.roles.frontend.serving_chat import OpenAIServingChat
from triptych_workers.roles.frontend.serving_completion import OpenAIServingCompletion
from triptych_workers.roles.pipeline import NatsPipeline, Pipeline, PoolUnavailable
from triptych_workers.roles.routing import encode_router
from triptych_workers.roles.server import (
    HttpServer,
    connect_nats,
    probe_app,
    stop_on_signals,
    transfer_plane,
)
from triptych_workers.transport import LoadBoard, RequestClient, Subjects, TransportError

log = logging.getLogger(__name__)


def create_app(
    config: WorkerConfig,
    *,
    pipeline: Pipeline,
    prompter: Prompter,
    metrics: WorkerMetrics,
) -> FastAPI:
    """The OpenAI-compatible app. The media connector and the decode thread pool live in its lifespan."""
    loader: list[MediaLoader] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with ThreadPoolExecutor(
            max_workers=config.serving.media_decode_threads, thread_name_prefix="media-decode"
        ) as executor:
            async with MediaConnector(config.media) as connector:
                decode_images = config.serving.decode_images_on == "frontend"
                loader.append(MediaLoader(connector, executor, frozenset(config.modalities), decode_images))
                try:
                    yield
                finally:
                    loader.clear()

    def current_loader() -> MediaLoader:
        if not loader:
            raise RuntimeError("the app's lifespan has not started")
        return loader[0]

    context = ServingContext(
        config=config,
        pipeline=pipeline,
        prompter=prompter,
        metrics=metrics,
        admission=Admission(config.serving.max_concurrent_requests, metrics),
        loader=current_loader,
    )
    app = FastAPI(title="triptych", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    async def openai_error(_: Request, exc: Exception) -> Response:
        status, body, _outcome = error_body(exc)
        return JSONResponse(body.model_dump(mode="json"), status_code=status)

    # One handler: registered for Exception (anything unknown -> 500) and, so that expected errors do not
    # travel through Starlette's server-error middleware, for the roots of our own trees.
    for exc_type in (
        Exception,
        ClientError,
        TransportError,
        Overloaded,
        DeadlineExceeded,
        TimeoutError,
        PoolUnavailable,
    ):
        app.add_exception_handler(exc_type, openai_error)

    app.include_router(
        api_router(config.model.name, OpenAIServingChat(context), OpenAIServingCompletion(context))
    )
    return app


async def run_frontend(settings: Settings) -> None:
    """The frontend process: API on the HTTP port, probes and metrics on the metrics port, the pipeline over
    NATS; on SIGTERM it stops being ready, stops accepting, lets open requests finish, then closes."""
    config = settings.config
    metrics = WorkerMetrics(settings.metrics_role, settings.deployment)
    subjects = Subjects(config.namespace, settings.deployment)
    state: dict[str, bool] = {"ready": False}
    stop = asyncio.Event()
    probes = HttpServer(
        probe_app(metrics, lambda: state["ready"] and conn.is_connected),
        settings.host,
        config.ports.metrics,
        graceful_timeout_s=1.0,
    )
    with stop_on_signals(stop):
        await probes.start(timeout_s=config.serving.startup_timeout_seconds)
        prompter = lookup_backend(config.backend).load_prompter(config)
        conn = await connect_nats(settings, name=settings.worker_id)
        plane = transfer_plane(settings, conn, metrics)
        board = LoadBoard(conn, subjects, "encode", max_age_s=3 * config.serving.heartbeat_seconds)
        api: HttpServer | None = None
        try:
            await plane.start()
            await board.start()
            pipeline = NatsPipeline(
                RequestClient(conn, subjects),
                plane,
                config.mode,
                encode_workers=board.workers,
                connected=lambda: conn.is_connected,
                route=encode_router(config.serving.encode_routing),
                # An image request that finds the encode pool at zero replicas waits for it here, counted
                # in the gauge the autoscaler wakes the pool on. Readiness stays independent of encode:
                # text-only traffic must keep flowing while encode is at zero.
                pending=metrics.pending,
                cold_start_timeout_s=config.serving.cold_start_timeout_seconds,
            )
            app = create_app(config, pipeline=pipeline, prompter=prompter, metrics=metrics)
            api = HttpServer(
                app, settings.host, config.ports.http, graceful_timeout_s=config.serving.drain_timeout_seconds
            )
            await api.start(timeout_s=config.serving.startup_timeout_seconds)
            state["ready"] = True
            log.info("frontend %s serving %s in mode %s", settings.worker_id, config.model.name, config.mode)
            await stop.wait()
        finally:
            state["ready"] = False
            if api is not None:
                await api.stop(timeout_s=config.serving.drain_timeout_seconds + 5)
            await board.close()
            await plane.close()
            with contextlib.suppress(TransportError, TimeoutError):
                await asyncio.wait_for(conn.close(), timeout=5)
            await probes.stop(timeout_s=5)
