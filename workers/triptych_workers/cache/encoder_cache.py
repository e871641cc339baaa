"""The encoder cache: embeddings by media hash, computed once however many requests want them at once.

Concurrency design (the part that is easy to get wrong):

* A miss starts the computation in **its own task**, not in the caller's. Every caller for that key, the
  one that caused the miss included, is a *waiter* that awaits the task through :func:`asyncio.shield`.
  Cancelling a waiter (a client hung up, a request timed out) therefore cancels only that waiter's ``await``:
  the others keep waiting and get the result or the exception.
* The task is cancelled only when its **last** waiter leaves: nobody wants the result any more, so the GPU
  time is given back. Its in-flight entry is dropped at that moment, so a caller arriving afterwards starts a
  fresh computation instead of joining one that is being torn down. (The alternative, letting abandoned
  computations run to completion to warm the cache, spends encoder time on requests nobody is waiting for
  under overload, exactly when it is scarcest.)
* A computation that raises is not cached; every waiter gets the same exception and the next call retries.
* The stored values are bounded in bytes (``size_of``) with LRU eviction. A value larger than the whole
  capacity is returned to its waiters but not stored, and counted as a refusal. Capacity 0 disables storing
  (the seed's default) while still coalescing concurrent misses.

One cache belongs to one event loop; it is not thread-safe (it needs no locks: every mutation happens between
two awaits).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")

SizeOf = Callable[[V], int]


def default_size_of(value: object) -> int:
    """Bytes held by ``value``: ``nbytes`` for arrays/tensors (numpy, torch), ``len`` for bytes-likes."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, bytes | bytearray):
        return len(value)
    raise TypeError(f"cannot size a {type(value).__name__}; pass size_of=")


@dataclass(frozen=True, slots=True)
class EncoderCacheStats:
    """A snapshot of the cache, as encode workers publish it.

    ``hits`` are lookups answered without starting a computation: from a stored entry, or by joining one in
    flight (``coalesced`` counts the latter separately). ``misses`` are lookups that started a computation.
    """

    entries: int
    bytes: int
    capacity: int
    utilization: float  # bytes / capacity, 0.0 when disabled
    hits: int
    misses: int
    coalesced: int
    evictions: int
    refusals: int
    hit_rate: float  # hits / (hits + misses), 0.0 before the first lookup
    in_flight: int


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    size: int


@dataclass(slots=True)
class _Flight(Generic[V]):
    task: asyncio.Task[V] | None = None
    waiters: int = 0


class EncoderCache(Generic[V]):
    """Byte-bounded LRU of computed values, one computation per key in flight. See the module docstring."""

    def __init__(self, capacity_bytes: int, *, size_of: SizeOf[V] = default_size_of) -> None:
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self._capacity = capacity_bytes
        self._size_of = size_of
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._bytes = 0
        self._in_flight: dict[Hashable, _Flight[V]] = {}
        self._hits = 0
        self._misses = 0
        self._coalesced = 0
        self._evictions = 0
        self._refusals = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self, limit: int | None = None) -> list[Hashable]:
        """Stored keys, most recently used first (at most ``limit``): what a worker announces it holds."""
        recent = reversed(self._entries)
        return list(recent) if limit is None else [k for _, k in zip(range(limit), recent, strict=False)]

    async def get_or_compute(
        self,
        key: Hashable,
        fn: Callable[[], Awaitable[V]],
        *,
        size_of: SizeOf[V] | None = None,
    ) -> V:
        """The value for ``key``: stored, shared with a computation in flight, or computed now by ``fn()``.

        ``fn`` runs at most once per key at a time, in a task of its own; its exception reaches every waiter
        and is not cached. Cancelling this call never affects other callers (see the module docstring).
        ``size_of`` overrides the cache's sizing function for this value.
        """
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self._hits += 1
            return entry.value

        flight = self._in_flight.get(key)
        if flight is None:
            self._misses += 1
            flight = _Flight()
            flight.task = asyncio.create_task(self._compute(key, flight, fn, size_of or self._size_of))
            self._in_flight[key] = flight
        else:
            self._hits += 1
            self._coalesced += 1
        return await self._wait(key, flight)

    async def _wait(self, key: Hashable, flight: _Flight[V]) -> V:
        task = flight.task
        assert task is not None  # set right after the flight is created, before anyone can wait on it
        flight.waiters += 1
        try:
            return await asyncio.shield(task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not task.done():
                # The last waiter left: nobody wants the value. Stop the work and forget the flight now, so
                # a later caller starts afresh rather than joining a task that is being cancelled.
                task.cancel()
                if self._in_flight.get(key) is flight:
                    del self._in_flight[key]

    async def _compute(
        self, key: Hashable, flight: _Flight[V], fn: Callable[[], Awaitable[V]], size_of: SizeOf[V]
    ) -> V:
        try:
            value = await fn()
            self._store(key, value, size_of(value))
            return value
        finally:
            if self._in_flight.get(key) is flight:
                del self._in_flight[key]

    def _store(self, key: Hashable, value: V, size: int) -> None:
        if size < 0:
            raise ValueError(f"size_of returned {size} for key {key!r}")
        if self._capacity == 0:
            return  # disabled: coalescing only, nothing is kept and nothing counts as refused
        if size > self._capacity:
            self._refusals += 1
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = _Entry(value, size)
        self._bytes += size
        while self._bytes > self._capacity:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size
            self._evictions += 1

    def clear(self) -> None:
        """Drop every stored entry (computations in flight are unaffected; counters are kept)."""
        self._entries.clear()
        self._bytes = 0

    def stats(self) -> EncoderCacheStats:
        lookups = self._hits + self._misses
        return EncoderCacheStats(
            entries=len(self._entries),
            bytes=self._bytes,
            capacity=self._capacity,
            utilization=self._bytes / self._capacity if self._capacity else 0.0,
            hits=self._hits,
            misses=self._misses,
            coalesced=self._coalesced,
            evictions=self._evictions,
            refusals=self._refusals,
            hit_rate=self._hits / lookups if lookups else 0.0,
            in_flight=len(self._in_flight),
        )
