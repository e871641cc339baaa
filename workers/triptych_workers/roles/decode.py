"""The decode role: KV cache in, tokens streamed out.

Serves ``decode``: the KV published by a prefill worker is read (and released there), the engine continues
from it, and every ``TokenFrame`` (the tokens that were ready together) goes back as one reply chunk. A
cancel from the frontend (client gone, deadline) cancels the handler, which closes the engine's generator:
generation stops at the next token.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from triptych_workers.engines.kv import DecodeRequest, PrefillResult
from triptych_workers.roles.common import fetch_tensor, parse_work, resolve_items
from triptych_workers.roles.messages import VERB_DECODE, DecodeWork
from triptych_workers.roles.server import WorkerContext
from triptych_workers.transport import Handler, Request


def handlers(ctx: WorkerContext) -> Mapping[str, Handler]:
    async def decode(request: Request) -> AsyncIterator[bytes]:
        started = time.monotonic()
        work = parse_work(DecodeWork, request.payload)
        ref = work.prefill
        kv = await fetch_tensor(ctx.plane, ref.kv, timeout_s=request.remaining()) if ref.kv else None
        items = await resolve_items(ctx.plane, ref.items, None, timeout_s=request.remaining())
        prefill = PrefillResult(
            prompt_len=ref.prompt_len,
            first_token=ref.first_token,
            position_delta=ref.position_delta,
            kv=kv,
            kv_layout=ref.kv_layout.unit() if ref.kv_layout is not None else None,
            transfer_params=dict(ref.transfer_params),
            prompt_token_ids=ref.prompt_token_ids,
            items=tuple(items),
        )
        frames = ctx.engine.decode(DecodeRequest(prefill, work.sampling.unit()))
        async for chunk in ctx.stream_frames(frames, started, kv_base=ref.prompt_len):
            yield chunk

    return {VERB_DECODE: decode}
