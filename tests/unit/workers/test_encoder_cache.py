"""The encoder cache under load, cancellation of each party, exceptions, LRU by bytes and refusals."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from triptych_workers.cache import EncoderCache, EncoderCacheStats, default_size_of

pytestmark = pytest.mark.timeout(30)


class Computation:
    """An ``fn`` for the cache that counts its runs and finishes only when the test says so."""

    def __init__(self, value: bytes = b"x" * 10) -> None:
        self.value = value
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.value


async def settle() -> None:
    """Let every ready task run until all are blocked again."""
    for _ in range(5):
        await asyncio.sleep(0)


# ------------------------------------------------------------------------------------------ coalescing


async def test_hundreds_of_concurrent_misses_compute_once() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    work = Computation()
    callers = [asyncio.create_task(cache.get_or_compute("k", work)) for _ in range(500)]
    await settle()
    assert cache.stats().in_flight == 1
    work.release.set()
    results = await asyncio.gather(*callers)
    assert work.calls == 1
    assert all(r is work.value for r in results)
    stats = cache.stats()
    assert (stats.misses, stats.hits, stats.coalesced, stats.in_flight, stats.entries) == (1, 499, 499, 0, 1)


async def test_many_keys_under_load_compute_once_each() -> None:
    cache: EncoderCache[bytes] = EncoderCache(10_000)
    calls: dict[int, int] = {}

    async def compute(key: int) -> bytes:
        calls[key] = calls.get(key, 0) + 1
        await asyncio.sleep(0.001 * (key % 3))
        return bytes([key]) * 8

    async def request(key: int) -> bytes:
        return await cache.get_or_compute(key, lambda: compute(key))

    keys = [i % 20 for i in range(600)]
    results = await asyncio.gather(*(request(k) for k in keys))
    assert results == [bytes([k]) * 8 for k in keys]
    assert calls == dict.fromkeys(range(20), 1)
    assert cache.stats().misses == 20
    assert cache.stats().hits == 580


async def test_hit_after_completion_does_not_call_fn() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    work = Computation()
    work.release.set()
    assert await cache.get_or_compute("k", work) == work.value
    assert await cache.get_or_compute("k", work) == work.value
    assert work.calls == 1
    assert cache.stats().hits == 1
    assert cache.stats().hit_rate == 0.5


# ------------------------------------------------------------------------------------------ cancellation


async def test_cancelling_the_starter_does_not_cancel_the_waiters() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    work = Computation()
    starter = asyncio.create_task(cache.get_or_compute("k", work))
    await work.started.wait()
    waiters = [asyncio.create_task(cache.get_or_compute("k", work)) for _ in range(10)]
    await settle()
    starter.cancel()
    await settle()
    assert starter.cancelled()
    assert not work.cancelled
    work.release.set()
    assert await asyncio.gather(*waiters) == [work.value] * 10
    assert work.calls == 1
    assert "k" in cache  # the result was still worth keeping: others wanted it


async def test_cancelling_a_waiter_affects_nobody_else() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    work = Computation()
    starter = asyncio.create_task(cache.get_or_compute("k", work))
    waiters = [asyncio.create_task(cache.get_or_compute("k", work)) for _ in range(3)]
    await settle()
    waiters[1].cancel()
    await settle()
    work.release.set()
    assert await starter == work.value
    assert await waiters[0] == work.value
    assert await waiters[2] == work.value
    with pytest.raises(asyncio.CancelledError):
        await waiters[1]
    assert work.calls == 1
    assert not work.cancelled


async def test_cancelling_everyone_cancels_the_work_and_the_next_call_starts_afresh() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    work = Computation()
    callers = [asyncio.create_task(cache.get_or_compute("k", work)) for _ in range(5)]
    await work.started.wait()
    for caller in callers:
        caller.cancel()
    await settle()
    assert work.cancelled  # nobody wanted the value any more: the encoder time is given back
    assert cache.stats().in_flight == 0
    assert "k" not in cache

    fresh = Computation(b"fresh")
    fresh.release.set()
    assert await cache.get_or_compute("k", fresh) == b"fresh"
    assert fresh.calls == 1


async def test_a_caller_arriving_after_everyone_left_does_not_join_the_dying_task() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    slow_to_die = asyncio.Event()

    async def stubborn() -> bytes:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await slow_to_die.wait()  # cleanup that takes a while
            raise
        return b"never"

    only = asyncio.create_task(cache.get_or_compute("k", stubborn))
    await settle()
    only.cancel()
    await settle()
    late_work = Computation(b"late")
    late_work.release.set()
    late = asyncio.create_task(cache.get_or_compute("k", late_work))
    assert await asyncio.wait_for(late, 5) == b"late"  # not stuck behind the task being torn down
    slow_to_die.set()
    await settle()
    assert await cache.get_or_compute("k", late_work) == b"late"
    assert late_work.calls == 1


async def test_waiters_with_timeouts_do_not_strand_others() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    work = Computation()
    impatient = [
        asyncio.create_task(asyncio.wait_for(cache.get_or_compute("k", work), 0.01)) for _ in range(5)
    ]
    patient = asyncio.create_task(cache.get_or_compute("k", work))
    for task in impatient:
        with pytest.raises(TimeoutError):
            await task
    assert not patient.done()
    work.release.set()
    assert await asyncio.wait_for(patient, 5) == work.value
    assert work.calls == 1


# ------------------------------------------------------------------------------------------ exceptions


class EncoderCrashedError(RuntimeError):
    pass


async def test_exception_reaches_every_waiter_is_not_cached_and_is_retried() -> None:
    cache: EncoderCache[bytes] = EncoderCache(1_000)
    calls = 0
    gate = asyncio.Event()

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise EncoderCrashedError(f"attempt {calls}")

    callers = [asyncio.create_task(cache.get_or_compute("k", failing)) for _ in range(50)]
    await settle()
    gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, EncoderCrashedError) and str(r) == "attempt 1" for r in results)
    assert "k" not in cache
    assert cache.stats().in_flight == 0

    with pytest.raises(EncoderCrashedError, match="attempt 2"):
        await cache.get_or_compute("k", failing)
    assert await cache.get_or_compute("k", lambda: asyncio.sleep(0, b"ok")) == b"ok"
    assert cache.stats().misses == 3


# ------------------------------------------------------------------------------------------ bytes and LRU


def arr(nbytes: int) -> np.ndarray:
    return np.zeros(nbytes, dtype=np.uint8)


async def put(cache: EncoderCache[np.ndarray], key: str, nbytes: int) -> None:
    await cache.get_or_compute(key, lambda: asyncio.sleep(0, arr(nbytes)))


async def test_lru_eviction_is_by_bytes_and_recency() -> None:
    cache: EncoderCache[np.ndarray] = EncoderCache(100)
    await put(cache, "a", 40)
    await put(cache, "b", 40)
    await put(cache, "a", 40)  # a hit: "a" becomes most recent
    await put(cache, "c", 40)  # 120 > 100: evicts the least recent, "b"
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    await put(cache, "d", 90)  # needs 90: evicts "a" and "c"
    assert len(cache) == 1
    assert "d" in cache
    stats = cache.stats()
    assert stats.bytes == 90
    assert stats.evictions == 3
    assert stats.utilization == pytest.approx(0.9)


async def test_oversize_values_are_returned_but_refused_and_counted() -> None:
    cache: EncoderCache[np.ndarray] = EncoderCache(100)
    await put(cache, "small", 50)
    value = await cache.get_or_compute("huge", lambda: asyncio.sleep(0, arr(101)))
    assert value.nbytes == 101
    assert "huge" not in cache
    assert "small" in cache  # refusing did not evict anything
    assert cache.stats().refusals == 1
    assert cache.stats().evictions == 0
    await put(cache, "exact", 100)  # exactly the capacity fits (evicting "small")
    assert "exact" in cache


async def test_capacity_zero_stores_nothing_but_still_coalesces() -> None:
    cache: EncoderCache[bytes] = EncoderCache(0)
    work = Computation()
    callers = [asyncio.create_task(cache.get_or_compute("k", work)) for _ in range(20)]
    await settle()
    work.release.set()
    await asyncio.gather(*callers)
    assert work.calls == 1
    assert len(cache) == 0
    stats = cache.stats()
    assert (stats.refusals, stats.utilization, stats.capacity, stats.bytes) == (0, 0.0, 0, 0)
    await cache.get_or_compute("k", work)
    assert work.calls == 2  # nothing was kept


async def test_per_call_size_of_overrides_the_default() -> None:
    cache: EncoderCache[object] = EncoderCache(100)
    await cache.get_or_compute("obj", lambda: asyncio.sleep(0, object()), size_of=lambda _: 60)
    assert cache.stats().bytes == 60
    with pytest.raises(TypeError, match="size_of"):
        await cache.get_or_compute("other", lambda: asyncio.sleep(0, object()))
    assert "other" not in cache


def test_default_size_of() -> None:
    assert default_size_of(np.zeros((4, 8), dtype=np.float16)) == 64
    assert default_size_of(b"12345") == 5
    assert default_size_of(bytearray(3)) == 3
    with pytest.raises(TypeError):
        default_size_of("text")


async def test_stats_snapshot_and_clear() -> None:
    cache: EncoderCache[np.ndarray] = EncoderCache(1_000)
    assert cache.stats() == EncoderCacheStats(
        entries=0, bytes=0, capacity=1_000, utilization=0.0, hits=0, misses=0, coalesced=0,
        evictions=0, refusals=0, hit_rate=0.0, in_flight=0,
    )  # fmt: skip
    await put(cache, "a", 250)
    await put(cache, "a", 250)
    await put(cache, "b", 250)
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.utilization, stats.hits, stats.misses) == (2, 500, 0.5, 1, 2)
    assert stats.hit_rate == pytest.approx(1 / 3)
    with pytest.raises(AttributeError):
        stats.hits = 5  # type: ignore[misc]
    cache.clear()
    assert (cache.stats().entries, cache.stats().bytes, cache.stats().hits) == (0, 0, 1)


def test_negative_capacity_is_rejected() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EncoderCache(-1)
