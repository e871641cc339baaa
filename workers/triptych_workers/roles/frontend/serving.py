"""What every OpenAI endpoint does with a request, whatever its shape: the base of the serving classes.

``OpenAIServing.run`` admits the request, has the endpoint prepare it (validate, load media, render the
prompt), starts ``Pipeline.generate``, waits for the first token, then answers with one response or a
stream of chunks. What differs between endpoints (preparation, ids, the response and chunk objects) is the
subclass's (``serving_chat``, ``serving_completion``); nothing here looks at a request's type.

Deadlines: every request gets ``serving.requestTimeoutSeconds`` from arrival; media fetching and each wait
for a token are bounded by it. Disconnects: a watcher on the ASGI ``receive`` channel cancels the request's
task when the client goes away, which closes the pipeline's iterator, which stops the work downstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from triptych_workers.config import WorkerConfig
from triptych_workers.engines.base import Prompter
from triptych_workers.engines.media import MediaItem, RenderedPrompt
from triptych_workers.engines.sampling import FinishReason, SamplingParams, TokenFrame
from triptych_workers.metrics import Outcome, WorkerMetrics
from triptych_workers.protocol import (
    SSE_DONE,
    InvalidRequestError,
    ResponseModel,
    SamplingRequest,
    Usage,
)
from triptych_workers.roles.frontend.errors import (
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    Unsupported,
    error_body,
    error_sse,
)
from triptych_workers.roles.frontend.media import MediaLoader
from triptych_workers.roles.pipeline import Pipeline

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
# How long the frontend waits, after a request's last step, for the end of its reply stream.
END_GRACE_S = 1.0

T = TypeVar("T")
RequestT = TypeVar("RequestT", bound=SamplingRequest)


def sampling_from(body: SamplingRequest, max_tokens: int | None) -> SamplingParams:
    """The request's sampling fields as the engines take them (every one the protocol accepts but ``n``,
    which is refused unless 1); ``SamplingParams`` checks their ranges again."""
    if body.n != 1:
        raise Unsupported("only n=1 is supported", param="n")
    return SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=tuple(body.stop_sequences),
        ignore_eos=body.ignore_eos,
        top_k=-1 if body.top_k is None else body.top_k,
        min_p=0.0 if body.min_p is None else body.min_p,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=0.0 if body.presence_penalty is None else body.presence_penalty,
        frequency_penalty=0.0 if body.frequency_penalty is None else body.frequency_penalty,
        logit_bias=tuple(_token_biases(body.logit_bias or {})),
    )


def _token_biases(logit_bias: Mapping[str, float]) -> Iterator[tuple[int, float]]:
    """OpenAI's ``logit_bias`` keys are token ids written as strings."""
    for key, bias in logit_bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids, not {key[:40]!r}", param="logit_bias"
            ) from None
        yield token_id, bias


async def next_before(frames: AsyncIterator[TokenFrame], deadline: float) -> TokenFrame | None:
    """The next frame, ``None`` at the end, ``DeadlineExceeded`` past ``deadline`` (monotonic)."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await anext(frames, None)
    except TimeoutError as exc:
        raise DeadlineExceeded from exc


async def _aclose(frames: AsyncIterator[TokenFrame]) -> None:
    close = getattr(frames, "aclose", None)
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


class Admission:
    """The frontend's limit on concurrent requests, one per app: every endpoint admits through it."""

    def __init__(self, limit: int, metrics: WorkerMetrics) -> None:
        self._limit = limit
        self._metrics = metrics
        self._in_flight = 0

    def admit(self) -> None:
        if self._in_flight >= self._limit:
            raise Overloaded
        self._in_flight += 1
        self._metrics.in_flight.set(self._in_flight)

    def release(self, outcome: Outcome) -> None:
        """Called once per admitted request, when it is done; ``outcome`` is what it is counted as."""
        self._in_flight -= 1
        self._metrics.in_flight.set(self._in_flight)
        self._metrics.request_done(outcome)


@dataclass(frozen=True)
class ServingContext:
    """What the endpoints share, built once per app by ``create_app``."""

    config: WorkerConfig
    pipeline: Pipeline
    prompter: Prompter
    metrics: WorkerMetrics
    admission: Admission
    loader: Callable[[], MediaLoader]
    """The media loader of the running lifespan (which owns its connector and decode pool)."""


@dataclass(frozen=True, slots=True)
class Output:
    """Generated text, as one event or the whole answer carries it. ``token_ids`` and ``prompt_ids`` are
    ``None`` unless the client asked for ids (``return_token_ids``); ``prompt_ids`` ride in a stream's first
    event only."""

    text: str
    finish: FinishReason | None
    token_ids: list[int] | None
    prompt_ids: list[int] | None


@dataclass(frozen=True)
class _Started(Generic[RequestT]):
    """A request whose generation has begun (its first frame already read): what answering it needs."""

    body: RequestT
    request_id: str
    prompt: RenderedPrompt
    first: TokenFrame | None
    frames: AsyncIterator[TokenFrame]
    deadline: float


class OpenAIServing(ABC, Generic[RequestT]):
    """One endpoint's request handling (kept off FastAPI so the flow reads top to bottom)."""

    id_prefix: ClassVar[str]
    """Starts the id of every response and chunk (``chatcmpl-``, ``cmpl-``)."""

    def __init__(self, context: ServingContext) -> None:
        self.context = context
        self.model_name = context.config.model.name

    # -- what each endpoint says ------------------------------------------------------------------------
    @abstractmethod
    async def render(self, body: RequestT) -> tuple[RenderedPrompt, list[MediaItem]]:
        """Refuses what the endpoint does not support, loads the media and renders the prompt."""

    @abstractmethod
    def max_tokens(self, body: RequestT) -> int | None:
        """The request's token budget as the endpoint names it (``None``: the server's default)."""

    @abstractmethod
    def response(self, request_id: str, output: Output, usage: Usage) -> ResponseModel:
        """The whole answer of a request that did not ask to stream."""

    def opening_chunk(self, request_id: str, output: Output) -> str | None:
        """An event that opens the stream before any token (``output`` holds no text), if the endpoint sends
        one; by default none."""
        return None

    @abstractmethod
    def chunk(self, request_id: str, output: Output) -> str:
        """The event that carries new text."""

    @abstractmethod
    def usage_chunk(self, request_id: str, usage: Usage) -> str:
        """The stream's last event before ``[DONE]`` when the client asked for usage."""

    # -- the flow -------------------------------------------------------------------------------------------
    async def run(self, request: Request, body: RequestT) -> Response:
        arrived = time.monotonic()
        deadline = arrived + self.context.config.serving.request_timeout_seconds
        admission = self.context.admission
        admission.admit()
        frames: AsyncIterator[TokenFrame] | None = None
        try:
            sampling = sampling_from(body, self.max_tokens(body))  # refused before any media is fetched
            prompt, media = await until_disconnect(request.receive, self._prepare(body, deadline))
            frames = self.context.pipeline.generate(prompt, media, sampling, deadline=deadline)
            first = await until_disconnect(request.receive, next_before(frames, deadline))
        except BaseException as exc:
            if frames is not None:
                await _aclose(frames)
            admission.release("cancelled" if isinstance(exc, asyncio.CancelledError) else error_body(exc)[2])
            raise
        if first is not None:
            self.context.metrics.observe_ttft(time.monotonic() - arrived)
        started = _Started(body, self.id_prefix + uuid.uuid4().hex, prompt, first, frames, deadline)
        if body.stream:
            return self._stream(started)
        return await self._collect(request, started)

    async def _prepare(self, body: RequestT, deadline: float) -> tuple[RenderedPrompt, list[MediaItem]]:
        if body.model != self.model_name:
            raise ModelNotFound(
                f"model {body.model!r} is not served here (try {self.model_name!r})", param="model"
            )
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await self.render(body)

    async def _rest(self, started: _Started[RequestT]) -> AsyncIterator[TokenFrame]:
        frames, deadline = started.frames, started.deadline
        frame, last = started.first, time.monotonic()
        while frame is not None:
            yield frame
            if frame.finish_reason is not None:
                # Read on to the end of the reply stream (the worker's end marker follows the last step at
                # once): leaving before it cancels, on the worker, a request that has in fact succeeded, and
                # the worker would count it as cancelled.
                with contextlib.suppress(DeadlineExceeded):
                    await next_before(frames, min(deadline, time.monotonic() + END_GRACE_S))
                return
            frame = await next_before(frames, deadline)
            if frame is not None and frame.token_ids:
                now = time.monotonic()
                self.context.metrics.observe_itl(now - last)
                last = now

    async def _collect(self, request: Request, started: _Started[RequestT]) -> Response:
        outcome: Outcome = "error"

        async def collect() -> tuple[str, list[int], FinishReason | None]:
            text: list[str] = []
            token_ids: list[int] = []
            finish: FinishReason | None = None
            async for frame in self._rest(started):
                text.append(frame.text)
                token_ids += frame.token_ids
                finish = frame.finish_reason
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
            await _aclose(started.frames)
            self.context.admission.release(outcome)
        ids = started.body.return_token_ids
        output = Output(
            text,
            finish,
            token_ids=token_ids if ids else None,
            prompt_ids=list(started.prompt.token_ids) if ids else None,
        )
        reply = self.response(started.request_id, output, Usage.of(len(started.prompt), len(token_ids)))
        return JSONResponse(reply.model_dump(mode="json"))

    def _stream(self, started: _Started[RequestT]) -> Response:
        request_id, ids = started.request_id, started.body.return_token_ids
        outcome: list[Outcome] = ["cancelled"]
        # One event per frame (the tokens that were ready together). return_token_ids: the prompt's ids ride
        # in the first event, each token's id in the event that carries its text (a frame with no text of
        # its own waits for the next event that goes out).
        prompt_ids = list(started.prompt.token_ids) if ids else None

        def output(text: str, finish: FinishReason | None, token_ids: list[int] | None) -> Output:
            nonlocal prompt_ids
            first_ids, prompt_ids = prompt_ids, None
            return Output(text, finish, token_ids, first_ids)

        async def events() -> AsyncIterator[str]:
            nonlocal prompt_ids
            count = 0
            pending: list[int] = []
            opening = self.opening_chunk(request_id, Output("", None, [] if ids else None, prompt_ids))
            if opening is not None:
                prompt_ids = None  # the opening event carried them
                yield opening
            try:
                async for frame in self._rest(started):
                    count += len(frame)
                    pending += frame.token_ids
                    if frame.text or frame.finish_reason:
                        yield self.chunk(
                            request_id, output(frame.text, frame.finish_reason, pending if ids else None)
                        )
                        pending = []
                if pending and ids:  # the stream ended on tokens without text
                    yield self.chunk(request_id, output("", None, pending))
            except Exception as exc:  # headers are gone: the error travels as an event
                _, err, outcome[0] = error_body(exc)
                yield error_sse(err)
                yield SSE_DONE
                return
            if started.body.include_usage_in_stream:
                yield self.usage_chunk(request_id, Usage.of(len(started.prompt), count))
            outcome[0] = "ok"
            yield SSE_DONE

        async def cleanup() -> None:
            await _aclose(started.frames)
            self.context.admission.release(outcome[0])

        return _Stream(events(), cleanup)
