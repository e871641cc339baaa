"""The work queue: one gate per MultimodalDeployment, so one object is never worked on twice at once;
requests that arrive while one waits are folded into it; failed ones come back after a backoff.

- A request says whether it needs the whole path (`full`) or only a status refresh, whether it must read
  from the API rather than the cache (`fresh`, the resync), and which child event made it (a *suspect*:
  the child's kind, name and the marker it carried). Requests that come while one is queued only widen it,
  so a burst of pod events costs one refresh.
- Whether a suspect is drift is judged when the request runs, under the gate, not when it arrives: the event
  of our own apply often arrives while that reconcile is still applying the other children, before it
  recorded the marker, and would otherwise cost a second whole path.
- Nothing here raises: event handlers are not retried by kopf, so a transient API failure re-queues the
  request after `plan.retry_delay` (kept in `_retries`, so that `close()` can cancel it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from triptych_operator.api import SpecError
from triptych_operator.kube import Forbidden, KubeError, TooManyRequests
from triptych_operator.plan import retry_delay

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
Suspect = tuple[str, str, str]  # (kind, name, marker) of a child event not yet judged


@dataclass(frozen=True)
class Work:
    """What one queued request asks for, as it runs."""

    full: bool  # the whole path (apply, prune when fresh, status), not only a status refresh
    fresh: bool  # read from the API, not the cache (the resync), and prune
    since: float  # when it was first requested (perf_counter), for the wait metric


# Runs one request's work (the Reconciler's full path or refresh); raises what the API raised.
Runner = Callable[[Key, Work], Awaitable[None]]
# Whether any of the suspects shows a change this process did not make.
DriftJudge = Callable[[Key, Iterable[Suspect]], bool]


@dataclass
class _Gate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False  # a request waits for the lock; later ones fold into it
    full: bool = False  # the queued request needs the whole path, not only a status refresh
    fresh: bool = False  # ... read from the API, not the cache (the resync)
    suspects: set[Suspect] = field(default_factory=set)
    since: float = 0.0  # when the queued request came (perf_counter), for the wait metric
    failures: int = 0


class WorkQueue:
    def __init__(self, run: Runner, drifted: DriftJudge) -> None:
        self._run = run
        self._drifted = drifted
        self._gates: dict[Key, _Gate] = {}
        # Re-queued requests waiting out their backoff (or running), kept so that close() can cancel them.
        self._retries: set[asyncio.TimerHandle | asyncio.Task[None]] = set()

    def lock(self, key: Key) -> asyncio.Lock:
        """The object's gate: held by every request, reconcile and evaluation of it."""
        return self._gates.setdefault(key, _Gate()).lock

    def keys(self) -> list[Key]:
        """Every object a request or reconcile has been seen for (and not forgotten)."""
        return list(self._gates)

    def __contains__(self, key: Key) -> bool:
        return key in self._gates

    def forget(self, key: Key) -> None:
        gate = self._gates.get(key)
        if gate is not None and not gate.lock.locked() and not gate.queued:
            del self._gates[key]

    @property
    def pending_retries(self) -> int:
        return len(self._retries)

    async def request(
        self, key: Key, *, full: bool, fresh: bool = False, suspect: Suspect | None = None
    ) -> None:
        gate = self._gates.setdefault(key, _Gate())
        gate.full = gate.full or full
        gate.fresh = gate.fresh or fresh
        if suspect is not None:
            gate.suspects.add(suspect)
        if gate.queued:
            return
        gate.queued = True
        gate.since = time.perf_counter()
        async with gate.lock:
            gate.queued = False
            full, gate.full = gate.full or self._drifted(key, gate.suspects), False
            fresh, gate.fresh = gate.fresh, False
            gate.suspects = set()
            try:
                await self._run(key, Work(full=full, fresh=fresh, since=gate.since))
                gate.failures = 0
            except SpecError:
                pass  # the CR's own handler reports it (Stalled + PermanentError)
            except KubeError as exc:
                if not exc.transient and not isinstance(exc, Forbidden):
                    logger.warning("%s/%s: %s", key[0], key[1], exc)
                    return
                retry_after = exc.retry_after if isinstance(exc, TooManyRequests) else None
                delay = retry_delay(gate.failures, retry_after)
                gate.failures += 1
                logger.info("%s/%s: %s; retrying in %.0f s", key[0], key[1], exc, delay)
                gate.full = gate.full or full
                gate.fresh = gate.fresh or fresh
                self._retry_later(key, delay)

    def _retry_later(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def start() -> None:
            self._retries.discard(handle)
            task = loop.create_task(self.request(key, full=False))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

        handle = loop.call_later(delay, start)
        self._retries.add(handle)

    async def close(self) -> None:
        """Cancel re-queued requests still waiting out their backoff (or running)."""
        retries, self._retries = self._retries, set()
        for retry in retries:
            retry.cancel()
        await asyncio.gather(*(r for r in retries if isinstance(r, asyncio.Task)), return_exceptions=True)


__all__ = ["DriftJudge", "Key", "Runner", "Suspect", "Work", "WorkQueue"]
