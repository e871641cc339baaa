"""``VllmEngine``: the ``Engine`` of a vLLM pod's triptych-worker sidecar, over HTTP to the vLLM server
beside it (the pod's ``engine`` container on ENGINE_PORT). Nothing of vLLM is imported: the sidecar speaks
its HTTP API (``protocol.py`` builds the bodies), and vLLM moves the encoder outputs (its EC connector) and
the KV (NixlConnector) itself.

How the ``Engine`` calls map (see ``engines/base.py`` for the interface):

- ``encode`` on an encoder-only pod (``--mm-encoder-only``, ec_producer): the item is sent to vLLM, which
  stores its encoder output under the item's hash; the ``EncodedItem`` returned holds the image as a PNG
  file, not embeddings: that is what a consumer instance needs of it (vLLM's processor re-reads the item to
  place it; the embeddings come through the EC connector, by hash). Behind Triptych's encoder cache, a
  repeated item never reaches vLLM again.
  On a pod that encodes as part of prefill (EP/D, EPD), ``encode`` only wraps the file: vLLM encodes it
  while prefilling.
- ``prefill`` (kv_producer): one token with ``do_remote_decode``; the answer's ``kv_transfer_params`` go
  into ``PrefillResult.transfer_params`` and the items into ``PrefillResult.items`` for decode.
- ``decode`` (kv_consumer) and ``generate`` (PD, EPD): the whole answer streamed: one ``TokenFrame`` per
  read of vLLM's event stream (every event that read brought: one engine step's tokens, or several steps'
  when the sidecar fell behind), over the client's connection pool, sized for ``serving.concurrency``
  streams at once (httpx's default pool of 100 would queue the rest inside the sidecar).

vLLM's answers are checked: the prompt it expanded must be the one Triptych's frontend rendered.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import numpy as np
from PIL import Image
from triptych_contract import Modality

from triptych_workers.engines.base import EngineInfo, EngineLoad
from triptych_workers.engines.errors import EngineError
from triptych_workers.engines.kv import DecodeRequest, PrefillRequest, PrefillResult
from triptych_workers.engines.load import parse_load
from triptych_workers.engines.media import EncodedItem, EncodeRequest, MediaItem, RenderedPrompt
from triptych_workers.engines.sampling import SamplingParams, TokenFrame, coalesce
from triptych_workers.engines.tensors import TensorBuffer
from triptych_workers.engines.vllm import protocol
from triptych_workers.engines.vllm.protocol import MediaFile

log = logging.getLogger(__name__)

HEALTH_POLL_S = 1.0
SPARE_CONNECTIONS = 4  # beyond one per running request: /metrics reads, an encoder post
PNG = "image/png"


def png_of(item: MediaItem) -> bytes:
    """A decoded image as a PNG file (lossless: vLLM decodes back exactly the pixels Triptych planned)."""
    if item.modality != "image":
        raise EngineError(f"the vLLM backend here serves images only, not {item.modality}")
    out = io.BytesIO()
    Image.fromarray(np.asarray(item.data, dtype=np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def media_file(item: EncodedItem) -> MediaFile:
    return MediaFile(item.modality, PNG, item.embeddings.tobytes(), item.media_hash)


class VllmEngine:
    """One vLLM server's HTTP API as an ``Engine`` (see the module docstring)."""

    def __init__(self, client: httpx.AsyncClient, info: EngineInfo, *, encoder_only: bool) -> None:
        self._client = client
        self._info = info
        self.encoder_only = encoder_only

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        health_path: str,
        encoder_only: bool,
        modalities: Sequence[Modality],
        startup_timeout_s: float,
        request_timeout_s: float,
        max_streams: int,
    ) -> VllmEngine:
        """Waits until the vLLM server beside this sidecar answers its health check (loading a model takes
        it tens of seconds), then reads what it serves. One client (one pool of kept-alive connections)
        serves every request: ``max_streams`` at once (``serving.concurrency``), plus the load reads."""
        pool = max_streams + SPARE_CONNECTIONS
        client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(request_timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )
        deadline = time.monotonic() + startup_timeout_s
        last = "no answer yet"
        while True:
            try:
                health = await client.get(health_path, timeout=5.0)
                if health.status_code == 200:
                    break
                last = f"HTTP {health.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                await client.aclose()
                raise EngineError(
                    f"the vLLM server at {url} was not healthy within {startup_timeout_s:g} s ({last})"
                )
            await asyncio.sleep(HEALTH_POLL_S)
        models = (await client.get("/v1/models")).json().get("data") or []
        if not models:
            await client.aclose()
            raise EngineError(f"the vLLM server at {url} serves no model")
        model = models[0]
        info = EngineInfo(
            model=str(model["id"]),
            modalities=frozenset(modalities),
            max_model_len=int(model.get("max_model_len") or 0),
            eos_token_ids=frozenset(),
        )
        log.info("vLLM at %s serves %s (max_model_len %d)", url, info.model, info.max_model_len)
        return cls(client, info, encoder_only=encoder_only)

    @property
    def info(self) -> EngineInfo:
        return self._info

    # -- the stages -----------------------------------------------------------------------------------------
    async def encode(self, requests: Sequence[EncodeRequest]) -> list[EncodedItem]:
        out = []
        for request in requests:
            png = await asyncio.to_thread(png_of, request.item)
            item = EncodedItem(
                request.item.modality,
                request.item.media_hash,
                request.span,
                TensorBuffer.from_array(np.frombuffer(png, dtype=np.uint8)),
            )
            if self.encoder_only:
                body = protocol.encoder_body(media_file(item), model=self._info.model)
                await self._post(protocol.CHAT_PATH, body)
            out.append(item)
        return out

    async def prefill(self, request: PrefillRequest) -> PrefillResult:
        prompt = request.prompt
        body = protocol.generate_body(
            prompt.token_ids,
            prompt.spans,
            [media_file(i) for i in request.items],
            protocol.sampling_params(request.sampling, max_tokens=1),
            model=self._info.model,
            stream=False,
            kv_transfer_params=protocol.REMOTE_DECODE,
        )
        answer = protocol.parse_prefill(await self._post(protocol.GENERATE_PATH, body))
        protocol.check_expanded(prompt.token_ids, answer.prompt_token_ids)
        return PrefillResult(
            prompt_len=len(prompt),
            first_token=answer.first_token,
            position_delta=0,
            kv=None,
            kv_layout=None,
            transfer_params=answer.kv_transfer_params,
            prompt_token_ids=prompt.token_ids,
            items=request.items,
        )

    def decode(self, request: DecodeRequest) -> AsyncIterator[TokenFrame]:
        prefill = request.prefill
        spans = tuple(i.span for i in prefill.items)
        prompt = RenderedPrompt(prefill.prompt_token_ids, spans)
        return self._stream(prompt, prefill.items, request.sampling, dict(prefill.transfer_params))

    def generate(
        self, prompt: RenderedPrompt, items: Sequence[EncodedItem], sampling: SamplingParams
    ) -> AsyncIterator[TokenFrame]:
        return self._stream(prompt, items, sampling, None)

    async def _stream(
        self,
        prompt: RenderedPrompt,
        items: Sequence[EncodedItem],
        sampling: SamplingParams,
        kv_transfer_params: Mapping[str, Any] | None,
    ) -> AsyncIterator[TokenFrame]:
        body = protocol.generate_body(
            prompt.token_ids,
            prompt.spans,
            [media_file(i) for i in items],
            protocol.sampling_params(sampling),
            model=self._info.model,
            stream=True,
            kv_transfer_params=kv_transfer_params,
        )
        reader, lines = protocol.StreamReader(), protocol.SseLines()
        checked = False
        # Leaving this generator (a cancel from the frontend) closes the response: vLLM aborts the request.
        async with self._client.stream("POST", protocol.GENERATE_PATH, json=body) as response:
            if response.status_code != 200:
                raise protocol.error_of(
                    response.status_code, (await response.aread()).decode(errors="replace")
                )
            # Every event that one read brought is ready now: their tokens go on as one frame.
            async for data in response.aiter_bytes():
                frames = [frame for line in lines.feed(data) for frame in reader.feed(line)]
                if not frames:
                    continue
                if not checked:
                    protocol.check_expanded(prompt.token_ids, reader.prompt_token_ids)
                    checked = True
                yield coalesce(frames)

    async def read_load(self) -> EngineLoad:
        """vLLM's own load gauges (its ``/metrics``), for the sidecar's contract metrics."""
        try:
            response = await self._client.get("/metrics", timeout=5.0)
        except httpx.HTTPError as exc:
            raise EngineError(f"the vLLM server's /metrics did not answer: {exc}") from exc
        return parse_load(response.text, protocol.VLLM_LOAD)

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EngineError(f"the vLLM server did not answer {path}: {exc}") from exc
        if response.status_code != 200:
            raise protocol.error_of(response.status_code, response.text)
        answer: dict[str, Any] = json.loads(response.content)
        return answer

    async def aclose(self) -> None:
        await self._client.aclose()
