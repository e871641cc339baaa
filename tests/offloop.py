"""Whether work handed to an executor leaves the event loop free while it runs, checked without a clock.

A ticker that measures the longest gap between its ticks answers the same question, but only as well as the
machine keeps time: on a shared 2-core runner a 50 ms scheduler hiccup fails it with nothing wrong. Here
the job itself asks the loop to run a coroutine, once before and once after the real work, and waits for
the answer. A loop that is free answers at once; a loop that is blocked on the job (a synchronous call, a
``future.result()``) can never answer, and the job's wait fails after ``answer_timeout_s``. The timeout only
decides how long a *failure* takes to show, so it can be generous and the check still cannot flake.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class LoopNotAnswering(AssertionError):
    """The event loop did not run a coroutine while the executor's job was in flight: it was blocked."""


async def _answer() -> None:
    return None


class HandshakeExecutor(ThreadPoolExecutor):
    """A thread pool whose jobs each prove, before and after their work, that the event loop is running."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, answer_timeout_s: float = 30.0) -> None:
        super().__init__(max_workers=2, thread_name_prefix="test-handshake")
        self._loop = loop
        self._answer_timeout_s = answer_timeout_s
        self.jobs = 0
        self.job_threads: set[int] = set()

    def _handshake(self, when: str) -> None:
        answered = asyncio.run_coroutine_threadsafe(_answer(), self._loop)
        try:
            answered.result(timeout=self._answer_timeout_s)
        except TimeoutError:
            answered.cancel()
            raise LoopNotAnswering(
                f"the event loop did not answer {when} the job within {self._answer_timeout_s} s"
            ) from None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs += 1

        def job() -> Any:
            self.job_threads.add(threading.get_ident())
            self._handshake("before")
            result = fn(*args, **kwargs)
            self._handshake("after")
            return result

        return super().submit(job)
