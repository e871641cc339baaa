"""What travels from prefill to decode: the request for prefill, its result (the KV or a backend's handle
to it, with ``KVLayout`` saying how to read it) and the request for decode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from triptych_workers.engines.media import EncodedItem, RenderedPrompt
from triptych_workers.engines.sampling import SamplingParams
from triptych_workers.engines.tensors import TensorBuffer


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
    is ``prompt_len + step + position_delta``. ``transfer_params`` carries a backend's own KV handle when the
    KV does not travel through ``kv`` (vLLM/SGLang/TRT-LLM). ``prompt_token_ids`` are the prompt's ids, which
    decode needs for ``repetition_penalty`` (it penalises tokens of the prompt too); the reference engine
    refuses a decode whose ids do not match ``prompt_len``, so they cannot be forgotten on the way.
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
