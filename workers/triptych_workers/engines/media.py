"""The media path's units: a decoded ``MediaItem``, the ``PlaceholderSpan`` it fills in a
``RenderedPrompt``, and what the encode stage takes (``EncodeRequest``) and gives (``EncodedItem``).
Torch-free: the frontend, the request plane and the data plane all carry them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt
from triptych_contract import Modality

from triptych_workers.engines.errors import InvalidEngineInputError, PromptTooLongError
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


def expand_placeholders(
    token_ids: Sequence[int],
    media: Sequence[MediaItem],
    placeholders: Mapping[int, Modality],
    expansion: Callable[[MediaItem], Sequence[int]],
    *,
    max_model_len: int,
) -> RenderedPrompt:
    """The prompt with each placeholder token (``placeholders``: its id -> the modality it stands for)
    replaced by ``expansion(item)`` for the next media item, in order; one span per item. Placeholders and
    media must pair up one to one, modality by modality, and the prompt must leave room in a
    ``max_model_len``-token context (0: no limit known)."""
    out: list[int] = []
    spans: list[PlaceholderSpan] = []
    pending = deque(media)
    for token_id in token_ids:
        modality = placeholders.get(token_id)
        if modality is None:
            out.append(token_id)
            continue
        if not pending:
            raise InvalidEngineInputError(
                f"the prompt has more {modality} placeholders than media", param="messages"
            )
        item = pending.popleft()
        if item.modality != modality:
            raise InvalidEngineInputError(
                f"placeholder for {modality} met a {item.modality} item; media out of order", param="messages"
            )
        expanded = expansion(item)
        spans.append(PlaceholderSpan(modality, len(out), len(expanded), item.media_hash, token_id))
        out.extend(expanded)
    if pending:
        raise InvalidEngineInputError(
            f"{len(pending)} media item(s) have no placeholder in the prompt", param="messages"
        )
    if max_model_len and len(out) >= max_model_len:
        raise PromptTooLongError(
            f"prompt of {len(out)} tokens leaves no room in a {max_model_len}-token context", param="messages"
        )
    return RenderedPrompt(tuple(out), tuple(spans))


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
