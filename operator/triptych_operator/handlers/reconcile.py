"""The Reconciler: the entry points the kopf handlers in `handlers/__init__.py` call, wired to the rooms that
do the work:

- `queue.WorkQueue`: one gate per object, coalescing of child events, backoff of failed requests;
- `reads.Reads`: the owner, its children and pods, from the cache or the API;
- `paths.Paths`: what one reconcile does (read, ask `plan.py`, carry out), in a worker thread
  (`threads.WorkerThreads`), timed by `ReconcileMetrics.timed`;
- `executor.Executor`: apply, prune, status writes and Events, and what the last apply left;
- `loops`: the autoscaler's evaluation loop and the resync, only in the peer kopf lets work.

Two entry points share the gate, so one object is never reconciled twice at once:

- `reconcile` (the CR's create/update/resume handlers): the whole path plus pruning; raises
  `kopf.PermanentError` for a spec that can never work and `kopf.TemporaryError` for what a retry can fix.
- `child_changed` (events of children and pods with our labels): a child that drifted from what the operator
  last applied (deleted, or edited so that its generation/resourceVersion moved) gets the whole path again;
  anything else (a Deployment's status, a pod's state) only refreshes the owner's status.

No kopf timers or daemons: kopf puts a finalizer on objects that have them, and deletion is left to owner
references alone (deleting a MultimodalDeployment never waits for the operator). Every state change status
depends on shows up as an event of a child Deployment or pod, which is what refreshes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import kopf

from triptych_operator.api import SpecError
from triptych_operator.autoscaler.evaluate import Autoscaler
from triptych_operator.autoscaler.metrics import AutoscalerMetrics
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.handlers.executor import Executor
from triptych_operator.handlers.loops import AutoscalerLoop, Peering, run_resync
from triptych_operator.handlers.metrics import ReconcileMetrics
from triptych_operator.handlers.paths import Paths
from triptych_operator.handlers.queue import Key, Work, WorkQueue
from triptych_operator.handlers.reads import Reads
from triptych_operator.handlers.threads import WorkerThreads
from triptych_operator.kube import Forbidden, Invalid, Kube, KubeError, TooManyRequests
from triptych_operator.plan import applied_marker
from triptych_operator.settings import OperatorSettings


class Reconciler:
    """One per operator process (built in main, handed to the handlers through kopf's memo)."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        *,
        autoscaler: Autoscaler | None = None,
        metrics: AutoscalerMetrics | None = None,
        reconcile_metrics: ReconcileMetrics | None = None,
        peering: tuple[str, int] | None = None,
        cache: ObjectCache | None = None,
    ) -> None:
        self.settings = settings
        self.autoscaler = autoscaler
        self.reconcile_metrics = reconcile_metrics if reconcile_metrics is not None else ReconcileMetrics()
        self.cache = cache  # what the watches delivered (handlers/cache.py); None: every read goes to the API
        self.threads = WorkerThreads(settings.concurrency)
        self.reads = Reads(kube, cache)
        self.executor = Executor(kube, cache, self.reconcile_metrics)
        self.paths = Paths(self.reads, self.executor, settings, autoscaler, self._forget)
        self.queue = WorkQueue(self._run, self.executor.drifted)
        self.peering = Peering(
            kube, peering, cache=cache, threads=self.threads, metrics=self.reconcile_metrics
        )
        self.autoscaler_loop = (
            None
            if autoscaler is None
            else AutoscalerLoop(
                autoscaler,
                paths=self.paths,
                queue=self.queue,
                executor=self.executor,
                threads=self.threads,
                peering=self.peering,
                metrics=metrics if metrics is not None else AutoscalerMetrics(),
                reconcile_metrics=self.reconcile_metrics,
            )
        )
        self._loops: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------------------------------ entry points

    async def reconcile(self, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> None:
        """The whole path for the CR's own handlers (`body`: the object as the handler got it; else it is
        read from the API); raises kopf's retry-policy exceptions."""
        since = time.perf_counter()
        key = (namespace, name)
        if body is not None:
            self.observe_owner(body)

        def full() -> None:
            with self.reconcile_metrics.timed("full", since):
                self.paths.full(key, prune=True, fresh=body is None)

        async with self.queue.lock(key):
            try:
                await self.threads.run(full)
            except SpecError as exc:
                await self._write_invalid(key, str(exc), since)
                raise kopf.PermanentError(f"invalid spec: {exc}") from exc
            except Invalid as exc:
                # The API server refused a child the builders produced: no retry makes that pass.
                await self._write_invalid(key, str(exc), since)
                raise kopf.PermanentError(str(exc)) from exc
            except TooManyRequests as exc:
                raise kopf.TemporaryError(str(exc), delay=max(exc.retry_after, 1.0)) from exc
            except Forbidden as exc:
                raise kopf.TemporaryError(f"{exc} (check the operator's RBAC)", delay=60) from exc
            except KubeError as exc:
                raise kopf.TemporaryError(str(exc), delay=5 if exc.transient else 30) from exc

    async def _write_invalid(self, key: Key, message: str, since: float) -> None:
        def write() -> None:
            with self.reconcile_metrics.timed("invalid", since):
                self.paths.write_invalid(key, message)

        await self.threads.run(write)

    async def child_changed(
        self, namespace: str, owner: str, kind: str, body: Mapping[str, Any], *, deleted: bool
    ) -> None:
        """A child or pod of `owner` changed; repair drift or refresh status (`queue.WorkQueue`)."""
        key = (namespace, owner)
        if self.cache is not None:
            if deleted:
                self.cache.remove(kind, key, body)
            else:
                self.cache.put(kind, key, body)
        meta = body.get("metadata") or {}
        # A deleted child is drift at once; an edited one is judged when the request runs; pods never are.
        judged = kind != "Pod" and not deleted
        suspect = (kind, str(meta.get("name")), applied_marker(kind, meta)) if judged else None
        await self.queue.request(key, full=deleted and kind != "Pod", suspect=suspect)

    async def _run(self, key: Key, work: Work) -> None:
        """What a queued request does: the whole path (pruning only when read afresh), or a refresh."""

        def full() -> None:
            with self.reconcile_metrics.timed("full", work.since):
                self.paths.full(key, prune=work.fresh, fresh=work.fresh)

        def refresh() -> None:
            with self.reconcile_metrics.timed("refresh", work.since):
                self.paths.refresh(key)

        await self.threads.run(full if work.full else refresh)

    async def evaluate(self, namespace: str, name: str) -> None:
        """One autoscaler evaluation of one deployment (`loops.AutoscalerLoop.evaluate`)."""
        if self.autoscaler_loop is not None:
            await self.autoscaler_loop.evaluate((namespace, name))

    def observe_owner(self, body: Mapping[str, Any]) -> None:
        """A MultimodalDeployment as a watch event (or a handler) delivered it."""
        self.reads.observe_owner(body)

    def forget(self, namespace: str, name: str) -> None:
        """The MultimodalDeployment is gone: drop what is remembered about it."""
        self._forget((namespace, name))

    def _forget(self, key: Key) -> None:
        self.reads.forget(key)
        self.executor.forget(key)
        self.paths.tracked.pop(key, None)
        if self.autoscaler is not None:
            self.autoscaler.forget(key)
        self.queue.forget(key)

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the autoscaler's evaluation loop and the resync loop (kopf's startup handler calls this;
        close() stops them)."""
        if self._loops:
            return
        loop = asyncio.get_running_loop()
        if self.autoscaler_loop is not None:
            self._loops.append(loop.create_task(self.autoscaler_loop.run()))
        if self.settings.resync_seconds:
            period = float(self.settings.resync_seconds)
            self._loops.append(loop.create_task(run_resync(self.queue, self.peering, period)))

    async def close(self) -> None:
        """Operator shutdown: stop the loops, cancel re-queued requests still waiting out their backoff (or
        running)."""
        loops, self._loops = self._loops, []
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self.autoscaler is not None:
            await self.autoscaler.source.aclose()
        await self.queue.close()

    @property
    def pending_retries(self) -> int:
        return self.queue.pending_retries


__all__ = ["Reconciler"]
