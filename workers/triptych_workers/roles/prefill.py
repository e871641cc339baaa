"""The prefill role: prompt + embeddings in, first token and KV cache out.

Serves ``prefill``: the items' embeddings are read from the encoders' data planes (or, when this worker
also has the encode stage -- EP/D -- encoded here from the media), the engine prefills, and the KV cache is
published on this worker's data plane; decode reads it and releases it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from triptych_workers.engines.kv import PrefillRequest
from triptych_workers.roles.common import parse_work, publish_encoded, publish_tensor, resolve_items
from triptych_workers.roles.messages import VERB_PREFILL, KVLayoutMessage, PrefillRef, PrefillWork
from triptych_workers.roles.server import WorkerContext
from triptych_workers.transport import Handler, Request


def handlers(ctx: WorkerContext) -> Mapping[str, Handler]:
    async def prefill(request: Request) -> AsyncIterator[bytes]:
        work = parse_work(PrefillWork, request.payload)
        items = await resolve_items(ctx.plane, work.items, ctx.encoder, timeout_s=request.remaining())
        result = await ctx.engine.prefill(
            PrefillRequest(work.prompt.unit(), tuple(items), work.sampling.unit())
        )
        kv = await publish_tensor(ctx.plane, result.kv) if result.kv is not None else None
        yield PrefillRef(
            prompt_len=result.prompt_len,
            first_token=result.first_token,
            position_delta=result.position_delta,
            kv=kv,
            kv_layout=KVLayoutMessage.of(result.kv_layout) if result.kv_layout is not None else None,
            transfer_params=dict(result.transfer_params),
            prompt_token_ids=result.prompt_token_ids,
            items=tuple([await publish_encoded(ctx.plane, item) for item in result.items]),
        ).dumps()

    return {VERB_PREFILL: prefill}
