"""vLLM's token-in/token-out HTTP API as Triptych's units: pure builders of request bodies and parsers of
its answers (no I/O here; ``engine.py`` sends them).

Every stage calls ``POST /inference/v1/generate`` (vLLM's scale-out endpoint, on with ``--enable-scale-out``)
with the prompt's token ids as Triptych's frontend rendered them and each media item as a content part::

    {"token_ids": [...], "content_parts": [{"type": "image_url", "url": "data:image/png;base64,...",
     "uuid": "<Triptych's media hash>"}], "sampling_params": {...}, "kv_transfer_params": {...}}

- Placeholders travel *collapsed*: vLLM's multimodal processor expands each ``<|image_pad|>`` of a token
  prompt into as many as the item embeds to, so the prompt Triptych expanded is sent with each span folded
  back to its first token. vLLM's expansion must then give back exactly Triptych's prompt, which
  ``check_expanded`` verifies on the prompt ids vLLM returns.
- ``uuid`` is the media hash: vLLM then uses it as the item's identifier (the key of its processor cache
  and of the EC connector's stored encoder outputs), so the encoder, prefill and decode instances and
  Triptych's cache-aware routing all name an item the same way.
- Encode (an ``--mm-encoder-only`` ec_producer): ``max_tokens`` 1, the answer is discarded; the encoder
  output leaves through the EC connector. Prefill (kv_producer): ``max_tokens`` 1 and
  ``kv_transfer_params: {"do_remote_decode": true}``; its answer's ``kv_transfer_params`` (NixlConnector's
  remote engine, blocks, host and port) go to decode, which streams the whole answer, first token included.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from triptych_workers.engines.errors import EngineError, UnsupportedModalityError
from triptych_workers.engines.load import LoadGauges
from triptych_workers.engines.media import PlaceholderSpan
from triptych_workers.engines.sampling import FinishReason, SamplingParams, TokenFrame
from triptych_workers.errors import ClientError

GENERATE_PATH = "/inference/v1/generate"
CHAT_PATH = "/v1/chat/completions"
REMOTE_DECODE = {"do_remote_decode": True}

Json = dict[str, Any]

# What a content part of each modality is called in vLLM's generate API (the only one served here: the
# model behind vLLM on this project's CPU images is the image-only tiny Qwen2-VL).
_PART_TYPES = {"image": "image_url"}


@dataclass(frozen=True, slots=True)
class MediaFile:
    """One media item as vLLM reads it: the file's bytes, their MIME type and Triptych's hash of them."""

    modality: str
    mime: str
    data: bytes
    media_hash: str

    def content_part(self) -> Json:
        part_type = _PART_TYPES.get(self.modality)
        if part_type is None:
            raise UnsupportedModalityError(
                f"{self.modality} is not served by the vLLM backend here (only image)", param="messages"
            )
        url = f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"
        return {"type": part_type, "url": url, "uuid": self.media_hash}


def collapse_placeholders(token_ids: Sequence[int], spans: Sequence[PlaceholderSpan]) -> list[int]:
    """``token_ids`` with each span folded back to the one placeholder token the template wrote for it (what
    vLLM's processor expands): the span's ``placeholder``, or for a span without one (a run of one token) its
    first token."""
    out: list[int] = []
    at = 0
    for span in sorted(spans, key=lambda s: s.offset):
        if span.offset < at or span.end > len(token_ids) or span.length < 1:
            raise EngineError(f"placeholder span {span.offset}+{span.length} does not fit the prompt")
        pad = token_ids[span.offset : span.end]
        if span.placeholder is None and any(t != pad[0] for t in pad):
            raise EngineError("a placeholder span holds more than one token id: it cannot be collapsed")
        out += token_ids[at : span.offset]
        out.append(pad[0] if span.placeholder is None else span.placeholder)
        at = span.end
    out += token_ids[at:]
    return out


def sampling_params(sampling: SamplingParams, *, max_tokens: int | None = None) -> Json:
    """vLLM's ``SamplingParams`` fields for Triptych's (the names and semantics are vLLM's already)."""
    out: Json = {
        "max_tokens": sampling.max_tokens if max_tokens is None else max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "ignore_eos": sampling.ignore_eos,
        "skip_special_tokens": True,
    }
    if sampling.seed is not None:
        out["seed"] = sampling.seed
    if sampling.stop:
        out["stop"] = list(sampling.stop)
    if sampling.logit_bias:
        out["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    return out


def generate_body(
    token_ids: Sequence[int],
    spans: Sequence[PlaceholderSpan],
    media: Sequence[MediaFile],
    sampling: Json,
    *,
    model: str,
    stream: bool,
    kv_transfer_params: Mapping[str, Any] | None = None,
) -> Json:
    """One ``/inference/v1/generate`` request: the prompt collapsed, its media in span order."""
    if len(media) != len(spans):
        raise EngineError(f"{len(media)} media items for {len(spans)} placeholder spans")
    body: Json = {
        "model": model,
        "token_ids": collapse_placeholders(token_ids, spans),
        "sampling_params": sampling,
        "stream": stream,
        "return_token_ids": True,
        "output_mode": "text",
    }
    if media:
        body["content_parts"] = [m.content_part() for m in media]
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = dict(kv_transfer_params)
    return body


def encoder_body(item: MediaFile, *, model: str) -> Json:
    """What an encoder-only instance is sent for one item: a chat turn holding only the item, one token.
    (The chat endpoint, not the token one: vLLM's own template places the item's placeholder, so the
    encoder needs no prompt of Triptych's; the item's ``uuid`` names its stored encoder output either way.)"""
    part = item.content_part()
    chat_part = {"type": part["type"], part["type"]: {"url": part["url"]}, "uuid": part["uuid"]}
    return {
        "model": model,
        "messages": [{"role": "user", "content": [chat_part]}],
        "max_tokens": 1,
        "stream": False,
    }


def check_expanded(sent: Sequence[int], returned: Sequence[int] | None) -> None:
    """vLLM's expanded prompt must be the prompt Triptych rendered (else the two tokenizers or processors
    disagree, and positions and usage would be wrong)."""
    if returned is not None and list(returned) != list(sent):
        raise EngineError(
            f"vLLM expanded the prompt to {len(returned)} tokens, Triptych rendered {len(sent)}: the "
            "frontend's renderer does not match the model vLLM serves"
        )


@dataclass(frozen=True, slots=True)
class PrefillAnswer:
    first_token: int
    kv_transfer_params: Json
    prompt_token_ids: tuple[int, ...] | None


def parse_prefill(answer: Json) -> PrefillAnswer:
    """A kv_producer's (non-streamed) answer: the one token it made and NixlConnector's handle."""
    choices = answer.get("choices") or []
    if not choices or not choices[0].get("token_ids"):
        raise EngineError(f"vLLM's prefill answer has no token: {json.dumps(answer)[:200]}")
    params = answer.get("kv_transfer_params")
    if not isinstance(params, dict):
        raise EngineError("vLLM's prefill answer has no kv_transfer_params (is it a kv_producer?)")
    ids = answer.get("prompt_token_ids")
    return PrefillAnswer(int(choices[0]["token_ids"][0]), params, tuple(ids) if ids else None)


def error_of(status: int, text: str) -> Exception:
    """vLLM's error answer as Triptych's: a 4xx is the client's (its message kept), anything else a 500."""
    message = text
    try:
        err = json.loads(text).get("error", {})
        message = err.get("message", text) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        pass
    if 400 <= status < 500:
        return ClientError(f"vLLM refused the request: {message[:500]}", code="invalid_request_error")
    return EngineError(f"vLLM answered {status}: {message[:500]}")


class SseLines:
    """Splits the bytes of an event stream into its lines as they arrive (a read may end mid-line)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self._rest = (self._rest + data).split(b"\n")
        return [line.rstrip(b"\r").decode() for line in lines]


class StreamReader:
    """Turns the SSE events of a streamed generate answer into ``TokenFrame``s, one per event that carries
    tokens, text or the finish reason (vLLM sends one event per engine step, holding every token that step
    made). Nothing is held back: a finish reason that comes in an event of its own after the last token
    is a frame without tokens. The prompt ids ride in the first event (``return_token_ids``) and are kept
    for ``check_expanded``."""

    def __init__(self) -> None:
        self.index = 0
        self.prompt_token_ids: list[int] | None = None
        self.done = False

    def feed(self, line: str) -> Iterator[TokenFrame]:
        if not line.startswith("data:"):
            return
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            self.done = True
            return
        chunk = json.loads(data)
        if "error" in chunk:
            err = chunk["error"]
            code = int(err.get("code", 500)) if isinstance(err, dict) else 500
            raise error_of(code, json.dumps(chunk))
        if chunk.get("prompt_token_ids") is not None:
            self.prompt_token_ids = list(chunk["prompt_token_ids"])
        for choice in chunk.get("choices") or []:
            ids = tuple(int(t) for t in choice.get("token_ids") or ())
            finish = _finish(choice.get("finish_reason"))
            text = choice.get("text") or ""
            if ids or text or finish is not None:
                yield TokenFrame(self.index, ids, text, finish)
                self.index += len(ids)


def _finish(reason: object) -> FinishReason | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


# vLLM's own gauges (vllm/v1/metrics/loggers.py) that the contract's load figures come from.
VLLM_LOAD = LoadGauges(
    backend="vLLM",
    waiting="vllm:num_requests_waiting",
    running="vllm:num_requests_running",
    kv_cache_usage="vllm:kv_cache_usage_perc",
)
