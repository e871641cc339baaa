"""The media path's units: a decoded ``MediaItem``, the ``PlaceholderSpan`` it fills in a
``RenderedPrompt``, and what the encode stage takes (``EncodeRequest``) and gives (``EncodedItem``).
Torch-free: the frontend, the request plane and the data plane all carry them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
from triptych_contract import Modality

from triptych_workers.engines.errors import InvalidEngineInputError
from triptych_workers.engines.tensors import TensorBuffer


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One decoded media item, as the media layer hands it over.

    ``data``: image ``uint8[H, W, 3]`` RGB; video ``uint8[T, H, W, 3]`` RGB frames (already sampled);
    audio ``float32[N]`` mono at ``sample_rate`` Hz. ``media_hash`` identifies the original bytes (BLAKE3 hex)
    and keys the encoder cache.
    """

    modality: Modality
    media_hash: str
    data: npt.NDArray[Any]
    sample_rate: int | None = None
    compressed_shape: tuple[int, ...] | None = None
    """Set while ``data`` still holds the file as fetched (``uint8[N]``, an image only): the shape its
    decoded pixels will have, read from the file's header. The encode stage decodes it
    (``roles.common.CachedEncoder``), so the frontend neither decodes nor ships pixels (see
    ``serving.decodeImagesOn``); an engine's ``encode`` only ever sees decoded items."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The decoded data's shape, whether or not it is decoded yet (what prompt rendering needs)."""
        return self.compressed_shape if self.compressed_shape is not None else tuple(self.data.shape)


@dataclass(frozen=True, slots=True)
class PlaceholderSpan:
    """Where one media item is in the prompt: ``length`` tokens from ``offset``, all of them the item's
    expansion (its embedding positions, and for some models tokens around them: Idefics3's tile and
    row/column tokens). ``placeholder`` is the one token the chat template wrote for the item before it was
    expanded: what a backend that expands placeholders itself (vLLM) is sent in the span's place. ``None``:
    the span is a run of that one token (the reference model's)."""

    modality: Modality
    offset: int
    length: int
    media_hash: str
    placeholder: int | None = None

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """The prompt as the engine runs it: token ids with every media placeholder already expanded."""

    token_ids: tuple[int, ...]
    spans: tuple[PlaceholderSpan, ...] = ()

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True, slots=True)
class EncodeRequest:
    """Encode one media item for the span it fills."""

    item: MediaItem
    span: PlaceholderSpan


@dataclass(frozen=True, slots=True)
class EncodedItem:
    """An item's embeddings (``[span.length, hidden]``) and what prefill needs to place them.

    ``grid_thw`` is the vision grid (temporal, height, width in patches) that multimodal RoPE needs; ``None``
    for audio, whose tokens take ordinary 1-D positions.
    """

    modality: Modality
    media_hash: str
    span: PlaceholderSpan
    embeddings: TensorBuffer
    grid_thw: tuple[int, int, int] | None = None

    def with_span(self, span: PlaceholderSpan) -> EncodedItem:
        """The same embeddings placed into another prompt (an encoder-cache hit)."""
        if span.length != self.span.length or span.media_hash != self.media_hash:
            raise InvalidEngineInputError(
                "cached embeddings do not fit this placeholder span", param="messages"
            )
        return EncodedItem(self.modality, self.media_hash, span, self.embeddings, self.grid_thw)
