"""How the frontend gets tokens for a rendered prompt: the ``Pipeline``.

* ``InProcessPipeline`` -- encode (behind the encoder cache), prefill and decode in this process, on one
  engine. It is what an EPD worker runs for the requests it is sent, and what a single-process server uses.
* ``NatsPipeline`` -- the disaggregated path over the transport. The frontend orchestrates: media go to the
  encode pool (one request per item, routed by ``serving.encodeRouting``: by default to the worker whose
  cache holds it), the embeddings' descriptors to prefill, the KV's descriptor to decode, whose steps stream
  back. Which roles exist is the deployment's mode (E/P/D, E/PD, EP/D, EPD); text-only requests never
  touch encode.

Leaving the iterator early (client gone, deadline) stops the work: in process the engine's generator is
closed; over NATS the reply stream's ``aclose`` sends a cancel to the worker that holds the request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from triptych_workers.engines.base import (
    DecodeStep,
    EncodedItem,
    Engine,
    MediaItem,
    RenderedPrompt,
    SamplingParams,
)
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
    MediaRef,
    PrefillRef,
    PrefillWork,
    PromptMessage,
    SamplingMessage,
    StepMessage,
)
from triptych_workers.roles.routing import EncodeRouter, choose_encode_worker
from triptych_workers.transport import NoResponders, RequestClient, WorkerBusy, WorkerLoad


class Pipeline(Protocol):
    def generate(
        self,
        prompt: RenderedPrompt,
        media: Sequence[MediaItem],
        sampling: SamplingParams,
        *,
        deadline: float,
    ) -> AsyncIterator[DecodeStep]:
        """The generated steps. ``deadline`` is ``time.monotonic()`` seconds; the caller enforces it too."""
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
    ) -> AsyncIterator[DecodeStep]:
        items: list[EncodedItem] = []
        for item, span in zip(media, prompt.spans, strict=True):
            items.append(await self.encoder.encode(item, span))
        steps = self.engine.generate(prompt, items, sampling)
        try:
            async for step in steps:
                yield step
        finally:
            await _aclose(steps)


async def _aclose(iterator: AsyncIterator[DecodeStep]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


class NatsPipeline:
    """The disaggregated pipeline over the request plane (see the module docstring)."""

    def __init__(
        self,
        client: RequestClient,
        plane: Plane,
        mode: str,
        *,
        encode_workers: Callable[[], Sequence[WorkerLoad]] = list,
        connected: Callable[[], bool] = lambda: True,
        route: EncodeRouter = choose_encode_worker,
    ) -> None:
        self._client = client
        self._plane = plane
        self.mode = mode
        self._encode_workers = encode_workers
        self._connected = connected
        self._route = route

    def ready(self) -> bool:
        return self._connected()

    async def generate(
        self,
        prompt: RenderedPrompt,
        media: Sequence[MediaItem],
        sampling: SamplingParams,
        *,
        deadline: float,
    ) -> AsyncIterator[DecodeStep]:
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
                yield parse_chunk(StepMessage, reply.data).unit()

    async def _encode(self, refs: Sequence[MediaRef], deadline: float) -> list[EncodedRef]:
        return await gather_or_cancel([self._encode_one(ref, deadline) for ref in refs])

    async def _encode_one(self, ref: MediaRef, deadline: float) -> EncodedRef:
        payload = EncodeWork(items=(ref,)).dumps()
        worker = self._route(ref.media_hash, self._encode_workers())
        try:
            replies = await self._client.call(
                "encode", VERB_ENCODE, payload, timeout_s=_remaining(deadline), worker_id=worker
            )
        except (WorkerBusy, NoResponders):
            if worker is None:
                raise
            # The chosen worker is full or gone since its last announcement: let the pool pick.
            replies = await self._client.call("encode", VERB_ENCODE, payload, timeout_s=_remaining(deadline))
        (encoded,) = [parse_chunk(EncodedRef, r.data) for r in replies]
        return encoded

    async def _prefill(self, work: PrefillWork, deadline: float) -> PrefillRef:
        replies = await self._client.call(
            "prefill", VERB_PREFILL, work.dumps(), timeout_s=_remaining(deadline)
        )
        (result,) = [parse_chunk(PrefillRef, r.data) for r in replies]
        return result
