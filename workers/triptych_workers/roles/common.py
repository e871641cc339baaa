"""Plumbing the roles share: the encoder in front of its cache, tensors on the data plane, reply chunks.

Roles never import each other (import-linter checks it); what two roles both need lives here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from triptych_workers.cache import EncoderCache, EncoderCacheStats
from triptych_workers.engines.base import Engine
from triptych_workers.engines.errors import EngineError, InvalidEngineInputError
from triptych_workers.engines.media import EncodedItem, EncodeRequest, MediaItem, PlaceholderSpan
from triptych_workers.engines.tensors import TensorBuffer
from triptych_workers.errors import ClientError
from triptych_workers.media.image import decode_image
from triptych_workers.roles.messages import EncodedRef, ErrorMessage, MediaRef, SpanMessage, TensorRef
from triptych_workers.transport import TransferDescriptor, TransferPlane

# A worker announces at most this many cached media hashes in each heartbeat (most recently used first).
ANNOUNCED_CACHE_KEYS = 512


class CachedEncoder:
    """``engine.encode`` behind the encoder cache: one computation per media hash, byte-bounded LRU."""

    def __init__(self, engine: Engine, capacity_bytes: int) -> None:
        self._engine = engine
        self.cache: EncoderCache[EncodedItem] = EncoderCache(
            capacity_bytes, size_of=lambda item: item.embeddings.nbytes
        )

    async def encode(self, item: MediaItem, span: PlaceholderSpan) -> EncodedItem:
        """Embeddings for media already in this process (the aggregated, in-process pipeline)."""

        async def compute() -> EncodedItem:
            return await self._encode(item, span)

        return self._placed(await self.cache.get_or_compute(item.media_hash, compute), span)

    async def encode_ref(self, plane: Plane, ref: MediaRef, *, timeout_s: float) -> EncodedItem:
        """Embeddings for media still on its sender's data plane, read only on a miss. The hash rides in the
        ref, so a hit (or joining the computation already running for that hash) costs no transfer; the
        sender is then told to let go of the media at once instead of holding it until its lease runs out."""
        span = ref.span.unit()
        fetched = False

        async def compute() -> EncodedItem:
            nonlocal fetched
            item, _ = await fetch_media(plane, ref, timeout_s=timeout_s)
            fetched = True
            return await self._encode(item, span)

        try:
            encoded = await self.cache.get_or_compute(ref.media_hash, compute)
        finally:
            if not fetched:
                await plane.discard(TransferDescriptor.from_json(ref.data.descriptor))
        return self._placed(encoded, span)

    async def _encode(self, item: MediaItem, span: PlaceholderSpan) -> EncodedItem:
        """A miss: decode the item if it came as fetched (only here, so a hit never decodes), then encode."""
        if item.compressed_shape is not None:
            item = await asyncio.to_thread(decode_compressed, item)
        (encoded,) = await self._engine.encode([EncodeRequest(item, span)])
        return encoded

    @staticmethod
    def _placed(encoded: EncodedItem, span: PlaceholderSpan) -> EncodedItem:
        """A cached item serves any prompt: only where its placeholders sit differs."""
        return encoded if encoded.span == span else encoded.with_span(span)

    def stats(self) -> EncoderCacheStats:
        return self.cache.stats()

    def keys(self) -> list[str]:
        return [str(k) for k in self.cache.keys(ANNOUNCED_CACHE_KEYS)]


Plane = TransferPlane


def decode_compressed(item: MediaItem) -> MediaItem:
    """The decoded form of an item that travelled as fetched (blocking: run it off the event loop). Its
    pixels must have the shape the frontend planned the prompt with, from the header."""
    if item.modality != "image":
        raise InvalidEngineInputError(f"{item.modality} cannot travel undecoded", param="messages")
    pixels = np.asarray(decode_image(item.data.tobytes()), dtype=np.uint8)
    if pixels.shape != item.compressed_shape:
        raise InvalidEngineInputError(
            f"the image decodes to {pixels.shape}, not the {item.compressed_shape} its header said",
            param="messages",
        )
    return MediaItem(item.modality, item.media_hash, pixels)


async def publish_tensor(plane: Plane, buffer: TensorBuffer) -> TensorRef:
    descriptor = await plane.publish(buffer.data, {"dtype": buffer.dtype})
    return TensorRef(descriptor=descriptor.to_json().decode(), shape=buffer.shape, dtype=buffer.dtype)


async def fetch_tensor(plane: Plane, ref: TensorRef, *, timeout_s: float) -> TensorBuffer:
    """The tensor behind ``ref``, copied out of the data plane's memory (which is released at once)."""
    with await plane.fetch(TransferDescriptor.from_json(ref.descriptor), timeout_s=timeout_s) as received:
        data = received.data.copy()
    return TensorBuffer(data, tuple(ref.shape), ref.dtype)


async def publish_media(plane: Plane, item: MediaItem, span: PlaceholderSpan) -> MediaRef:
    data = await publish_tensor(plane, TensorBuffer.from_array(item.data))
    return MediaRef(
        modality=item.modality,
        media_hash=item.media_hash,
        data=data,
        sample_rate=item.sample_rate,
        compressed_shape=item.compressed_shape,
        span=SpanMessage.of(span),
    )


async def fetch_media(plane: Plane, ref: MediaRef, *, timeout_s: float) -> tuple[MediaItem, PlaceholderSpan]:
    buffer = await fetch_tensor(plane, ref.data, timeout_s=timeout_s)
    item = MediaItem(ref.modality, ref.media_hash, buffer.array(), ref.sample_rate, ref.compressed_shape)
    return item, ref.span.unit()


async def publish_encoded(plane: Plane, item: EncodedItem) -> EncodedRef:
    return EncodedRef(
        modality=item.modality,
        media_hash=item.media_hash,
        span=SpanMessage.of(item.span),
        embeddings=await publish_tensor(plane, item.embeddings),
        grid_thw=item.grid_thw,
    )


async def resolve_items(
    plane: Plane,
    items: Sequence[MediaRef | EncodedRef],
    encoder: CachedEncoder | None,
    *,
    timeout_s: float,
) -> list[EncodedItem]:
    """Embeddings for every item: fetched from the encoder that published them, or (for a worker with the
    encode stage) encoded here from the media."""
    out: list[EncodedItem] = []
    for ref in items:
        if isinstance(ref, EncodedRef):
            embeddings = await fetch_tensor(plane, ref.embeddings, timeout_s=timeout_s)
            out.append(EncodedItem(ref.modality, ref.media_hash, ref.span.unit(), embeddings, ref.grid_thw))
        else:
            if encoder is None:
                raise EngineError("this worker has no encode stage but was sent media to encode")
            out.append(await encoder.encode_ref(plane, ref, timeout_s=timeout_s))
    return out


# -- reply chunks ----------------------------------------------------------------------------------------


class RemoteClientError(ClientError):
    """A client error raised on a worker, re-raised at the frontend with the worker's status and code."""

    def __init__(self, message: str, *, status: int, code: str, param: str | None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status


def error_chunk(exc: ClientError) -> bytes:
    return ErrorMessage(status=exc.status, code=exc.code, message=exc.message, param=exc.param).dumps()


M = TypeVar("M", bound=BaseModel)


def parse_chunk(model: type[M], data: bytes) -> M:
    """A reply chunk as ``model``; an error chunk becomes ``RemoteClientError``."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"a worker sent a reply that is not JSON: {data[:80]!r}") from exc
    if isinstance(raw, dict) and raw.keys() == {"status", "code", "message", "param"}:
        err = ErrorMessage.model_validate(raw)
        raise RemoteClientError(err.message, status=err.status, code=err.code, param=err.param)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise EngineError(f"a worker sent a malformed {model.__name__}: {exc}") from exc


def parse_work(model: type[M], data: bytes) -> M:
    """A request-plane payload as ``model``: a malformed one is a bug of the sender (a 500), not the
    client's."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise EngineError(f"malformed {model.__name__} message: {exc}") from exc


T = TypeVar("T")


async def gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """All results in order; on the first failure the others are cancelled and that failure is raised
    as itself (not wrapped in an ExceptionGroup, so a ``ClientError`` keeps its status)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
