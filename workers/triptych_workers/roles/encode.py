"""The encode role: media in, embeddings out, behind the encoder cache.

Serves ``encode``: each ``MediaRef`` is looked up in the cache by the hash it carries (or joined to the
computation already running for that hash); only a miss reads the media from the sender's data plane and
encodes it. The embeddings are published on this worker's data plane for prefill to read. The cache's keys
ride in this worker's load announcements, so the frontend sends the next request for the same item here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from triptych_workers.engines.errors import EngineError
from triptych_workers.roles.common import parse_work, publish_encoded
from triptych_workers.roles.messages import VERB_ENCODE, EncodeWork
from triptych_workers.roles.server import WorkerContext
from triptych_workers.transport import Handler, Request


def handlers(ctx: WorkerContext) -> Mapping[str, Handler]:
    encoder = ctx.encoder
    if encoder is None:
        raise EngineError("the encode role needs its encoder (stages must include encode)")

    async def encode(request: Request) -> AsyncIterator[bytes]:
        work = parse_work(EncodeWork, request.payload)
        for ref in work.items:
            encoded = await encoder.encode_ref(ctx.plane, ref, timeout_s=request.remaining())
            yield (await publish_encoded(ctx.plane, encoded)).dumps()

    return {VERB_ENCODE: encode}
