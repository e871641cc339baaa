"""The messages roles send each other over the request plane (JSON, torch-free).

Tensors never ride in these messages: a ``TensorRef`` names a payload the sender published on its data
plane (NIXL or inline) plus the shape and dtype to view it with. Verbs and what they carry::

    encode    EncodeWork{items: [MediaRef]}                 -> one EncodedRef chunk per item, in order
    prefill   PrefillWork{prompt, items, sampling}          -> one PrefillRef chunk
    decode    DecodeWork{prefill: PrefillRef, sampling}     -> FrameMessage chunks (the first token included)
    generate  PrefillWork                                   -> FrameMessage chunks (PD and EPD workers)

``items`` hold an ``EncodedRef`` per placeholder span (embeddings computed by the encode pool) or, for a
worker that has the encode stage itself (EP/D, EPD), a ``MediaRef`` (decoded media to encode there).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from triptych_contract import Modality

from triptych_workers.engines.kv import KVLayout
from triptych_workers.engines.media import PlaceholderSpan, RenderedPrompt
from triptych_workers.engines.sampling import FinishReason, SamplingParams, TokenFrame

VERB_ENCODE = "encode"
VERB_PREFILL = "prefill"
VERB_DECODE = "decode"
VERB_GENERATE = "generate"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()


class TensorRef(Message):
    """A tensor published on the sender's data plane: the transfer descriptor (JSON) plus how to view it."""

    descriptor: str
    shape: tuple[int, ...]
    dtype: str


class SpanMessage(Message):
    modality: Modality
    offset: int
    length: int
    media_hash: str
    placeholder: int | None = None

    @classmethod
    def of(cls, span: PlaceholderSpan) -> SpanMessage:
        return cls(
            modality=span.modality,
            offset=span.offset,
            length=span.length,
            media_hash=span.media_hash,
            placeholder=span.placeholder,
        )

    def unit(self) -> PlaceholderSpan:
        return PlaceholderSpan(self.modality, self.offset, self.length, self.media_hash, self.placeholder)


class MediaRef(Message):
    """A media item (``MediaItem.data`` published as a tensor) and the span it fills: decoded, or the file
    as fetched with the shape its decoding gives (``compressed_shape``)."""

    kind: Literal["media"] = "media"
    modality: Modality
    media_hash: str
    data: TensorRef
    sample_rate: int | None = None
    compressed_shape: tuple[int, ...] | None = None
    span: SpanMessage


class EncodedRef(Message):
    """An item's embeddings (``EncodedItem``) on the encoder's data plane."""

    kind: Literal["encoded"] = "encoded"
    modality: Modality
    media_hash: str
    span: SpanMessage
    embeddings: TensorRef
    grid_thw: tuple[int, int, int] | None = None


class SamplingMessage(Message):
    """``SamplingParams`` on the wire, every field of it: prefill samples the first token and decode the
    rest, so both must apply the same parameters (``unit()`` validates them again on the worker)."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: tuple[tuple[int, float], ...]

    @classmethod
    def of(cls, s: SamplingParams) -> SamplingMessage:
        return cls(**{f: getattr(s, f) for f in cls.model_fields})

    def unit(self) -> SamplingParams:
        return SamplingParams(**{f: getattr(self, f) for f in type(self).model_fields})


class PromptMessage(Message):
    token_ids: tuple[int, ...]
    spans: tuple[SpanMessage, ...] = ()

    @classmethod
    def of(cls, prompt: RenderedPrompt) -> PromptMessage:
        return cls(token_ids=prompt.token_ids, spans=tuple(SpanMessage.of(s) for s in prompt.spans))

    def unit(self) -> RenderedPrompt:
        return RenderedPrompt(self.token_ids, tuple(s.unit() for s in self.spans))


class EncodeWork(Message):
    items: tuple[MediaRef, ...]


class PrefillWork(Message):
    prompt: PromptMessage
    items: tuple[MediaRef | EncodedRef, ...] = ()
    sampling: SamplingMessage


class KVLayoutMessage(Message):
    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_tokens: int
    order: tuple[str, ...]

    @classmethod
    def of(cls, layout: KVLayout) -> KVLayoutMessage:
        return cls(
            num_layers=layout.num_layers,
            num_kv_heads=layout.num_kv_heads,
            head_dim=layout.head_dim,
            num_tokens=layout.num_tokens,
            order=layout.order,
        )

    def unit(self) -> KVLayout:
        return KVLayout(self.num_layers, self.num_kv_heads, self.head_dim, self.num_tokens, self.order)


class PrefillRef(Message):
    """``PrefillResult`` with its KV on the prefill worker's data plane."""

    prompt_len: int
    first_token: int
    position_delta: int
    kv: TensorRef | None
    kv_layout: KVLayoutMessage | None
    transfer_params: dict[str, JsonValue] = {}
    """A backend's own KV handle (vLLM: NixlConnector's ``kv_transfer_params``), as it gave it."""
    prompt_token_ids: tuple[int, ...] = ()
    """What decode's ``repetition_penalty`` needs of the prompt (``PrefillResult.prompt_token_ids``)."""
    items: tuple[EncodedRef, ...] = ()
    """``PrefillResult.items``: what decode is given again (vLLM), on the prefill worker's data plane."""


class DecodeWork(Message):
    prefill: PrefillRef
    sampling: SamplingMessage


class FrameMessage(Message):
    """A ``TokenFrame``: the tokens that were ready together travel as one reply chunk."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None

    @classmethod
    def of(cls, frame: TokenFrame) -> FrameMessage:
        return cls(
            index=frame.index, token_ids=frame.token_ids, text=frame.text, finish_reason=frame.finish_reason
        )

    def unit(self) -> TokenFrame:
        return TokenFrame(self.index, self.token_ids, self.text, self.finish_reason)


class ErrorMessage(Message):
    """A client error raised on a worker, carried back so the frontend answers with the same 4xx."""

    status: int
    code: str
    message: str
    param: str | None = None
