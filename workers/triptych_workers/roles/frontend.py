"""The frontend role: the OpenAI-compatible server (torch-free).

A request's path: parse (``protocol``) -> fetch every media part (``MediaConnector``, one per app lifespan)
and decode it off the event loop (a thread pool owned by the lifespan) -> hash it (BLAKE3 over the original
bytes, or the client's uuid) -> render the prompt (the backend's torch-free prompter) -> ``Pipeline.generate``
-> chunks (SSE) or one response.

Deadlines: every request gets ``serving.requestTimeoutSeconds`` from arrival; media fetching and each wait
for a token are bounded by it. Disconnects: a watcher on the ASGI ``receive`` channel cancels the request's
task when the client goes away, which closes the pipeline's iterator, which stops the work downstream.
Errors: one handler maps every exception to an OpenAI error body -- a ``ClientError`` to its own status,
timeouts to 504, an unavailable pool to 503, anything else to a 500 that reveals nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from triptych_workers.config import Settings, WorkerConfig
from triptych_workers.engines.base import (
    DecodeStep,
    FinishReason,
    MediaItem,
    RenderedPrompt,
    SamplingParams,
    UnsupportedModalityError,
)
from triptych_workers.engines.reference.prompt import ReferencePrompter
from triptych_workers.errors import ClientError
from triptych_workers.hashing import hash_media
from triptych_workers.media.audio import AudioOptions, decode_audio_async
from triptych_workers.media.connector import MediaConnector
from triptych_workers.media.image import decode_image_async
from triptych_workers.media.video import decode_video_async
from triptych_workers.metrics import Outcome, WorkerMetrics
from triptych_workers.protocol import (
    SSE_DONE,
    AssistantResponseMessage,
    AudioURLPart,
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    ImageURLPart,
    InputAudioPart,
    MediaPart,
    ModelCard,
    ModelList,
    SamplingRequest,
    Usage,
    VideoURLPart,
    parse_request,
)
from triptych_workers.roles.common import Prompter, gather_or_cancel
from triptych_workers.roles.pipeline import NatsPipeline, Pipeline
from triptych_workers.roles.routing import encode_router
from triptych_workers.roles.server import (
    HttpServer,
    connect_nats,
    probe_app,
    stop_on_signals,
    transfer_plane,
)
from triptych_workers.transport import (
    DeadlineExpired,
    LoadBoard,
    NoResponders,
    RequestCancelled,
    RequestClient,
    RequestTimeout,
    Subjects,
    TransportError,
    WorkerBusy,
    WorkerLost,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
# How long the frontend waits, after a request's last step, for the end of its reply stream.
END_GRACE_S = 1.0
AUDIO_SAMPLE_RATE = 16_000

T = TypeVar("T")


class ModelNotFound(ClientError):
    status = 404
    code = "model_not_found"


class Unsupported(ClientError):
    code = "unsupported_parameter"


class Overloaded(Exception):
    """The frontend is at its concurrent-request limit (503)."""


class DeadlineExceeded(Exception):
    """The request ran past its deadline (504)."""


# -- errors ----------------------------------------------------------------------------------------------


def error_body(exc: BaseException) -> tuple[int, ErrorResponse, Outcome]:
    """The one mapping from an exception to (HTTP status, OpenAI error body, outcome label)."""
    if isinstance(exc, ClientError):
        # The log says why, beside the client's 4xx (e.g. a media URL the deployment's media policy refuses).
        log.info("request refused (%d %s): %s", exc.status, exc.code, exc)
        return exc.status, ErrorResponse.from_exception(exc), "client_error"
    if isinstance(exc, DeadlineExceeded | RequestTimeout | DeadlineExpired | TimeoutError):
        info = ErrorInfo(
            message="the request did not finish within its deadline", type="timeout", code="timeout"
        )
        return 504, ErrorResponse(error=info), "timeout"
    if isinstance(exc, WorkerLost | RequestCancelled):
        # Not the client's cancellation (a client that left gets no answer at all): the worker holding the
        # request was shut down past its drain deadline, died or froze. Another worker can serve a retry.
        info = ErrorInfo(
            message="the worker serving this request stopped before it finished (shut down or lost); retry",
            type="service_unavailable",
            code="worker_lost",
        )
        return 503, ErrorResponse(error=info), "busy"
    if isinstance(exc, Overloaded | WorkerBusy | NoResponders):
        info = ErrorInfo(
            message="the service is overloaded or has no worker for this request; retry later",
            type="service_unavailable",
            code="service_unavailable",
        )
        return 503, ErrorResponse(error=info), "busy"
    if isinstance(exc, TransportError):
        log.warning("request failed in the pipeline: %s: %s", type(exc).__name__, exc)
    else:
        log.error("request failed", exc_info=exc)
    return 500, ErrorResponse.internal(), "error"


def error_sse(body: ErrorResponse) -> str:
    return f"data: {body.model_dump_json()}\n\n"


# -- media -----------------------------------------------------------------------------------------------

Modality = Literal["image", "video", "audio"]


def _part_source(part: MediaPart) -> tuple[Modality, str]:
    if isinstance(part, ImageURLPart):
        return "image", part.image_url.url
    if isinstance(part, VideoURLPart):
        return "video", part.video_url.url
    if isinstance(part, AudioURLPart):
        return "audio", part.audio_url.url
    assert isinstance(part, InputAudioPart)
    return "audio", part.input_audio.to_data_url()


@dataclass
class MediaLoader:
    """Fetch (connector) -> hash -> decode (thread pool); both owned by the app's lifespan."""

    connector: MediaConnector
    executor: ThreadPoolExecutor
    modalities: frozenset[str]

    async def load(self, parts: Sequence[MediaPart]) -> list[MediaItem]:
        return await gather_or_cancel([self._load_one(p, f"media[{i}]") for i, p in enumerate(parts)])

    async def _load_one(self, part: MediaPart, where: str) -> MediaItem:
        modality, url = _part_source(part)
        if modality not in self.modalities:
            raise UnsupportedModalityError(f"this deployment does not serve {modality} input", param=where)
        fetched = await self.connector.fetch(url, modality=modality)
        media_hash = hash_media(fetched.data, uuid=part.uuid).hex
        if modality == "image":
            image = await decode_image_async(fetched.data, executor=self.executor)
            return MediaItem("image", media_hash, np.asarray(image, dtype=np.uint8))
        if modality == "video":
            video = await decode_video_async(fetched.data, executor=self.executor)
            return MediaItem("video", media_hash, video.frames)
        audio = await decode_audio_async(
            fetched.data, AudioOptions(sample_rate=AUDIO_SAMPLE_RATE), executor=self.executor
        )
        return MediaItem("audio", media_hash, audio.samples, audio.sample_rate)


# -- the app ---------------------------------------------------------------------------------------------


def sampling_from(body: SamplingRequest, max_tokens: int | None) -> SamplingParams:
    if body.n != 1:
        raise Unsupported("only n=1 is supported", param="n")
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=tuple(body.stop_sequences),
        ignore_eos=body.ignore_eos,
    )


async def next_before(steps: AsyncIterator[DecodeStep], deadline: float) -> DecodeStep | None:
    """The next step, ``None`` at the end, ``DeadlineExceeded`` past ``deadline`` (monotonic)."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await anext(steps, None)
    except TimeoutError as exc:
        raise DeadlineExceeded from exc


async def _aclose(steps: AsyncIterator[DecodeStep]) -> None:
    close = getattr(steps, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """``work``'s result, or ``asyncio.CancelledError`` if the client disconnects first (work cancelled)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


class _Stream(StreamingResponse):
    """SSE that watches for the client's disconnect whatever the ASGI spec version, and always runs
    ``cleanup`` (even when the body never started)."""

    def __init__(self, content: AsyncIterator[str], cleanup: Callable[[], Awaitable[None]]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))
        except (asyncio.CancelledError, OSError):
            log.info("client disconnected from a stream")
        finally:
            await self._cleanup()


class Frontend:
    """The request handling behind the routes (kept off FastAPI so the flow reads top to bottom)."""

    def __init__(
        self,
        config: WorkerConfig,
        pipeline: Pipeline,
        prompter: Prompter,
        metrics: WorkerMetrics,
        loader: Callable[[], MediaLoader],
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.prompter = prompter
        self.metrics = metrics
        self._loader = loader
        self.model_name = config.model.name
        self.in_flight = 0

    # admission ------------------------------------------------------------------------------------------
    def _admit(self) -> None:
        if self.in_flight >= self.config.serving.max_concurrent_requests:
            raise Overloaded
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def _release(self, outcome: Outcome) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
        self.metrics.request_done(outcome)

    # preparation ----------------------------------------------------------------------------------------
    async def _prepare(
        self, body: SamplingRequest, deadline: float
    ) -> tuple[RenderedPrompt, list[MediaItem]]:
        if body.model != self.model_name:
            raise ModelNotFound(
                f"model {body.model!r} is not served here (try {self.model_name!r})", param="model"
            )
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            if isinstance(body, ChatCompletionRequest):
                if body.logprobs or body.tools:
                    raise Unsupported(
                        "logprobs and tools are not supported", param="logprobs" if body.logprobs else "tools"
                    )
                media = await self._loader().load(body.media_parts())
                messages = [m.model_dump(mode="json", exclude_none=True) for m in body.messages]
                return self.prompter.render_chat(messages, media, add_generation_prompt=True), media
            assert isinstance(body, CompletionRequest)
            if body.logprobs or body.echo or body.suffix or (body.best_of or 1) > 1:
                raise Unsupported("logprobs, echo, suffix and best_of are not supported", param="prompt")
            prompt = body.prompt
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
                prompt = prompt[0]
            if isinstance(prompt, str):
                return self.prompter.render_text(prompt), []
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                return RenderedPrompt(tuple(int(t) for t in prompt)), []  # type: ignore[arg-type]
            raise Unsupported("only one prompt per request is supported", param="prompt")

    async def run(self, request: Request, body: SamplingRequest, max_tokens: int | None) -> Response:
        arrived = time.monotonic()
        deadline = arrived + self.config.serving.request_timeout_seconds
        self._admit()
        steps: AsyncIterator[DecodeStep] | None = None
        try:
            prompt, media = await until_disconnect(request.receive, self._prepare(body, deadline))
            sampling = sampling_from(body, max_tokens)
            steps = self.pipeline.generate(prompt, media, sampling, deadline=deadline)
            first = await until_disconnect(request.receive, next_before(steps, deadline))
        except BaseException as exc:
            if steps is not None:
                await _aclose(steps)
            self._release("cancelled" if isinstance(exc, asyncio.CancelledError) else error_body(exc)[2])
            raise
        if first is not None:
            self.metrics.observe_ttft(time.monotonic() - arrived)
        request_id = ("chatcmpl-" if isinstance(body, ChatCompletionRequest) else "cmpl-") + uuid.uuid4().hex
        if body.stream:
            return self._stream(
                body=body,
                request_id=request_id,
                prompt=prompt,
                first=first,
                steps=steps,
                deadline=deadline,
            )
        return await self._collect(
            request=request,
            body=body,
            request_id=request_id,
            prompt=prompt,
            first=first,
            steps=steps,
            deadline=deadline,
        )

    async def _rest(
        self, first: DecodeStep | None, steps: AsyncIterator[DecodeStep], deadline: float
    ) -> AsyncIterator[DecodeStep]:
        step, last = first, time.monotonic()
        while step is not None:
            yield step
            if step.finish_reason is not None:
                # Read on to the end of the reply stream (the worker's end marker follows the last step at
                # once): leaving before it cancels, on the worker, a request that has in fact succeeded, and
                # the worker would count it as cancelled.
                with contextlib.suppress(DeadlineExceeded):
                    await next_before(steps, min(deadline, time.monotonic() + END_GRACE_S))
                return
            step = await next_before(steps, deadline)
            now = time.monotonic()
            if step is not None:
                self.metrics.observe_itl(now - last)
            last = now

    async def _collect(
        self,
        *,
        request: Request,
        body: SamplingRequest,
        request_id: str,
        prompt: RenderedPrompt,
        first: DecodeStep | None,
        steps: AsyncIterator[DecodeStep],
        deadline: float,
    ) -> Response:
        outcome: Outcome = "error"

        async def collect() -> tuple[str, list[int], FinishReason | None]:
            text, token_ids, finish = [], [], None
            async for step in self._rest(first, steps, deadline):
                text.append(step.text)
                token_ids.append(step.token_id)
                finish = step.finish_reason
            return "".join(text), token_ids, finish

        try:
            text, token_ids, finish = await until_disconnect(request.receive, collect())
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except BaseException as exc:
            outcome = error_body(exc)[2]
            raise
        finally:
            await _aclose(steps)
            self._release(outcome)
        usage = Usage.of(len(prompt), len(token_ids))
        ids = body.return_token_ids
        prompt_ids = list(prompt.token_ids) if ids else None
        if isinstance(body, ChatCompletionRequest):
            chat = ChatCompletionResponse(
                id=request_id,
                model=self.model_name,
                choices=[
                    ChatCompletionChoice(
                        index=0,
                        message=AssistantResponseMessage(content=text),
                        finish_reason=finish,
                        token_ids=token_ids if ids else None,
                    )
                ],
                usage=usage,
                prompt_token_ids=prompt_ids,
            )
            return JSONResponse(chat.model_dump(mode="json"))
        completion = CompletionResponse(
            id=request_id,
            model=self.model_name,
            choices=[
                CompletionChoice(
                    index=0, text=text, finish_reason=finish, token_ids=token_ids if ids else None
                )
            ],
            usage=usage,
            prompt_token_ids=prompt_ids,
        )
        return JSONResponse(completion.model_dump(mode="json"))

    def _stream(
        self,
        *,
        body: SamplingRequest,
        request_id: str,
        prompt: RenderedPrompt,
        first: DecodeStep | None,
        steps: AsyncIterator[DecodeStep],
        deadline: float,
    ) -> Response:
        chat = isinstance(body, ChatCompletionRequest)
        outcome: list[Outcome] = ["cancelled"]
        # return_token_ids: the prompt's ids ride in the first chunk, each token's id in the chunk that
        # carries its text (a token with no text of its own waits for the next chunk that goes out).
        prompt_ids = list(prompt.token_ids) if body.return_token_ids else None

        def chunk(
            text: str | None, finish: FinishReason | None, token_ids: list[int] | None, *, role: bool = False
        ) -> str:
            nonlocal prompt_ids
            first_ids, prompt_ids = prompt_ids, None
            if chat:
                delta = ChatDelta(role="assistant" if role else None, content=text)
                choice = ChatChunkChoice(index=0, delta=delta, finish_reason=finish, token_ids=token_ids)
                return ChatCompletionChunk(
                    id=request_id, model=self.model_name, choices=[choice], prompt_token_ids=first_ids
                ).to_sse()
            part = CompletionChoice(index=0, text=text or "", finish_reason=finish, token_ids=token_ids)
            return CompletionResponse(
                id=request_id, model=self.model_name, choices=[part], prompt_token_ids=first_ids
            ).to_sse()

        async def events() -> AsyncIterator[str]:
            count = 0
            pending: list[int] = []
            if chat:
                yield chunk("", None, [] if body.return_token_ids else None, role=True)
            try:
                async for step in self._rest(first, steps, deadline):
                    count += 1
                    pending.append(step.token_id)
                    if step.text or step.finish_reason:
                        yield chunk(step.text, step.finish_reason, pending if body.return_token_ids else None)
                        pending = []
                if pending and body.return_token_ids:  # the stream ended on tokens without text
                    yield chunk("", None, pending)
            except Exception as exc:  # headers are gone: the error travels as an event
                _, err, outcome[0] = error_body(exc)
                yield error_sse(err)
                yield SSE_DONE
                return
            if body.include_usage_in_stream:
                usage = Usage.of(len(prompt), count)
                if chat:
                    yield ChatCompletionChunk(
                        id=request_id, model=self.model_name, choices=[], usage=usage
                    ).to_sse()
                else:
                    yield CompletionResponse(
                        id=request_id, model=self.model_name, choices=[], usage=usage
                    ).to_sse()
            outcome[0] = "ok"
            yield SSE_DONE

        async def cleanup() -> None:
            await _aclose(steps)
            self._release(outcome[0])

        return _Stream(events(), cleanup)


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
                loader.append(MediaLoader(connector, executor, frozenset(config.modalities)))
                try:
                    yield
                finally:
                    loader.clear()

    def current_loader() -> MediaLoader:
        if not loader:
            raise RuntimeError("the app's lifespan has not started")
        return loader[0]

    frontend = Frontend(config, pipeline, prompter, metrics, current_loader)
    app = FastAPI(title="triptych", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.frontend = frontend

    async def openai_error(_: Request, exc: Exception) -> Response:
        status, body, _outcome = error_body(exc)
        return JSONResponse(body.model_dump(mode="json"), status_code=status)

    # One handler: registered for Exception (anything unknown -> 500) and, so that expected errors do not
    # travel through Starlette's server-error middleware, for the roots of our own trees.
    for exc_type in (Exception, ClientError, TransportError, Overloaded, DeadlineExceeded, TimeoutError):
        app.add_exception_handler(exc_type, openai_error)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(ModelList(data=[ModelCard(id=frontend.model_name)]).model_dump(mode="json"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse_request(ChatCompletionRequest, await request.body())
        return await frontend.run(request, body, body.max_output_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_request(CompletionRequest, await request.body())
        return await frontend.run(request, body, body.max_tokens)

    return app


# -- the process -----------------------------------------------------------------------------------------


def load_prompter(config: WorkerConfig) -> Prompter:
    if config.backend != "reference":
        raise NotImplementedError(f"the frontend's prompt renderer for backend {config.backend} comes next")
    return ReferencePrompter(Path(config.model.path))


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
        prompter = load_prompter(config)
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
