"""How the frontend gets tokens for a rendered prompt: the ``Pipeline``.

* ``InProcessPipeline`` -- encode (behind the encoder cache), prefill and decode in this process, on one
  engine. It is what an EPD worker runs for the requests it is sent, and what a single-process server uses.
* ``NatsPipeline`` -- the disaggregated path over the transport. The frontend orchestrates: media go to the
  encode pool (one request per item, routed by ``serving.encodeRouting``: by default to the worker whose
  cache holds it), the embeddings' descriptors to prefill, the KV's descriptor to decode, whose token
  frames stream back. Which roles exist is the deployment's mode (E/P/D, E/PD, EP/D, EPD); text-only
  requests never touch encode.

Encode scale-to-zero: the autoscaler may take the encode pool to 0 replicas while traffic is text-only. A
request with media that then finds no encode worker (NATS answers "no responders") is *held*, not failed:
it waits for an encode worker's heartbeat, counted in the pending gauge (which is what wakes the pool), for
at most ``serving.coldStartTimeoutSeconds`` and never past its own deadline; then it goes on as usual, or
fails with ``PoolUnavailable`` (a 503).

Leaving the iterator early (client gone, deadline) stops the work: in process the engine's generator is
closed; over NATS the reply stream's ``aclose`` sends a cancel to the worker that holds the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from triptych_workers.engines.base import Engine
from triptych_workers.engines.media import EncodedItem, MediaItem, RenderedPrompt
from triptych_workers.engines.sampling import SamplingParams, TokenFrame
from triptych_workers.errors import TriptychError
from triptych_workers.roles.common import (
    CachedEncoder,
    Plane,
    gather_or_cancel,
    parse_chunk,
    publish_media,
)
from triptych_workers.roles.messages import (
    VERB_DECODE,
    VERB_ENCODE,
    VERB_GENERATE,
    VERB_PREFILL,
    DecodeWork,
    EncodedRef,
    EncodeWork,
    FrameMessage,
    MediaRef,
    PrefillRef,
    PrefillWork,
    PromptMessage,
    SamplingMessage,
)
from triptych_workers.roles.routing import EncodeRouter, choose_encode_worker
from triptych_workers.transport import NoResponders, Reply, RequestClient, WorkerBusy, WorkerLoad

log = logging.getLogger(__name__)

# How often a held request looks at the encode pool's heartbeats: nothing beside a pool's cold start
# (seconds to minutes), and all the pipeline is given of the board is its ``workers()`` snapshot.
HOLD_POLL_S = 0.2
# A hold gives up this long before the request's deadline, so that the client hears why (the 503 below)
# rather than the bare 504 that the serving layer's own timer would give at the same instant.
HOLD_MARGIN_S = 0.1

Pending = Callable[[str], AbstractContextManager[None]]
"""``pending(role)``: a block during which one request is held waiting for a ``role`` worker
(``WorkerMetrics.pending`` counts it in ``triptych_pending_requests``)."""


class PoolUnavailable(TriptychError):
    """No worker of ``role`` became ready while the request was held for one (503: retry later)."""

    def __init__(self, role: str, waited_s: float) -> None:
        super().__init__(
            f"no {role} worker became ready within {round(waited_s, 1):g} s (the {role} pool is scaled to "
            "zero or starting); retry later"
        )
        self.role = role
        self.waited_s = waited_s


class Pipeline(Protocol):
    def generate(
        self,
        prompt: RenderedPrompt,
        media: Sequence[MediaItem],
        sampling: SamplingParams,
        *,
        deadline: float,
    ) -> AsyncIterator[TokenFrame]:
        """The answer's token frames. ``deadline`` is ``time.monotonic()`` seconds; the caller enforces it
        too."""
        ...

    def ready(self) -> bool: ...


class InProcessPipeline:
    """Encode, prefill and decode on one engine in this process (the engine keeps the KV in memory)."""

    def __init__(self, engine: Engine, encoder: CachedEncoder) -> None:
        self.engine = engine
        self.encoder = encoder

    def ready(self) -> bool:
        return True

    async def generate(
        self,
        prompt: RenderedPrompt,
        media: Sequence[MediaItem],
        sampling: SamplingParams,
        *,
        deadline: float,
    ) -> AsyncIterator[TokenFrame]:
        items: list[EncodedItem] = []
        for item, span in zip(media, prompt.spans, strict=True):
            items.append(await self.encoder.encode(item, span))
        frames = self.engine.generate(prompt, items, sampling)
        try:
            async for frame in frames:
                yield frame
        finally:
            await _aclose(frames)


async def _aclose(iterator: AsyncIterator[TokenFrame]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


class _EncodeHold:
    """One request's wait for an encode worker, shared by its media items: they encode concurrently and may
    all find the pool empty at once, but the request counts once in the pending gauge (it is requests that
    wait, whatever their number of images) and has one time bound, from when it first waited."""

    def __init__(self, pending: Pending, timeout_s: float, deadline: float) -> None:
        self._pending = pending
        self._timeout_s = timeout_s
        self._deadline = deadline
        self._started: float | None = None
        self.until = 0.0
        self._waiting = 0
        self._counted = contextlib.ExitStack()

    @property
    def waited_s(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """One item waits; the request is counted as pending while any of its items does."""
        if self._started is None:
            self._started = time.monotonic()
            self.until = min(self._started + self._timeout_s, self._deadline - HOLD_MARGIN_S)
            log.info(
                "no encode worker: holding a request for up to %.1f s until one starts",
                max(0.0, self.until - self._started),
            )
        if self._waiting == 0:
            self._counted.enter_context(self._pending("encode"))
        self._waiting += 1
        try:
            yield
        finally:
            self._waiting -= 1
            if self._waiting == 0:
                self._counted.close()


class NatsPipeline:
    """The disaggregated pipeline over the request plane (see the module docstring).

    ``encode_workers`` is the encode pool's last heartbeats (the frontend's ``LoadBoard``): routing reads it,
    and a request held for an empty pool waits for a worker to appear there. ``pending`` counts held
    requests (``WorkerMetrics.pending``), ``cold_start_timeout_s`` bounds a hold
    (``serving.coldStartTimeoutSeconds``)."""

    def __init__(
        self,
        client: RequestClient,
        plane: Plane,
        mode: str,
        *,
        encode_workers: Callable[[], Sequence[WorkerLoad]] = list,
        connected: Callable[[], bool] = lambda: True,
        route: EncodeRouter = choose_encode_worker,
        pending: Pending = lambda _role: contextlib.nullcontext(),
        cold_start_timeout_s: float,
    ) -> None:
        self._client = client
        self._plane = plane
        self.mode = mode
        self._encode_workers = encode_workers
        self._connected = connected
        self._route = route
        self._pending = pending
        self._cold_start_timeout_s = cold_start_timeout_s

    def ready(self) -> bool:
        return self._connected()

    async def generate(
        self,
        prompt: RenderedPrompt,
        media: Sequence[MediaItem],
        sampling: SamplingParams,
        *,
        deadline: float,
    ) -> AsyncIterator[TokenFrame]:
        refs: list[MediaRef] = [
            await publish_media(self._plane, item, span)
            for item, span in zip(media, prompt.spans, strict=True)
        ]
        has_encode_pool = self.mode in ("E/P/D", "E/PD")
        has_prefill_pool = self.mode in ("E/P/D", "EP/D")
        items: tuple[MediaRef | EncodedRef, ...] = tuple(refs)
        if refs and has_encode_pool:
            items = tuple(await self._encode(refs, deadline))
        work = PrefillWork(
            prompt=PromptMessage.of(prompt), items=items, sampling=SamplingMessage.of(sampling)
        )
        if has_prefill_pool:
            prefill = await self._prefill(work, deadline)
            stream = self._client.stream(
                "decode",
                VERB_DECODE,
                DecodeWork(prefill=prefill, sampling=work.sampling).dumps(),
                timeout_s=_remaining(deadline),
            )
        else:
            stream = self._client.stream(
                "decode", VERB_GENERATE, work.dumps(), timeout_s=_remaining(deadline)
            )
        async with stream as replies:
            async for reply in replies:
                yield parse_chunk(FrameMessage, reply.data).unit()

    async def _encode(self, refs: Sequence[MediaRef], deadline: float) -> list[EncodedRef]:
        hold = _EncodeHold(self._pending, self._cold_start_timeout_s, deadline)
        return await gather_or_cancel([self._encode_one(ref, deadline, hold) for ref in refs])

    async def _encode_one(self, ref: MediaRef, deadline: float, hold: _EncodeHold) -> EncodedRef:
        payload = EncodeWork(items=(ref,)).dumps()
        tried = time.monotonic()
        try:
            replies = await self._call_encode(ref.media_hash, payload, deadline)
        except NoResponders:
            # Nothing subscribes to the encode pool: it is scaled to zero or starting. Hold the request
            # until a worker comes up instead of failing it; while held it counts as pending, which is what
            # the autoscaler wakes the pool on.
            replies = await self._encode_when_up(ref.media_hash, payload, deadline, hold, since=tried)
        (encoded,) = [parse_chunk(EncodedRef, r.data) for r in replies]
        return encoded

    async def _call_encode(self, media_hash: str, payload: bytes, deadline: float) -> list[Reply]:
        worker = self._route(media_hash, self._encode_workers())
        try:
            return await self._client.call(
                "encode", VERB_ENCODE, payload, timeout_s=_remaining(deadline), worker_id=worker
            )
        except (WorkerBusy, NoResponders):
            if worker is None:
                raise
            # The chosen worker is full or gone since its last announcement: let the pool pick.
            return await self._client.call("encode", VERB_ENCODE, payload, timeout_s=_remaining(deadline))

    async def _encode_when_up(
        self, media_hash: str, payload: bytes, deadline: float, hold: _EncodeHold, *, since: float
    ) -> list[Reply]:
        """Wait for an encode worker heard from after ``since`` (the attempt nobody answered), then send
        again; ``PoolUnavailable`` if none is within the hold's bound."""
        with hold.holding():
            while True:
                if not await self._heard_from_encode(since, hold.until):
                    log.warning("no encode worker came up in %.1f s: the request gets a 503", hold.waited_s)
                    raise PoolUnavailable("encode", hold.waited_s)
                since = time.monotonic()
                try:
                    return await self._call_encode(media_hash, payload, deadline)
                except NoResponders:
                    # The worker heard from stopped taking work before ours reached it (a draining worker
                    # still heartbeats): wait for the next announcement.
                    continue

    async def _heard_from_encode(self, since: float, until: float) -> bool:
        """Whether an encode worker announced itself after ``since``, waiting until ``until`` (monotonic).
        Only a newer heartbeat counts: the board keeps a worker that died for a few heartbeats, and waking
        on its stale entry would only meet "no responders" again."""
        while not any(w.received >= since for w in self._encode_workers()):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(remaining, HOLD_POLL_S))
        return True

    async def _prefill(self, work: PrefillWork, deadline: float) -> PrefillRef:
        replies = await self._client.call(
            "prefill", VERB_PREFILL, work.dumps(), timeout_s=_remaining(deadline)
        )
        (result,) = [parse_chunk(PrefillRef, r.data) for r in replies]
        return result
