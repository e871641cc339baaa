"""The engine interface: what the frontend and the encode, prefill and decode roles call.

One request's life::

    Prompter.render_chat(messages, media) -> RenderedPrompt  # frontend: prompt ids, one span per item
    Engine.encode([EncodeRequest])        -> [EncodedItem]   # encode role: embeddings per media item
    Engine.prefill(PrefillRequest)        -> PrefillResult   # prefill role: KV for the prompt + 1st token
    Engine.decode(DecodeRequest)          -> AsyncIterator[TokenFrame]  # decode role: the answer, streamed
    Engine.generate(...)                  -> AsyncIterator[TokenFrame]  # aggregated (PD, EPD): no KV export

Rendering is the ``Prompter``'s alone: the frontend renders, and no worker role renders or detokenizes
(an engine that decodes itself detokenizes inside ``decode``). The units live beside this module, one
module per concern: ``errors``, ``tensors`` (``TensorBuffer``: how tensors cross a process boundary),
``media`` (items, spans, rendered prompts, encoded items), ``sampling`` (``SamplingParams``,
``TokenFrame``) and ``kv`` (what prefill hands to decode). All of them are torch-free, so protocol and
transport code can import them.

Sync or async? The interface is async: the production backends are async-native (vLLM's ``AsyncLLM``,
SGLang's ``Engine.async_generate``, TensorRT-LLM's ``LLM.generate_async``), and an async iterator lets a role
stop generation by simply leaving the loop (client disconnect, deadline). A backend whose core is
synchronous (the reference engine) runs it on a single worker thread that it owns (created by the engine,
shut down by ``aclose()``) and steps decode one token per hop, so cancellation takes effect between two
tokens.

How the backends map onto it:

* **vLLM** -- ``encode``: an encoder-only instance (``--mm-encoder-only``) with
  ``--ec-transfer-config {"ec_connector": ..., "ec_role": "ec_producer"}`` is sent the request with
  ``max_tokens=1``; the encoder cache leaves through the EC connector (ECExampleConnector: shared storage,
  ECCPUConnector: /dev/shm + optional NIXL pull) and the returned ``ec_transfer_params`` play the role of
  ``EncodedItem`` (its ``buffer`` is then a handle, not bytes). ``prefill``: an instance with
  ``--kv-transfer-config {"kv_connector": "NixlConnector", "kv_role": "kv_producer"}`` (``ec_consumer``
  too when encode is split) gets ``max_tokens=1`` and ``kv_transfer_params={"do_remote_decode": true}``;
  the KV stays in its paged blocks and NixlConnector exports them, so ``PrefillResult.kv`` is the returned
  ``kv_transfer_params`` (remote engine id, block ids, host/port) and ``first_token`` the one token it
  produced. ``decode``: a ``kv_consumer`` instance is sent the original request plus those
  ``kv_transfer_params``; it pulls the blocks over NIXL and streams. Its frontend's ``Prompter`` renders
  with the model directory's own processor (``engines/renderer``), so vLLM's expansion of each
  placeholder is the frontend's.
* **SGLang** -- ``--disaggregation-mode prefill`` / ``decode`` with ``--disaggregation-transfer-backend
  nixl``; a request carries ``bootstrap_host``/``bootstrap_port``/``bootstrap_room`` so the two sides meet,
  so ``PrefillResult.kv`` is that bootstrap triple and the KV moves engine-to-engine. Multimodal embeddings
  can be passed as precomputed ``image_data`` embeddings (its encoder-disaggregation path), which is
  ``EncodedItem``.
* **TensorRT-LLM** -- disaggregated serving with ``disaggregated_params`` (``request_type`` =
  ``context_only`` on prefill, ``generation_only`` on decode, carrying ``opaque_state``/``ctx_request_id``):
  ``PrefillResult.kv`` is those params, the KV cache transceiver (NIXL or UCX) moves the blocks. Its
  multimodal encoder (``MultimodalEncoder`` / ``mm_embedding_handle``) produces a shared-memory/IPC handle
  that fits ``EncodedItem``.
* **reference** -- everything happens in-process on CPU, so the buffers really hold the bytes: embeddings
  (float32) and the whole KV cache in one contiguous buffer (``KVLayout`` says how to read it). This is what
  lets tests prove the pipeline token-for-token against a plain ``transformers`` ``generate``.

A backend whose KV never leaves its own memory (vLLM, SGLang, TRT-LLM) sets ``PrefillResult.kv`` to ``None``
and puts its connector handle into ``transfer_params``; the roles forward whichever is present.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from triptych_contract import Modality

from triptych_workers.engines.kv import DecodeRequest, PrefillRequest, PrefillResult
from triptych_workers.engines.media import EncodedItem, EncodeRequest, MediaItem, RenderedPrompt
from triptych_workers.engines.sampling import SamplingParams, TokenFrame


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
    placeholder arithmetic. The registry builds each backend's from the worker config alone, without
    loading a model."""

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        media: Sequence[MediaItem],
        *,
        add_generation_prompt: bool = True,
    ) -> RenderedPrompt:
        """Applies the chat template and expands each media placeholder to the item's tokens.
        ``messages`` are the OpenAI request's (content parts image_url/video_url/audio_url/input_audio
        consume ``media`` in order)."""
        ...

    def render_text(self, prompt: str, media: Sequence[MediaItem] = ()) -> RenderedPrompt:
        """Tokenizes a raw completion prompt (no template)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """What every backend's worker implements. Methods may raise ``ClientError`` subclasses (the
    frontend's 4xx) or ``EngineError`` (a 500)."""

    @property
    def info(self) -> EngineInfo: ...

    async def encode(self, requests: Sequence[EncodeRequest]) -> list[EncodedItem]: ...

    async def prefill(self, request: PrefillRequest) -> PrefillResult: ...

    def decode(self, request: DecodeRequest) -> AsyncIterator[TokenFrame]: ...

    def generate(
        self, prompt: RenderedPrompt, items: Sequence[EncodedItem], sampling: SamplingParams
    ) -> AsyncIterator[TokenFrame]:
        """Prefill and decode in one place (the PD and EPD forms): the KV never leaves the engine."""
        ...

    async def aclose(self) -> None: ...
