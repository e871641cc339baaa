"""Encoder-cache-aware routing: a pure function from an item's media hash and the encode workers' last load
announcements to the worker that should encode it.

Rules, in order:

1. Only workers that can take work: not leaving, local queue not full.
2. A worker whose announced cache holds the item wins (the embedding costs a copy, not an encoder run),
   the least loaded such holder first, unless it is more than ``max_extra_load`` requests busier than the
   least loaded worker overall (a hot item must not pin all its traffic to one overloaded worker).
3. Otherwise the least loaded worker. Ties are broken by rendezvous hashing on (item, worker), so requests for
   one new item that arrive before any announcement mentions it still tend to land on the same worker, and
   its next requests hit there.

``None`` means "no worker known": the caller sends to the role's queue group and NATS picks one.

``serving.encodeRouting`` picks the policy: ``cache-aware`` (the rules above, the default) or ``round-robin``
(``RoundRobin``: every worker with room in turn, caches ignored -- the common baseline, e.g. when the encoder
cache is off). ``encode_router`` builds the one the config names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Protocol

from triptych_contract import EncodeRouting


class EncodeWorkerView(Protocol):
    """What routing reads of a worker's load announcement (``transport.WorkerLoad`` has these)."""

    @property
    def worker_id(self) -> str: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def queue_capacity(self) -> int: ...
    @property
    def cache_keys(self) -> tuple[str, ...]: ...
    @property
    def leaving(self) -> bool: ...


DEFAULT_MAX_EXTRA_LOAD = 4


def _load(worker: EncodeWorkerView) -> int:
    return worker.queue_depth + worker.in_flight


def _has_room(worker: EncodeWorkerView) -> bool:
    return not worker.leaving and _load(worker) < worker.concurrency + worker.queue_capacity


def _rendezvous(item_hash: str, worker_id: str) -> bytes:
    return hashlib.blake2b(f"{item_hash}\0{worker_id}".encode(), digest_size=8).digest()


def choose_encode_worker(
    item_hash: str,
    workers: Sequence[EncodeWorkerView],
    *,
    max_extra_load: int = DEFAULT_MAX_EXTRA_LOAD,
) -> str | None:
    """The id of the encode worker for ``item_hash``, or ``None`` to let the pool's queue group decide."""
    candidates = [w for w in workers if _has_room(w)]
    if not candidates:
        return None
    least = min(_load(w) for w in candidates)
    holders = [w for w in candidates if item_hash in w.cache_keys and _load(w) <= least + max_extra_load]
    if holders:
        best = min(_load(w) for w in holders)
        pool = [w for w in holders if _load(w) == best]
    else:
        pool = [w for w in candidates if _load(w) == least]
    return max(pool, key=lambda w: _rendezvous(item_hash, w.worker_id)).worker_id


EncodeRouter = Callable[[str, Sequence[EncodeWorkerView]], str | None]
"""``(item_hash, workers) -> worker id``, or ``None`` for the pool's queue group."""


class RoundRobin:
    """Each worker that can take work in turn (in worker-id order), whatever its cache holds."""

    def __init__(self) -> None:
        self._turn = 0

    def __call__(self, item_hash: str, workers: Sequence[EncodeWorkerView]) -> str | None:
        candidates = sorted((w for w in workers if _has_room(w)), key=lambda w: w.worker_id)
        if not candidates:
            return None
        chosen = candidates[self._turn % len(candidates)]
        self._turn += 1
        return chosen.worker_id


def encode_router(policy: EncodeRouting) -> EncodeRouter:
    """The router for ``serving.encodeRouting``."""
    if policy == "round-robin":
        return RoundRobin()
    return choose_encode_worker
