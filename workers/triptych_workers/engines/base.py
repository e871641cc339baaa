"""The engine interface: what the encode, prefill and decode roles call, and the units that travel between
them.

One request's life through an engine::

    render_chat(messages, media)  -> RenderedPrompt     # frontend: prompt tokens, one placeholder span per
    item
    encode([EncodeRequest])       -> [EncodedItem]      # encode role: embeddings per media item
    prefill(PrefillRequest)       -> PrefillResult      # prefill role: KV for the prompt + the first token
    decode(DecodeRequest)         -> AsyncIterator[TokenFrame]   # decode role: the answer's tokens, streamed
    generate(...)                 -> AsyncIterator[TokenFrame]   # aggregated forms (PD, EPD): no KV export

A ``TokenFrame`` holds the tokens that were ready together (one engine step of a request, or several when
the reader fell behind): they travel as one message and leave the frontend as one event, so the per-token
cost of the path does not grow with how far behind a hop is.

Units that cross a process boundary (``EncodedItem``, ``PrefillResult``) carry their tensors as a
``TensorBuffer``: one C-contiguous byte buffer plus shape and dtype name. That is what the data plane
registers
with NIXL (or sends inline over NATS) without knowing anything about torch, and what the receiving engine
views again as a tensor without a copy. Everything here is torch-free so protocol/transport code can import
it.

Sync or async? The interface is async: the production backends are async-native (vLLM's ``AsyncLLM``,
SGLang's ``Engine.async_generate``, TensorRT-LLM's ``LLM.generate_async``), and an async iterator lets a role
stop
generation by simply leaving the loop (client disconnect, deadline). A backend whose core is synchronous (the
reference engine) runs it on a single worker thread that it owns (created by the engine, shut down by
``aclose()``) and steps decode one token per hop, so cancellation takes effect between two tokens.

How the backends map onto it (the adapters come next; the reference engine implements it now):

* **vLLM** -- ``encode``: an encoder-only instance (``--mm-encoder-only``) with
  ``--ec-transfer-config {"ec_connector": ..., "ec_role": "ec_producer"}`` is sent the request with
  ``max_tokens=1``; the encoder cache leaves through the EC connector (ECExampleConnector: shared storage,
  ECCPUConnector: /dev/shm + optional NIXL pull) and the returned ``ec_transfer_params`` play the role of
  ``EncodedItem`` (its ``buffer`` is then a handle, not bytes). ``prefill``: an instance with
  ``--kv-transfer-config {"kv_connector": "NixlConnector", "kv_role": "kv_producer"}`` (``ec_consumer`` too
  when
  encode is split) gets ``max_tokens=1`` and ``kv_transfer_params={"do_remote_decode": true}``; the KV stays
  in
  its paged blocks and NixlConnector exports them, so ``PrefillResult.kv`` is the returned
  ``kv_transfer_params``
  (remote engine id, block ids, host/port) and ``first_token`` the one token it produced. ``decode``: a
  ``kv_consumer`` instance is sent the original request plus those ``kv_transfer_params``; it pulls the blocks
  over NIXL and streams. ``render_chat`` is vLLM's chat renderer + multimodal processor (placeholder spans are
  its ``mm_placeholders``, media hashes its ``mm_hashes``/``multi_modal_uuids``).
* **SGLang** -- ``--disaggregation-mode prefill`` / ``decode`` with ``--disaggregation-transfer-backend
  nixl``;
  a request carries ``bootstrap_host``/``bootstrap_port``/``bootstrap_room`` so the two sides meet, so
  ``PrefillResult.kv`` is that bootstrap triple and the KV moves engine-to-engine. Multimodal embeddings can
  be
  passed as precomputed ``image_data`` embeddings (its encoder-disaggregation path), which is ``EncodedItem``.
* **TensorRT-LLM** -- disaggregated serving with ``disaggregated_params`` (``request_type`` =
  ``context_only`` on prefill, ``generation_only`` on decode, carrying ``opaque_state``/``ctx_request_id``):
  ``PrefillResult.kv`` is those params, the KV cache transceiver (NIXL or UCX) moves the blocks. Its
  multimodal
  encoder (``MultimodalEncoder`` / ``mm_embedding_handle``) produces a shared-memory/IPC handle that fits
  ``EncodedItem``.
* **reference** -- everything happens in-process on CPU, so the buffers really hold the bytes: embeddings
  (float32) and the whole KV cache in one contiguous buffer (``KVLayout`` says how to read it). This is what
  lets tests prove the pipeline token-for-token against a plain ``transformers`` ``generate``.

A backend whose KV never leaves its own memory (vLLM, SGLang, TRT-LLM) sets ``PrefillResult.kv`` to ``None``
and puts its connector handle into ``transfer_params``; the roles forward whichever is present.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from triptych_contract import Modality

from triptych_workers.errors import ClientError, TriptychError

FinishReason = Literal["stop", "length"]

# The dtype names a TensorBuffer may carry; numpy understands all of them. (bfloat16 has no numpy dtype:
# a backend exporting bf16 sends it as "bfloat16" over uint16 bytes; the reference engine stays in float32.)
TENSOR_DTYPES = frozenset({"float32", "float16", "bfloat16", "int64", "int32", "uint8"})


class EngineError(TriptychError):
    """An engine failed in a way the client cannot fix (a server-side bug or a broken model directory)."""


class ModelDirError(EngineError):
    """The model directory is missing, incomplete or was written for another configuration."""


class UnsupportedModalityError(ClientError):
    """The model has no encoder for this modality."""

    status = 400
    code = "unsupported_modality"


class PromptTooLongError(ClientError):
    """Prompt plus requested tokens exceed the model's context window."""

    status = 400
    code = "context_length_exceeded"


class InvalidEngineInputError(ClientError):
    """A request the engine cannot run as given (mismatched placeholders and media, bad sampling values)."""

    status = 400
    code = "invalid_engine_input"


@dataclass(frozen=True, slots=True)
class TensorBuffer:
    """A dense tensor as one C-contiguous byte buffer plus its shape and dtype name.

    ``data`` is a 1-D ``uint8`` array: NIXL registers it as (address, length), the inline transport sends
    ``data.tobytes()``, and ``from_bytes`` rebuilds it on the far side without knowing what it holds.
    """

    data: npt.NDArray[np.uint8]
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in TENSOR_DTYPES:
            raise ValueError(f"unsupported tensor dtype {self.dtype!r}")
        if self.data.dtype != np.uint8 or self.data.ndim != 1 or not self.data.flags.c_contiguous:
            raise ValueError("TensorBuffer.data must be a contiguous 1-D uint8 array")
        itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize
        if self.data.nbytes != math.prod(self.shape) * itemsize:
            raise ValueError(f"buffer of {self.data.nbytes} bytes does not hold {self.shape} x {self.dtype}")

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @classmethod
    def from_array(cls, array: npt.NDArray[Any]) -> TensorBuffer:
        """Wraps an array (copied only if it is not C-contiguous already)."""
        contiguous = np.ascontiguousarray(array)
        return cls(contiguous.reshape(-1).view(np.uint8), tuple(contiguous.shape), str(contiguous.dtype))

    @classmethod
    def from_bytes(
        cls, payload: bytes | bytearray | memoryview, shape: Sequence[int], dtype: str
    ) -> TensorBuffer:
        """Rebuilds a buffer received from the data plane (zero-copy over ``payload``)."""
        return cls(np.frombuffer(payload, dtype=np.uint8), tuple(int(d) for d in shape), dtype)

    def array(self) -> npt.NDArray[Any]:
        """A zero-copy numpy view with the original shape and dtype (bfloat16 is viewed as uint16)."""
        view_dtype = np.uint16 if self.dtype == "bfloat16" else np.dtype(self.dtype)
        return self.data.view(view_dtype).reshape(self.shape)

    def tobytes(self) -> bytes:
        return self.data.tobytes()


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
    """Where one media item's embeddings go in the prompt: ``length`` placeholder tokens from ``offset``."""

    modality: Modality
    offset: int
    length: int
    media_hash: str

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


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens, with vLLM's names, ranges and semantics (``engines/reference/engine.py``'s
    ``TokenSampler`` applies them; a value out of range is a 400 naming the parameter).

    ``temperature == 0`` is greedy; ``seed`` makes sampling reproducible across the split: step ``i`` draws
    from its own generator seeded by (seed, i), so prefill (step 0) and decode (steps 1..) on different
    processes give the same stream as one process would.

    What changes the logits, in vLLM's order: ``logit_bias`` (token id, bias) pairs are added; then
    ``repetition_penalty`` (HF/vLLM: a positive logit of a token seen in the prompt or the output so far is
    divided by it, a negative one multiplied), ``frequency_penalty`` (subtracted once per occurrence in the
    output so far) and ``presence_penalty`` (subtracted once if it occurs there; both as OpenAI defines them).
    These steer greedy decoding too. What filters the candidates when sampling (no effect on greedy): after
    the temperature, ``min_p`` drops tokens less probable than ``min_p`` times the most probable one, then
    ``top_k`` keeps the ``k`` most probable (0 or -1: all), then ``top_p`` the nucleus."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias in [-100, 100]) pairs; the ids are checked against the model's vocabulary by the
    engine (only it knows the vocabulary)."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidEngineInputError("max_tokens must be at least 1", param="max_tokens")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise InvalidEngineInputError("temperature must be a finite number >= 0", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidEngineInputError("top_p must be in (0, 1]", param="top_p")
        if any(not s for s in self.stop):
            raise InvalidEngineInputError("stop strings must not be empty", param="stop")
        if self.top_k < -1:
            raise InvalidEngineInputError("top_k must be -1 or 0 (disabled) or at least 1", param="top_k")
        if not 0 <= self.min_p <= 1:
            raise InvalidEngineInputError("min_p must be in [0, 1]", param="min_p")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise InvalidEngineInputError(
                "repetition_penalty must be a finite number > 0", param="repetition_penalty"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidEngineInputError(f"{name} must be in [-2, 2]", param=name)
        for token_id, bias in self.logit_bias:
            if token_id < 0 or not -100 <= bias <= 100:
                raise InvalidEngineInputError(
                    f"logit_bias needs token ids >= 0 and biases in [-100, 100], not {token_id}: {bias}",
                    param="logit_bias",
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class PrefillRequest:
    prompt: RenderedPrompt
    items: tuple[EncodedItem, ...]
    sampling: SamplingParams


@dataclass(frozen=True, slots=True)
class KVLayout:
    """How to read ``PrefillResult.kv``: ``order`` names the axes of ``kv.shape``.

    The reference engine uses ``("layer", "kv", "head", "token", "dim")`` with ``kv`` = 0 for keys, 1 for
    values.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_tokens: int
    order: tuple[str, ...] = ("layer", "kv", "head", "token", "dim")


@dataclass(frozen=True, slots=True)
class PrefillResult:
    """What decode needs to continue: the KV for all prompt tokens, the first generated token and positions.

    ``position_delta`` is the multimodal-RoPE offset (Qwen2-VL's ``rope_deltas``): the next token's position
    is
    ``prompt_len + step + position_delta``. ``transfer_params`` carries a backend's own KV handle when the KV
    does
    not travel through ``kv`` (vLLM/SGLang/TRT-LLM). ``prompt_token_ids`` are the prompt's ids, which decode
    needs for ``repetition_penalty`` (it penalises tokens of the prompt too); the reference engine refuses a
    decode whose ids do not match ``prompt_len``, so they cannot be forgotten on the way.
    """

    prompt_len: int
    first_token: int
    position_delta: int
    kv: TensorBuffer | None
    kv_layout: KVLayout | None
    transfer_params: Mapping[str, Any] = field(default_factory=dict)
    prompt_token_ids: tuple[int, ...] = ()
    items: tuple[EncodedItem, ...] = ()
    """Items decode must be given again: vLLM's decode instance places the media in its prompt itself (its
    processor computes the positions from them), though their embeddings are never computed there. The
    reference engine's KV already holds everything, so it sends none."""


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    prefill: PrefillResult
    sampling: SamplingParams


@dataclass(frozen=True, slots=True)
class DecodeStep:
    """One generated token. ``text`` is the new text it completes (may be empty: a partial UTF-8 sequence,
    held
    back text that may start a stop string, or a special token). The last step has ``finish_reason`` set."""

    index: int
    token_id: int
    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class TokenFrame:
    """Tokens of one answer that were ready together: what an engine yields, what one reply chunk carries
    and what the frontend sends as one event. ``index`` is the first token's position in the answer,
    ``text`` the new text the tokens complete together (may be empty, as for a ``DecodeStep``). The last
    frame has ``finish_reason`` set; it may hold no token at all (an engine that announces the end in an
    event of its own after the last token: nothing is held back waiting for it)."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None

    @classmethod
    def of(cls, step: DecodeStep) -> TokenFrame:
        return cls(step.index, (step.token_id,), step.text, step.finish_reason)

    def __len__(self) -> int:
        return len(self.token_ids)

    def then(self, later: TokenFrame) -> TokenFrame:
        """This frame and the one after it as one frame (the later one's finish reason ends it)."""
        if self.finish_reason is not None:
            raise EngineError("no frame follows a finished one")
        return TokenFrame(
            self.index, self.token_ids + later.token_ids, self.text + later.text, later.finish_reason
        )


def coalesce(frames: Sequence[TokenFrame]) -> TokenFrame:
    """Consecutive frames of one answer as one."""
    out = frames[0]
    for frame in frames[1:]:
        out = out.then(frame)
    return out


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What an engine that is its own server reports of its load (vLLM: its /metrics), read by the sidecar
    into the contract's metrics: requests waiting inside the engine join the sidecar's queue depth, and the
    engine's KV-cache usage (0..1) is the KV utilization."""

    waiting: int
    running: int
    kv_cache_usage: float


@runtime_checkable
class ReportsLoad(Protocol):
    """An engine whose load the sidecar reads from the engine itself, not from its own accounting."""

    async def read_load(self) -> EngineLoad: ...


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model: str
    modalities: frozenset[Modality]
    max_model_len: int
    eos_token_ids: frozenset[int]


class Prompter(Protocol):
    """What the frontend needs of a backend's prompt renderer: the chat template, the tokenizer and the
    placeholder arithmetic, torch-free, so a frontend renders prompts without loading a model
    (``ReferencePrompter``; the registry builds each backend's)."""

    def render_chat(
        self,
        messages: Sequence[dict[str, object]],
        media: Sequence[MediaItem],
        *,
        add_generation_prompt: bool,
    ) -> RenderedPrompt: ...

    def render_text(self, prompt: str, media: Sequence[MediaItem] = ()) -> RenderedPrompt: ...


@runtime_checkable
class Engine(Protocol):
    """What every backend implements. Methods may raise ``ClientError`` subclasses (the frontend's 4xx) or
    ``EngineError`` (a 500)."""

    @property
    def info(self) -> EngineInfo: ...

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        media: Sequence[MediaItem],
        *,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        """Applies the chat template and expands each media placeholder to the item's token count.
        ``messages``
        use the Hugging Face chat-template shape; content parts of type image/video/audio consume ``media`` in
        order."""
        ...

    def render_text(self, prompt: str, media: Sequence[MediaItem] = ()) -> RenderedPrompt:
        """Tokenizes a raw completion prompt (no template)."""
        ...

    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    async def encode(self, requests: Sequence[EncodeRequest]) -> list[EncodedItem]: ...

    async def prefill(self, request: PrefillRequest) -> PrefillResult: ...

    def decode(self, request: DecodeRequest) -> AsyncIterator[TokenFrame]: ...

    def generate(
        self, prompt: RenderedPrompt, items: Sequence[EncodedItem], sampling: SamplingParams
    ) -> AsyncIterator[TokenFrame]:
        """Prefill and decode in one place (the PD and EPD forms): the KV never leaves the engine."""
        ...

    async def aclose(self) -> None: ...
