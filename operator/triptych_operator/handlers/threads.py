"""The reconciles' worker threads: the kube module's calls are synchronous (urllib3), so every piece of work
that talks to the API runs here, at most `settings.concurrency` at once (the API client's connection pool
is the same size, so no thread waits on it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class WorkerThreads:
    def __init__(self, size: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="reconcile")

    async def run(self, call: Callable[[], T]) -> T:
        """`call()` in a worker thread; the caller times it (`ReconcileMetrics.timed`) inside `call`."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)


__all__ = ["WorkerThreads"]
