"""Encode scale-to-zero at the frontend: ``NatsPipeline`` holds a request with media while the encode pool
has no worker (NATS "no responders"), counted in ``triptych_pending_requests{role="encode"}``, until a
worker announces itself (then it is routed to that worker) or the hold's bound passes (``PoolUnavailable``,
a 503). Text-only requests never wait. The request plane and the data plane are fakes (no sockets)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import cast

import numpy as np
import pytest
from pydantic import ValidationError
from triptych_contract import METRIC_PENDING_REQUESTS
from triptych_workers.config import ServingConfig
from triptych_workers.engines.media import MediaItem, PlaceholderSpan, RenderedPrompt
from triptych_workers.engines.sampling import SamplingParams, TokenFrame
from triptych_workers.metrics import WorkerMetrics
from triptych_workers.roles.frontend import error_body
from triptych_workers.roles.messages import (
    VERB_ENCODE,
    VERB_PREFILL,
    EncodedRef,
    EncodeWork,
    FrameMessage,
    PrefillRef,
    TensorRef,
)
from triptych_workers.roles.pipeline import HOLD_MARGIN_S, NatsPipeline, PoolUnavailable
from triptych_workers.transport import (
    NoResponders,
    Reply,
    RequestClient,
    TransferDescriptor,
    TransferPlane,
    WorkerLoad,
)

DEPLOYMENT = "dcold"
STEPS = [
    FrameMessage(index=0, token_ids=(5,), text="a"),
    FrameMessage(index=1, token_ids=(6,), text="b", finish_reason="stop"),
]


class FakeEncodePool:
    """The encode pool as the frontend sees it: its board entries, and whether anything subscribes. It has no
    worker until ``up_after_s`` (never when ``None``); ``stale`` is a dead worker the board still lists."""

    def __init__(self, up_after_s: float | None, *, stale: bool = False) -> None:
        self._up_at = None if up_after_s is None else time.monotonic() + up_after_s
        self._worker: WorkerLoad | None = None
        self._stale = (
            [WorkerLoad("enc-dead", "encode", 0, 0, 1, 8, received=time.monotonic() - 1.0)] if stale else []
        )

    def up(self) -> bool:
        return self._up_at is not None and time.monotonic() >= self._up_at

    def workers(self) -> list[WorkerLoad]:
        if self.up() and self._worker is None:
            self._worker = WorkerLoad("enc-1", "encode", 0, 0, 1, 8)  # its first heartbeat, received now
        return [*self._stale, *([self._worker] if self._worker else [])]


class FakeStream:
    def __init__(self, replies: list[Reply]) -> None:
        self._replies = replies

    async def __aenter__(self) -> AsyncIterator[Reply]:
        return self._iterate()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    async def _iterate(self) -> AsyncIterator[Reply]:
        for reply in self._replies:
            yield reply


class FakeClient:
    """Answers encode (when the pool is up: "no responders" otherwise, as NATS does), prefill and decode;
    records every encode call's target (``None``: the pool's queue group)."""

    def __init__(self, pool: FakeEncodePool) -> None:
        self._pool = pool
        self.encode_calls: list[tuple[str | None, bool]] = []  # (worker_id, answered)

    async def call(
        self,
        role: str,
        verb: str,
        payload: bytes,
        *,
        timeout_s: float,
        worker_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[Reply]:
        assert timeout_s > 0
        if verb == VERB_PREFILL:
            ref = PrefillRef(prompt_len=4, first_token=5, position_delta=0, kv=None, kv_layout=None)
            return [Reply(ref.dumps(), {}, "prefill-1")]
        assert (role, verb) == ("encode", VERB_ENCODE)
        answered = self._pool.up() and worker_id in (None, "enc-1")
        self.encode_calls.append((worker_id, answered))
        if not answered:
            raise NoResponders("no worker subscribes to encode")
        (item,) = EncodeWork.model_validate_json(payload).items
        embeddings = TensorRef(descriptor="{}", shape=(item.span.length, 8), dtype="float32")
        encoded = EncodedRef(
            modality=item.modality, media_hash=item.media_hash, span=item.span, embeddings=embeddings
        )
        return [Reply(encoded.dumps(), {}, worker_id or "enc-1")]

    def stream(self, role: str, verb: str, payload: bytes, *, timeout_s: float) -> FakeStream:
        assert role == "decode"
        return FakeStream([Reply(step.dumps(), {}, "decode-1") for step in STEPS])


class FakePlane:
    async def publish(self, payload: object, meta: Mapping[str, str] | None = None) -> TransferDescriptor:
        return TransferDescriptor("t", "inline", "frontend", 0, dict(meta or {}), data=b"")


def _pipeline(
    pool: FakeEncodePool, metrics: WorkerMetrics, *, mode: str = "E/PD", cold_start_s: float = 30.0
) -> tuple[NatsPipeline, FakeClient]:
    client = FakeClient(pool)
    pipeline = NatsPipeline(
        cast(RequestClient, client),
        cast(TransferPlane, FakePlane()),
        mode,
        encode_workers=pool.workers,
        pending=metrics.pending,
        cold_start_timeout_s=cold_start_s,
    )
    return pipeline, client


def _pending(metrics: WorkerMetrics) -> float | None:
    return metrics.registry.get_sample_value(
        METRIC_PENDING_REQUESTS, {"role": "encode", "deployment": DEPLOYMENT}
    )


def _request(images: int) -> tuple[RenderedPrompt, list[MediaItem]]:
    media = [MediaItem("image", f"h{i}", np.zeros((4, 4, 3), dtype=np.uint8)) for i in range(images)]
    spans = tuple(PlaceholderSpan("image", 1 + 2 * i, 2, item.media_hash) for i, item in enumerate(media))
    return RenderedPrompt((1, *[9] * (2 * images), 2), spans), media


async def _generate(pipeline: NatsPipeline, images: int, deadline_s: float = 30.0) -> list[TokenFrame]:
    prompt, media = _request(images)
    deadline = time.monotonic() + deadline_s
    return [step async for step in pipeline.generate(prompt, media, SamplingParams(), deadline=deadline)]


@pytest.mark.parametrize("mode", ["E/PD", "E/P/D"])
async def test_a_held_request_waits_for_a_worker_then_is_routed_to_it(mode: str) -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, client = _pipeline(FakeEncodePool(up_after_s=0.5), metrics, mode=mode)
    started = time.monotonic()
    task = asyncio.create_task(_generate(pipeline, images=1))
    await asyncio.sleep(0.25)
    assert not task.done()
    assert _pending(metrics) == 1
    steps = await asyncio.wait_for(task, timeout=5)  # routed once the worker is up, not at a deadline
    assert time.monotonic() - started >= 0.5
    assert [s.text for s in steps] == ["a", "b"]
    # Tried the pool (nobody there), then, once the worker announced itself, sent to it by name.
    assert client.encode_calls[0] == (None, False)
    assert client.encode_calls[-1] == ("enc-1", True)
    assert _pending(metrics) == 0


async def test_a_hold_that_finds_no_worker_ends_in_a_503_after_the_cold_start_timeout() -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, client = _pipeline(FakeEncodePool(up_after_s=None), metrics, cold_start_s=0.3)
    started = time.monotonic()
    task = asyncio.create_task(_generate(pipeline, images=1))
    await asyncio.sleep(0.15)
    assert _pending(metrics) == 1
    with pytest.raises(PoolUnavailable) as failed:
        await asyncio.wait_for(task, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert _pending(metrics) == 0
    assert client.encode_calls == [(None, False)]  # asked once, then waited for a heartbeat: no busy loop
    status, body, outcome = error_body(failed.value)
    assert (status, outcome, body.error.code, body.error.type) == (
        503,
        "busy",
        "pool_unavailable",
        "service_unavailable",
    )
    assert body.error.message.startswith("no encode worker became ready within 0.3 s")
    assert "retry later" in body.error.message


async def test_the_request_deadline_bounds_the_hold_when_it_is_earlier(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, _ = _pipeline(FakeEncodePool(up_after_s=None), metrics, cold_start_s=60)
    started = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(PoolUnavailable):
        await asyncio.wait_for(_generate(pipeline, images=1, deadline_s=0.6), timeout=5)
    assert time.monotonic() - started >= 0.3  # it did hold, and not 60 s (the wait_for above)
    # It gives up HOLD_MARGIN_S before the deadline, so that the client hears why rather than a bare timeout.
    # Read from the bound it set rather than from a clock: the pipeline logs it when the hold starts.
    bounds = [float(m) for m in re.findall(r"holding a request for up to ([\d.]+) s", caplog.text)]
    assert bounds, caplog.text
    assert 0.3 <= bounds[0] <= 0.6 - HOLD_MARGIN_S
    assert _pending(metrics) == 0


async def test_a_request_with_several_images_is_one_pending_request() -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, client = _pipeline(FakeEncodePool(up_after_s=0.4), metrics)
    task = asyncio.create_task(_generate(pipeline, images=3))
    await asyncio.sleep(0.2)
    assert _pending(metrics) == 1
    assert [s.text for s in await asyncio.wait_for(task, timeout=5)] == ["a", "b"]
    assert [call for call in client.encode_calls if call[1]] == [("enc-1", True)] * 3
    assert _pending(metrics) == 0


async def test_a_stale_board_entry_does_not_end_the_hold() -> None:
    """A dead worker the board still lists (no heartbeat since) is no reason to send again: the hold waits
    for a fresh announcement, without hammering the request plane."""
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, client = _pipeline(FakeEncodePool(up_after_s=None, stale=True), metrics, cold_start_s=0.5)
    with pytest.raises(PoolUnavailable):
        await asyncio.wait_for(_generate(pipeline, images=1), timeout=5)
    assert client.encode_calls == [("enc-dead", False), (None, False)]  # the routed worker, then the pool
    assert _pending(metrics) == 0


async def test_a_client_that_leaves_during_the_hold_is_no_longer_pending() -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, _ = _pipeline(FakeEncodePool(up_after_s=None), metrics)
    task = asyncio.create_task(_generate(pipeline, images=2))
    await asyncio.sleep(0.15)
    assert _pending(metrics) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _pending(metrics) == 0


@pytest.mark.parametrize("mode", ["E/PD", "E/P/D"])
async def test_a_text_request_never_waits_for_encode(mode: str) -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    pipeline, client = _pipeline(FakeEncodePool(up_after_s=None), metrics, mode=mode)
    assert pipeline.ready()  # readiness does not depend on the encode pool
    task = asyncio.create_task(_generate(pipeline, images=0))
    while not task.done():
        assert _pending(metrics) == 0
        await asyncio.sleep(0)
    assert [s.text for s in task.result()] == ["a", "b"]  # answered although no encode worker ever came
    assert client.encode_calls == []
    assert _pending(metrics) == 0


def test_the_pending_series_exists_from_the_start_and_the_block_is_exception_safe() -> None:
    metrics = WorkerMetrics("frontend", DEPLOYMENT)
    expected = f'{METRIC_PENDING_REQUESTS}{{deployment="{DEPLOYMENT}",role="encode"}} 0.0'
    assert expected in metrics.exposition().decode()
    seen: list[float | None] = []

    def fail_while_pending() -> None:
        with metrics.pending("encode"):
            seen.append(_pending(metrics))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_while_pending()
    assert seen == [1]
    assert _pending(metrics) == 0


def test_cold_start_timeout_config() -> None:
    assert ServingConfig().cold_start_timeout_seconds == 180.0
    assert ServingConfig.model_validate({"coldStartTimeoutSeconds": 2.5}).cold_start_timeout_seconds == 2.5
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({"coldStartTimeoutSeconds": 0})
