"""The NATS request plane against a real nats-server on loopback: streamed replies, deadlines, cancellation
reaching the handler, busy rejection and queue-depth accounting, direct-subject routing, heartbeats, and
recovery after the server restarts (workers not restarted)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry
from triptych_workers.transport import (
    LoadBoard,
    NatsConnection,
    NoResponders,
    Request,
    RequestClient,
    RequestTimeout,
    Subjects,
    TransportMetrics,
    WorkerBusy,
    WorkerLost,
    WorkerServer,
    WorkerSettings,
)

from tests.integration.workers.conftest import NatsServerProcess, wait_until

SUBJECTS = Subjects("ns1", "demo")


async def echo(request: Request) -> AsyncIterator[bytes]:
    for i in range(3):
        yield request.payload + b"-%d" % i


class Gate:
    """A handler that blocks until opened, recording starts and the cancellations it observes."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def handler(self, request: Request) -> AsyncIterator[bytes]:
        self.started.append(request.id)
        yield b"first"
        try:
            await asyncio.wait_for(self.open.wait(), timeout=30)
        except asyncio.CancelledError:
            self.cancelled.append(request.id)
            raise
        yield b"second"


@pytest.fixture
async def conns(nats_server: NatsServerProcess) -> AsyncIterator[Callable[[], Awaitable[NatsConnection]]]:
    opened: list[NatsConnection] = []

    async def connect() -> NatsConnection:
        conn = NatsConnection.for_servers([nats_server.url], name=f"test-{len(opened)}")
        await conn.start()
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


@pytest.fixture
def metrics() -> TransportMetrics:
    return TransportMetrics(CollectorRegistry())


async def test_streamed_reply_in_order(conns: Callable[[], Awaitable[NatsConnection]]) -> None:
    worker = WorkerServer(await conns(), SUBJECTS, "encode", "w1", {"echo": echo})
    await worker.start()
    try:
        client = RequestClient(await conns(), SUBJECTS)
        async with client.stream("encode", "echo", b"hi", timeout_s=5) as replies:
            chunks = [r.data async for r in replies]
            assert replies.worker_id == "w1"
        assert chunks == [b"hi-0", b"hi-1", b"hi-2"]
    finally:
        await worker.close()


async def test_no_worker_is_no_responders(conns: Callable[[], Awaitable[NatsConnection]]) -> None:
    client = RequestClient(await conns(), SUBJECTS)
    started = time.monotonic()
    with pytest.raises(NoResponders):
        await client.call("prefill", "run", b"x", timeout_s=30)
    # Bounds here sit halfway to what the failure would take (here the 30 s timeout), never near what
    # success takes, so a slow shared runner cannot fail them.
    assert time.monotonic() - started < 15


async def slow(request: Request) -> AsyncIterator[bytes]:
    await asyncio.sleep(1.5)
    yield b"done"


async def stuck(request: Request) -> AsyncIterator[bytes]:
    await asyncio.sleep(60)  # longer than any test's deadline: it ends only by cancellation
    yield b"never"


async def test_keepalives_tell_a_slow_worker_from_a_lost_one(
    conns: Callable[[], Awaitable[NatsConnection]],
) -> None:
    settings = WorkerSettings(keepalive_interval_s=0.1)
    alive = WorkerServer(await conns(), SUBJECTS, "encode", "alive", {"slow": slow}, settings=settings)
    await alive.start()
    client = RequestClient(await conns(), SUBJECTS)
    try:
        # Three times longer than the liveness timeout, but the worker keeps saying it holds the request.
        async with client.stream("encode", "slow", b"x", timeout_s=10, liveness_timeout_s=0.5) as replies:
            assert [r.data async for r in replies] == [b"done"]
    finally:
        await alive.close()

    # The worker's connection dies while it holds a request that would never end by itself: nothing more
    # arrives, and the caller knows within the liveness timeout instead of waiting for the deadline.
    # (The liveness timeout is larger here: on a loaded CI runner, "accepted" once took longer than 0.5 s.)
    worker_conn = await conns()
    lost = WorkerServer(
        worker_conn, SUBJECTS, "encode", "lost", {"stuck": stuck},
        settings=WorkerSettings(keepalive_interval_s=0.1, drain_timeout_s=0.5),
    )  # fmt: skip
    await lost.start()
    try:
        started = time.monotonic()
        async with client.stream("encode", "stuck", b"x", timeout_s=30, liveness_timeout_s=2) as replies:
            first = asyncio.create_task(anext(aiter(replies)))
            # Accepted and running once the stream knows its worker (waited for, not assumed after a sleep);
            # should the stream end first, awaiting it says why.
            async with asyncio.timeout(10):
                while replies.worker_id is None and not first.done():  # noqa: ASYNC110 - no event for it
                    await asyncio.sleep(0.01)
            if first.done():
                await first
            assert replies.worker_id == "lost"
            await worker_conn.close()
            with pytest.raises(WorkerLost):
                await first
        assert time.monotonic() - started < 15  # the deadline would have taken 30 s
    finally:
        with contextlib.suppress(Exception):
            await lost.close()


async def test_deadline_times_out_and_the_worker_stops(
    conns: Callable[[], Awaitable[NatsConnection]],
) -> None:
    gate = Gate()
    worker = WorkerServer(await conns(), SUBJECTS, "encode", "w1", {"run": gate.handler})
    await worker.start()
    try:
        client = RequestClient(await conns(), SUBJECTS)
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.call("encode", "run", b"x", timeout_s=0.5)
        assert 0.4 < time.monotonic() - started < 15  # the gate never opens: without a deadline, no end
        # The deadline travelled with the request: the handler itself was stopped, not left running.
        assert await wait_until(lambda: len(gate.cancelled) == 1)
        assert await wait_until(lambda: worker.in_flight == 0)
    finally:
        await worker.close()


async def test_caller_cancellation_reaches_the_handler(
    conns: Callable[[], Awaitable[NatsConnection]],
) -> None:
    gate = Gate()
    worker = WorkerServer(await conns(), SUBJECTS, "decode", "w1", {"run": gate.handler})
    await worker.start()
    try:
        client = RequestClient(await conns(), SUBJECTS)
        async with client.stream("decode", "run", b"x", timeout_s=30) as replies:
            first = await anext(replies)
            assert first.data == b"first"
            assert worker.in_flight == 1
        # Leaving the block early sent a cancel to the worker's control subject.
        assert await wait_until(lambda: gate.cancelled == gate.started, timeout_s=5)
        assert await wait_until(lambda: worker.in_flight == 0)
    finally:
        await worker.close()


async def test_busy_rejection_and_queue_depth(
    conns: Callable[[], Awaitable[NatsConnection]], metrics: TransportMetrics
) -> None:
    gate = Gate()
    settings = WorkerSettings(concurrency=1, queue_capacity=2, heartbeat_interval_s=0.1)
    worker = WorkerServer(
        await conns(), SUBJECTS, "encode", "w1", {"run": gate.handler}, settings=settings, metrics=metrics
    )
    await worker.start()
    try:
        client = RequestClient(await conns(), SUBJECTS)
        streams = [client.stream("encode", "run", b"%d" % i, timeout_s=20) for i in range(3)]
        await streams[0].open()  # the first one runs (and leaves the queue) before the others arrive
        assert await wait_until(lambda: worker.in_flight == 1)
        for stream in streams[1:]:
            await stream.open()
        assert await wait_until(lambda: worker.in_flight == 1 and worker.queue_depth == 2)
        registry = metrics.registry
        labels = {"role": "encode", "deployment": "demo"}
        assert registry.get_sample_value("triptych_queue_depth", labels) == 2
        assert registry.get_sample_value("triptych_requests_in_flight", labels) == 1
        with pytest.raises(WorkerBusy) as busy:
            await client.call("encode", "run", b"overflow", timeout_s=5)
        assert busy.value.worker_id == "w1"
        assert registry.get_sample_value("triptych_requests_rejected_total", labels) == 1
        gate.open.set()
        for stream in streams:
            async with stream:
                assert [r.data async for r in stream] == [b"first", b"second"]
        assert await wait_until(lambda: worker.queue_depth == 0 and worker.in_flight == 0)
        assert registry.get_sample_value("triptych_queue_depth", labels) == 0
    finally:
        gate.open.set()
        await worker.close()


async def test_a_burst_up_to_capacity_is_accepted_while_consumers_are_idle(
    conns: Callable[[], Awaitable[NatsConnection]], metrics: TransportMetrics
) -> None:
    """concurrency + queue_capacity requests sent at once, every consumer idle: all accepted, the first
    `concurrency` run at once, the rest wait (queue depth); one more is refused. (A burst reaches the worker
    in one callback run, before any idle consumer takes a request: a queue bounded at queue_capacity refused
    all but the first queue_capacity of these, as seen under vLLM's benchmark client at 32 streams.)"""
    gate = Gate()
    settings = WorkerSettings(concurrency=8, queue_capacity=2, heartbeat_interval_s=0.1)
    worker = WorkerServer(
        await conns(), SUBJECTS, "decode", "w1", {"run": gate.handler}, settings=settings, metrics=metrics
    )
    await worker.start()
    try:
        client = RequestClient(await conns(), SUBJECTS)
        streams = [client.stream("decode", "run", b"%d" % i, timeout_s=20) for i in range(10)]
        await asyncio.gather(*(stream.open() for stream in streams))
        assert await wait_until(lambda: worker.in_flight == 8 and worker.queue_depth == 2)
        with pytest.raises(WorkerBusy):
            await client.call("decode", "run", b"overflow", timeout_s=5)
        labels = {"role": "decode", "deployment": "demo"}
        assert metrics.registry.get_sample_value("triptych_requests_rejected_total", labels) == 1
        gate.open.set()
        for stream in streams:
            async with stream:
                assert [r.data async for r in stream] == [b"first", b"second"]
        assert await wait_until(lambda: worker.queue_depth == 0 and worker.in_flight == 0)
    finally:
        gate.open.set()
        await worker.close()


async def test_direct_subject_and_heartbeats(conns: Callable[[], Awaitable[NatsConnection]]) -> None:
    settings = WorkerSettings(heartbeat_interval_s=0.1)
    workers = [
        WorkerServer(
            await conns(),
            SUBJECTS,
            "encode",
            wid,
            {"echo": echo},
            settings=settings,
            cache_keys=functools.partial(lambda w: [f"hash-of-{w}"], wid),
        )
        for wid in ("w1", "w2")
    ]
    board = LoadBoard(await conns(), SUBJECTS, "encode", max_age_s=2)
    await board.start()
    for worker in workers:
        await worker.start()
    try:
        assert await board.wait_for(lambda ws: {w.worker_id for w in ws} == {"w1", "w2"}, timeout_s=5)
        assert [w.worker_id for w in board.holders("hash-of-w2")] == ["w2"]
        client = RequestClient(await conns(), SUBJECTS)
        for _ in range(6):
            replies = await client.call("encode", "echo", b"d", timeout_s=5, worker_id="w2")
            assert {r.worker_id for r in replies} == {"w2"}
        pool = [await client.call("encode", "echo", b"p", timeout_s=5) for _ in range(4)]
        assert all(len(r) == 3 for r in pool)
        await workers[0].close()
        assert await board.wait_for(lambda ws: [w.worker_id for w in ws] == ["w2"], timeout_s=5)
    finally:
        for worker in workers:
            await worker.close()
        await board.close()


async def test_recovers_after_nats_restart(
    nats_server: NatsServerProcess, conns: Callable[[], Awaitable[NatsConnection]]
) -> None:
    worker_conn = await conns()
    worker = WorkerServer(worker_conn, SUBJECTS, "prefill", "w1", {"echo": echo})
    await worker.start()
    client_conn = await conns()
    client = RequestClient(client_conn, SUBJECTS)
    try:
        assert len(await client.call("prefill", "echo", b"a", timeout_s=5)) == 3
        nats_server.stop()
        assert await wait_until(lambda: not worker_conn.is_connected and not client_conn.is_connected)
        with pytest.raises(RequestTimeout):  # no server: the deadline still holds, no hang
            await client.call("prefill", "echo", b"b", timeout_s=0.3)
        nats_server.start()
        assert await wait_until(lambda: worker_conn.is_connected and client_conn.is_connected, timeout_s=10)
        # Subscriptions were replayed on reconnect; a few attempts cover the last SUB reaching the server.
        deadline = time.monotonic() + 10
        while True:
            try:
                replies = await client.call("prefill", "echo", b"c", timeout_s=2)
                break
            except (NoResponders, RequestTimeout):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert [r.data for r in replies] == [b"c-0", b"c-1", b"c-2"]
        assert worker_conn.reconnects >= 1
    finally:
        await worker.close()
