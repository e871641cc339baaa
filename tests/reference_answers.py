"""The expected output of every end-to-end test of the reference pipeline: the greedy answers of one
in-process ``ReferenceEngine`` (no processes, no NATS, no pods), loaded from the same fixed-seed weights the
workers (and the pods' init containers) write. Imports torch: use from modules that ``importorskip`` it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openai
from triptych_workers.engines.media import EncodeRequest, MediaItem
from triptych_workers.engines.reference.engine import ReferenceEngine
from triptych_workers.engines.sampling import SamplingParams
from triptych_workers.hashing import hash_media
from triptych_workers.media.image import decode_image

# A request: its message content (a string, or OpenAI content parts) and the PNG bytes of its images, in the
# order the parts show them.
Request = tuple[str | list[dict[str, Any]], Sequence[bytes]]


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: list[int]  # the generated tokens
    prompt_token_ids: list[int]  # the rendered prompt, media placeholders expanded


def greedy_answers(
    model_dir: Path, requests: Mapping[str, Request], *, max_tokens: int, **sampling: Any
) -> dict[str, Answer]:
    """Each request's greedy answer (temperature 0, ``max_tokens``, any other ``SamplingParams`` fields in
    ``sampling``), by the request's key."""
    params = SamplingParams(max_tokens=max_tokens, **sampling)

    async def run() -> dict[str, Answer]:
        engine = await ReferenceEngine.load(model_dir, num_threads=1)
        try:
            out = {}
            for key, (content, images) in requests.items():
                media = [
                    MediaItem("image", hash_media(png).hex, np.asarray(decode_image(png))) for png in images
                ]
                prompt = engine.prompter.render_chat([{"role": "user", "content": content}], media)
                encoded = await engine.encode(
                    [EncodeRequest(m, s) for m, s in zip(media, prompt.spans, strict=True)]
                )
                frames = [f async for f in engine.generate(prompt, encoded, params)]
                out[key] = Answer(
                    "".join(f.text for f in frames),
                    [t for f in frames for t in f.token_ids],
                    list(prompt.token_ids),
                )
            return out
        finally:
            await engine.aclose()

    return asyncio.run(run())


def streamed_answer(
    client: openai.OpenAI,
    model: str,
    content: Any,
    *,
    max_tokens: int,
    ignore_eos: bool = False,
    sampling: Mapping[str, Any] | None = None,
) -> Answer:
    """The same greedy request through an OpenAI-compatible server, streamed, with vLLM's
    ``return_token_ids`` so the generated and the prompt's token ids can be compared, not just the text
    (and ``ignore_eos``, for an answer of exactly ``max_tokens`` tokens; ``sampling``: more request fields,
    as the client writes them, e.g. ``{"logit_bias": {"7": 100}}``)."""
    answer, _, _ = timed_streamed_answer(
        client, model, content, max_tokens=max_tokens, ignore_eos=ignore_eos, sampling=sampling
    )
    return answer


def timed_streamed_answer(
    client: openai.OpenAI,
    model: str,
    content: Any,
    *,
    max_tokens: int,
    ignore_eos: bool = False,
    sampling: Mapping[str, Any] | None = None,
) -> tuple[Answer, float, float]:
    """``streamed_answer``, with when its first token and its end reached this client (monotonic)."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        stream=True,
        temperature=0,
        max_tokens=max_tokens,
        extra_body={"return_token_ids": True, "ignore_eos": ignore_eos, **(sampling or {})},
    )
    text: list[str] = []
    token_ids: list[int] = []
    prompt_token_ids: list[int] = []
    first = 0.0
    for chunk in stream:
        prompt_token_ids.extend((chunk.model_extra or {}).get("prompt_token_ids") or [])
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            ids = (choice.model_extra or {}).get("token_ids") or []
            if ids and not token_ids:
                first = time.monotonic()
            token_ids.extend(ids)
    return Answer("".join(text), token_ids, prompt_token_ids), first, time.monotonic()
