"""The operator's two loops that are not kopf handlers, each working only while this process is the peer
kopf lets work (`Peering`): the autoscaler's evaluations (`AutoscalerLoop`) and the resync (`run_resync`).

The autoscaler loop: every TICK_S it evaluates each tracked MultimodalDeployment whose
`evaluationIntervalSeconds` is due, under the object's gate (an evaluation never races a reconcile). A scale
goes through the whole path (with the replicas the autoscaler decided), then a `Scaled` Event per role; no
scale: a status write with what it observed. Replicas of a role under autoscaling are set by
`plan.plan_replicas`: the autoscaler's decision (or a role's MultimodalRole for scaler External), never
spec.replicas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from triptych_operator.api import SpecError
from triptych_operator.autoscaler.evaluate import Autoscaler
from triptych_operator.autoscaler.metrics import AutoscalerMetrics
from triptych_operator.autoscaler.observe import RolePods
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.handlers.executor import Executor
from triptych_operator.handlers.metrics import ReconcileMetrics
from triptych_operator.handlers.paths import AutoscalerView, Paths
from triptych_operator.handlers.queue import Key, WorkQueue
from triptych_operator.handlers.threads import WorkerThreads
from triptych_operator.kube import Kube, KubeError
from triptych_operator.plan import current_replicas, peering_active

logger = logging.getLogger(__name__)

TICK_S = 1.0  # the autoscaler loop's resolution (evaluation intervals are whole seconds)
EVALUATION_SLOTS = 8  # evaluations at once, over every MultimodalDeployment
PEERING_CHECK_S = 5.0  # how often the loops ask whether this process is the working peer


class Peering:
    """Whether this process is the peer kopf lets work, asked of the peering object at most every
    PEERING_CHECK_S (the loops are not kopf handlers, so kopf does not pause them)."""

    def __init__(
        self,
        kube: Kube,
        peering: tuple[str, int] | None,
        *,
        cache: ObjectCache | None,
        threads: WorkerThreads,
        metrics: ReconcileMetrics,
    ) -> None:
        self._kube = kube
        self._peering = peering  # (peering object, own kopf priority); None: standalone, always working
        self._cache = cache
        self._threads = threads
        self._metrics = metrics
        self._active: tuple[float, bool] = (-PEERING_CHECK_S, True)  # (when checked, the answer)

    async def is_working_peer(self) -> bool:
        if self._peering is None:
            return True
        checked, active = self._active
        now = asyncio.get_running_loop().time()
        if now - checked < PEERING_CHECK_S:
            return active
        name, priority = self._peering
        since = time.perf_counter()

        def read_peers() -> dict[str, object]:
            with self._metrics.timed("peering", since):
                return self._kube.peering(name)

        try:
            active = peering_active(await self._threads.run(read_peers), priority, datetime.now(UTC))
        except KubeError as exc:
            logger.info("peering %s unreadable (%s); the autoscaler waits", name, exc)
            active = False
        if active and not self._active[1] and self._cache is not None:
            # This process stood by and kopf's watches were paused: events were missed meanwhile.
            self._cache.unsync()
        self._active = (now, active)
        return active


async def run_resync(queue: WorkQueue, peering: Peering, period: float) -> None:
    """Reconcile every known MultimodalDeployment afresh from the API once per `period`, one at a time,
    spread evenly over it (a thousand objects every hour: one reconcile each 3.6 s)."""
    while True:
        keys = queue.keys()
        if not keys:
            await asyncio.sleep(period)
        for key in keys:
            await asyncio.sleep(period / len(keys))
            if key in queue and await peering.is_working_peer():
                await queue.request(key, full=True, fresh=True)


class AutoscalerLoop:
    def __init__(
        self,
        autoscaler: Autoscaler,
        *,
        paths: Paths,
        queue: WorkQueue,
        executor: Executor,
        threads: WorkerThreads,
        peering: Peering,
        metrics: AutoscalerMetrics,
        reconcile_metrics: ReconcileMetrics,
    ) -> None:
        self.autoscaler = autoscaler
        self._paths = paths
        self._queue = queue
        self._executor = executor
        self._threads = threads
        self._peering = peering
        self._metrics = metrics
        self._timing = reconcile_metrics

    async def run(self) -> None:
        """Every TICK_S: start an evaluation of each tracked deployment whose interval is due and that is not
        still being evaluated; at most EVALUATION_SLOTS run at once (the rest wait for a slot, keeping their
        turn, so a slow API server delays evaluations instead of piling them up)."""
        running: dict[Key, asyncio.Task[None]] = {}
        slots = asyncio.Semaphore(EVALUATION_SLOTS)

        async def bounded(key: Key) -> None:
            try:
                async with slots:
                    await self.evaluate(key)
            finally:
                running.pop(key, None)

        while True:
            await asyncio.sleep(TICK_S)
            if not await self._peering.is_working_peer():
                continue
            for key, interval in list(self._paths.tracked.items()):
                if key not in running and self.autoscaler.due(key, interval):
                    running[key] = asyncio.create_task(bounded(key))

    async def evaluate(self, key: Key) -> None:
        """One evaluation of one deployment (see the module docstring); never raises into the loop."""
        started = time.perf_counter()
        errors_before = self.autoscaler.source.errors
        outcome = "ok"
        async with self._queue.lock(key):
            try:
                outcome = await self._evaluate(key, started)
            except SpecError:
                outcome = "api_error"  # the CR's own handler reports it
            except KubeError as exc:
                outcome = "api_error"
                logger.info("%s/%s: autoscaler: %s", key[0], key[1], exc)
            finally:
                self._metrics.evaluations.labels(outcome).inc()
                self._metrics.scrape_errors.inc(max(0, self.autoscaler.source.errors - errors_before))
                self._metrics.latency.observe(time.perf_counter() - started)

    async def _evaluate(self, key: Key, started: float) -> str:
        def read() -> AutoscalerView | None:
            with self._timing.timed("evaluate", started):
                return self._paths.autoscaler_view(key)

        view = await self._threads.run(read)
        if view is None:
            return "ok"
        frontends = view.pods.get("frontend", RolePods()).ready
        evaluation = await self.autoscaler.evaluate(
            key, view.spec, current_replicas(view.deployments), view.pods, frontends
        )
        outcome = "ok"
        if evaluation.error is not None:
            outcome = "source_error"
            logger.info("%s/%s: %s", key[0], key[1], evaluation.error)
        if not evaluation.scales:

            def write_status() -> None:
                with self._timing.timed("evaluate", started):
                    self._paths.write_status(view.owner, view.spec, view.deployments, view.facts)

            await self._threads.run(write_status)
            return outcome

        def scale() -> None:
            with self._timing.timed("full", started):
                self._paths.full(key, prune=False)

        await self._threads.run(scale)
        for s in evaluation.scales:
            direction = "up" if s.after > s.before else "down"
            self._metrics.decisions.labels(s.role, direction).inc()
            message = f"{s.role} {s.before} -> {s.after}: {s.reason.removeprefix(f'{s.role}: ')}"
            logger.info("%s/%s: scaled %s", key[0], key[1], message)

            def record(message: str = message) -> None:
                with self._timing.timed("event", started):
                    self._executor.event(view.owner, "Normal", "Scaled", message)

            await self._threads.run(record)
        return outcome


__all__ = ["EVALUATION_SLOTS", "PEERING_CHECK_S", "TICK_S", "AutoscalerLoop", "Peering", "run_resync"]
