"""The aggregated roles: ``pd`` (prefill + decode, E/PD) and ``epd`` (everything, EPD).

Serves ``generate``: the items' embeddings are read from the encoders' data planes (PD) or encoded here
behind this worker's encoder cache (EPD), then the engine prefills and decodes with the KV kept in its own
memory, and the token frames stream back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from triptych_workers.roles.common import parse_work, resolve_items
from triptych_workers.roles.messages import VERB_GENERATE, PrefillWork
from triptych_workers.roles.server import WorkerContext
from triptych_workers.transport import Handler, Request


def handlers(ctx: WorkerContext) -> Mapping[str, Handler]:
    async def generate(request: Request) -> AsyncIterator[bytes]:
        started = time.monotonic()
        work = parse_work(PrefillWork, request.payload)
        items = await resolve_items(ctx.plane, work.items, ctx.encoder, timeout_s=request.remaining())
        prompt = work.prompt.unit()
        frames = ctx.engine.generate(prompt, items, work.sampling.unit())
        async for chunk in ctx.stream_frames(frames, started, kv_base=len(prompt)):
            yield chunk

    return {VERB_GENERATE: generate}
