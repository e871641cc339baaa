"""The expected output of every end-to-end test of the reference pipeline: the greedy answers of one
in-process ``ReferenceEngine`` (no processes, no NATS, no pods), loaded from the same fixed-seed weights the
workers (and the pods' init containers) write. Imports torch: use from modules that ``importorskip`` it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from triptych_workers.engines.base import EncodeRequest, MediaItem, SamplingParams
from triptych_workers.engines.reference.engine import ReferenceEngine
from triptych_workers.hashing import hash_media
from triptych_workers.media.image import decode_image

# A request: its message content (a string, or OpenAI content parts) and the PNG bytes of its images, in the
# order the parts show them.
Request = tuple[str | list[dict[str, Any]], Sequence[bytes]]


def greedy_answers(model_dir: Path, requests: Mapping[str, Request], *, max_tokens: int) -> dict[str, str]:
    """Each request's greedy answer (temperature 0, ``max_tokens``), by the request's key."""

    async def run() -> dict[str, str]:
        engine = await ReferenceEngine.load(model_dir, num_threads=1)
        try:
            out = {}
            for key, (content, images) in requests.items():
                media = [
                    MediaItem("image", hash_media(png).hex, np.asarray(decode_image(png))) for png in images
                ]
                prompt = engine.render_chat([{"role": "user", "content": content}], media)
                encoded = await engine.encode(
                    [EncodeRequest(m, s) for m, s in zip(media, prompt.spans, strict=True)]
                )
                steps = engine.generate(prompt, encoded, SamplingParams(max_tokens=max_tokens))
                out[key] = "".join([s.text async for s in steps])
            return out
        finally:
            await engine.aclose()

    return asyncio.run(run())
