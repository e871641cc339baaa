"""Reconcile one MultimodalDeployment: read it (through `kube`), ask the planner (`plan.py`, pure) what to
apply, prune and write, and carry that out (server-side apply, deletes, a status patch only when it
changed, the Events the planner lists). The kopf handlers in `handlers/__init__.py` only call in here.

Two entry points share one per-object gate, so one object is never reconciled twice at once:

- `reconcile` (the CR's create/update/resume handlers): the whole path plus pruning; raises
  `kopf.PermanentError` for a spec that can never work and `kopf.TemporaryError` for what a retry can fix.
- `child_changed` (events of children and pods with our labels): a child that drifted from what the operator
  last applied (deleted, or edited so that its generation/resourceVersion moved) gets the whole path again;
  anything else (a Deployment's status, a pod's state) only refreshes the owner's status. Requests that arrive
  while one is queued are folded into it, so a burst of pod events costs one refresh. Whether a child event
  is drift is judged when its request runs, under the gate, not when it arrives: the event of our own apply
  often arrives while that reconcile is still applying the other children, before it recorded the marker,
  and would otherwise cost a second whole path. Nothing here raises into kopf: event handlers are not
  retried, so a transient failure re-queues itself with a backoff.

No kopf timers or daemons: kopf puts a finalizer on objects that have them, and deletion is left to owner
references alone (deleting a MultimodalDeployment never waits for the operator). Every state change status
depends on shows up as an event of a child Deployment or pod, which is what refreshes it.

The autoscaler runs as one loop of this process (`run_autoscaler`, started by kopf's startup handler):
every second it evaluates each tracked MultimodalDeployment whose `evaluationIntervalSeconds` is due, under
the same gate (an evaluation never races a reconcile), and only while this process is the peer kopf lets
work (`plan.peering_active`). A scale goes through the whole path (`_full`, with the replicas the autoscaler
decided), then an Event per role. Replicas of a role under autoscaling are set by `plan.plan_replicas`:
the autoscaler's decision (or a role's MultimodalRole for scaler External), never spec.replicas.

Manual scale of a Builtin-autoscaled role (`kubectl scale deployment/<name>-<role>`): the new count,
clamped to minReplicas..maxReplicas, becomes the role's current replicas and counts as a recommendation
made at that moment (an Event says so). So a manual scale-up holds for at least the role's scale-down
stabilization window (300 s by default) before the metrics may take it back, and a manual scale-down below
what the metrics need is undone at the next evaluation. To pin a size, set minReplicas = maxReplicas or
turn autoscaling off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from triptych_contract import LABEL_ROLE

from triptych_operator.api import ROLE_KIND, MultimodalDeploymentSpec, Role, SpecError, parse_resource
from triptych_operator.autoscaler.evaluate import Autoscaler, needs_evaluation
from triptych_operator.autoscaler.metrics import AutoscalerMetrics
from triptych_operator.autoscaler.observe import RolePods, current_template_hashes, role_pods
from triptych_operator.cluster import CHILD_KINDS, DEPLOYMENT, ROLE_SCALE, ChildRef, NodeFacts
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.handlers.metrics import ReconcileMetrics
from triptych_operator.kube import Forbidden, Invalid, Kube, KubeError, TooManyRequests
from triptych_operator.naming import Owner, selector_labels
from triptych_operator.plan import (
    StatusUpdate,
    applied_marker,
    child_refs,
    drifted,
    needs_node_facts,
    peering_active,
    plan_children,
    plan_invalid,
    plan_replicas,
    plan_status,
    pod_blockers,
    role_scale_status,
)
from triptych_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)  # child-event re-queues after transient errors
TICK_S = 1.0  # the autoscaler loop's resolution (evaluation intervals are whole seconds)
EVALUATION_SLOTS = 8  # evaluations at once, over every MultimodalDeployment
PEERING_CHECK_S = 5.0  # how often the loop asks whether this process is the working peer
T = TypeVar("T")


def _digest(obj: Mapping[str, Any]) -> str:
    """What identifies a desired child: equal digests, equal objects (the skip-unchanged-apply test)."""
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=16).hexdigest()


@dataclass
class _Gate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False  # a request waits for the lock; later ones fold into it
    full: bool = False  # the queued request needs the whole path, not only a status refresh
    fresh: bool = False  # ... read from the API, not the cache (the resync)
    # Child events not yet judged: (kind, name, marker the event carried); drift if it is not ours.
    suspects: set[tuple[str, str, str]] = field(default_factory=set)
    since: float = 0.0  # when the queued request came (perf_counter), for the wait metric
    failures: int = 0


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
        self.kube = kube
        self.settings = settings
        self.autoscaler = autoscaler
        self.metrics = metrics if metrics is not None else AutoscalerMetrics()
        self.reconcile_metrics = reconcile_metrics if reconcile_metrics is not None else ReconcileMetrics()
        # What the watches delivered (handlers/cache.py); None: every read goes to the API.
        self.cache = cache
        # The reconciles' worker threads: at most settings.concurrency run (and call the API) at once.
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="reconcile")
        # (peering object, own kopf priority); None: standalone, always the working peer.
        self._peering = peering
        self._active: tuple[float, bool] = (-PEERING_CHECK_S, True)
        # Deployments the autoscaler evaluates, with their evaluation interval (tracked by every reconcile).
        self._tracked: dict[Key, float] = {}
        self._loop: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        self._gates: dict[Key, _Gate] = {}
        # What the last apply left on each child (plan.applied_marker). A child event that shows something
        # else means someone changed the child: drift to repair.
        self._applied: dict[Key, dict[tuple[str, str], str]] = {}
        # The digest of what that apply sent: with the marker unchanged and the same digest desired again, the
        # apply is skipped (it would change nothing).
        self._digests: dict[Key, dict[tuple[str, str], str]] = {}
        # The parsed spec of each MultimodalDeployment by (uid, generation): a refresh does not parse again.
        self._specs: dict[Key, tuple[tuple[str, int], MultimodalDeploymentSpec]] = {}
        # Re-queued requests waiting out their backoff, kept so that close() can cancel them.
        self._retries: set[asyncio.TimerHandle | asyncio.Task[None]] = set()

    def _gate(self, key: Key) -> _Gate:
        return self._gates.setdefault(key, _Gate())

    async def _work(self, path: str, since: float, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` in a worker thread; `path` and `since` (when it was requested) label the metrics."""

        def timed() -> T:
            started = time.perf_counter()
            self.reconcile_metrics.wait.labels(path).observe(started - since)
            try:
                return fn(*args, **kwargs)
            finally:
                self.reconcile_metrics.work.labels(path).observe(time.perf_counter() - started)

        if path in ("full", "refresh"):
            self.reconcile_metrics.reconciles.labels(path).inc()
        return await asyncio.get_running_loop().run_in_executor(self._pool, timed)

    # ------------------------------------------------------------------------------------------ entry points

    async def reconcile(self, namespace: str, name: str, body: Mapping[str, Any] | None = None) -> None:
        """The whole path for the CR's own handlers (`body`: the object as the handler got it; else it is
        read from the API); raises kopf's retry-policy exceptions."""
        since = time.perf_counter()
        if body is not None:
            self.observe_owner(body)
        gate = self._gate((namespace, name))
        async with gate.lock:
            try:
                await self._work("full", since, self._full, namespace, name, prune=True, fresh=body is None)
            except SpecError as exc:
                await self._work("invalid", since, self._write_invalid, namespace, name, str(exc))
                raise kopf.PermanentError(f"invalid spec: {exc}") from exc
            except Invalid as exc:
                # The API server refused a child the builders produced: no retry makes that pass.
                await self._work("invalid", since, self._write_invalid, namespace, name, str(exc))
                raise kopf.PermanentError(str(exc)) from exc
            except TooManyRequests as exc:
                raise kopf.TemporaryError(str(exc), delay=max(exc.retry_after, 1.0)) from exc
            except Forbidden as exc:
                raise kopf.TemporaryError(f"{exc} (check the operator's RBAC)", delay=60) from exc
            except KubeError as exc:
                raise kopf.TemporaryError(str(exc), delay=5 if exc.transient else 30) from exc

    async def child_changed(
        self, namespace: str, owner: str, kind: str, body: Mapping[str, Any], *, deleted: bool
    ) -> None:
        """A child or pod of `owner` changed; repair drift or refresh status (see the module docstring)."""
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
        await self._request(key, full=deleted and kind != "Pod", suspect=suspect)

    def observe_owner(self, body: Mapping[str, Any]) -> None:
        """A MultimodalDeployment as a watch event (or a handler) delivered it."""
        if self.cache is not None:
            self.cache.put_owner(body)

    def forget(self, namespace: str, name: str) -> None:
        """The MultimodalDeployment is gone: drop what is remembered about it."""
        if self.cache is not None:
            self.cache.forget((namespace, name))
        self._applied.pop((namespace, name), None)
        self._digests.pop((namespace, name), None)
        self._specs.pop((namespace, name), None)
        self._tracked.pop((namespace, name), None)
        if self.autoscaler is not None:
            self.autoscaler.forget((namespace, name))
        gate = self._gates.get((namespace, name))
        if gate is not None and not gate.lock.locked() and not gate.queued:
            del self._gates[(namespace, name)]

    async def close(self) -> None:
        """Operator shutdown: stop the autoscaler loop, cancel re-queued requests still waiting out their
        backoff (or running)."""
        for task in (self._loop, self._resync):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._loop = self._resync = None
        if self.autoscaler is not None:
            await self.autoscaler.source.aclose()
        retries, self._retries = self._retries, set()
        for retry in retries:
            retry.cancel()
        tasks = [r for r in retries if isinstance(r, asyncio.Task)]
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def pending_retries(self) -> int:
        return len(self._retries)

    # ------------------------------------------------------------------------------------------ autoscaler

    def start(self) -> None:
        """Start the autoscaler's evaluation loop and the resync loop (kopf's startup handler calls this;
        close() stops them)."""
        loop = asyncio.get_running_loop()
        if self.autoscaler is not None and self._loop is None:
            self._loop = loop.create_task(self.run_autoscaler())
        if self.settings.resync_seconds and self._resync is None:
            self._resync = loop.create_task(self.run_resync())

    async def run_resync(self) -> None:
        """Reconcile every known MultimodalDeployment afresh from the API once per resync period, one at a
        time, spread evenly over the period (a thousand objects every hour: one reconcile each 3.6 s)."""
        period = float(self.settings.resync_seconds)
        while True:
            keys = list(self._gates)
            if not keys:
                await asyncio.sleep(period)
            for key in keys:
                await asyncio.sleep(period / len(keys))
                if key in self._gates and await self._is_working_peer():
                    await self._request(key, full=True, fresh=True)

    async def run_autoscaler(self) -> None:
        """Every TICK_S: start an evaluation of each tracked deployment whose interval is due and that is not
        still being evaluated; at most EVALUATION_SLOTS run at once (the rest wait for a slot, keeping their
        turn, so a slow API server delays evaluations instead of piling them up)."""
        assert self.autoscaler is not None
        running: dict[Key, asyncio.Task[None]] = {}
        slots = asyncio.Semaphore(EVALUATION_SLOTS)

        async def bounded(key: Key) -> None:
            try:
                async with slots:
                    await self.evaluate(*key)
            finally:
                running.pop(key, None)

        while True:
            await asyncio.sleep(TICK_S)
            if not await self._is_working_peer():
                continue
            for key, interval in list(self._tracked.items()):
                if key not in running and self.autoscaler.due(key, interval):
                    running[key] = asyncio.create_task(bounded(key))

    async def _is_working_peer(self) -> bool:
        if self._peering is None:
            return True
        checked, active = self._active
        now = asyncio.get_running_loop().time()
        if now - checked < PEERING_CHECK_S:
            return active
        name, priority = self._peering
        try:
            peers = await self._work("peering", time.perf_counter(), self.kube.peering, name)
            active = peering_active(peers, priority, datetime.now(UTC))
        except KubeError as exc:
            logger.info("peering %s unreadable (%s); the autoscaler waits", name, exc)
            active = False
        if active and not self._active[1] and self.cache is not None:
            # This process stood by and kopf's watches were paused: events were missed meanwhile.
            self.cache.unsync()
        self._active = (now, active)
        return active

    async def evaluate(self, namespace: str, name: str) -> None:
        """One evaluation of one deployment (see the module docstring); never raises into the loop."""
        assert self.autoscaler is not None
        key = (namespace, name)
        started = time.perf_counter()
        errors_before = self.autoscaler.source.errors
        outcome = "ok"
        async with self._gate(key).lock:
            try:
                read = await self._work("evaluate", started, self._read_for_autoscaler, namespace, name)
                if read is None:
                    return
                owner, spec, deployments, pods, facts = read
                current = {
                    str(d["metadata"]["labels"].get(LABEL_ROLE)): int(d["spec"].get("replicas", 0))
                    for d in deployments
                }
                evaluation = await self.autoscaler.evaluate(
                    key, spec, current, pods, pods.get("frontend", RolePods()).ready
                )
                if evaluation.error is not None:
                    outcome = "source_error"
                    logger.info("%s/%s: %s", namespace, name, evaluation.error)
                if evaluation.scales:
                    await self._work("full", started, self._full, namespace, name, prune=False)
                    for scale in evaluation.scales:
                        direction = "up" if scale.after > scale.before else "down"
                        self.metrics.decisions.labels(scale.role, direction).inc()
                        why = scale.reason.removeprefix(f"{scale.role}: ")
                        message = f"{scale.role} {scale.before} -> {scale.after}: {why}"
                        logger.info("%s/%s: scaled %s", namespace, name, message)
                        await self._work("event", started, self._event, owner, "Normal", "Scaled", message)
                else:
                    await self._work("evaluate", started, self._write_status, owner, spec, deployments, facts)
            except SpecError:
                outcome = "api_error"  # the CR's own handler reports it
            except KubeError as exc:
                outcome = "api_error"
                logger.info("%s/%s: autoscaler: %s", namespace, name, exc)
            finally:
                self.metrics.evaluations.labels(outcome).inc()
                self.metrics.scrape_errors.inc(max(0, self.autoscaler.source.errors - errors_before))
                self.metrics.latency.observe(time.perf_counter() - started)

    def _read_for_autoscaler(
        self, namespace: str, name: str
    ) -> (
        tuple[dict[str, Any], MultimodalDeploymentSpec, list[dict[str, Any]], dict[str, RolePods], NodeFacts]
        | None
    ):
        found = self._owner(namespace, name)
        if found is None:
            return None
        owner, spec = found
        self._track(namespace, name, spec)
        deployments = self._listed((namespace, name), [DEPLOYMENT])[DEPLOYMENT]
        hashes = current_template_hashes(deployments, self.kube.replica_sets(namespace, name))
        facts = self.kube.node_facts()
        pods = role_pods(self._pods((namespace, name)), hashes, facts.fake_nodes)
        return owner, spec, deployments, pods, facts

    def _track(self, namespace: str, name: str, spec: MultimodalDeploymentSpec) -> None:
        if self.autoscaler is not None and needs_evaluation(spec):
            self._tracked[(namespace, name)] = float(spec.autoscaling.evaluation_interval_seconds)
        else:
            self._tracked.pop((namespace, name), None)

    def _adopt_manual_scales(
        self, owner: Mapping[str, Any], spec: MultimodalDeploymentSpec, deployments: list[dict[str, Any]]
    ) -> None:
        """The documented manual-scale rule (module docstring): a Builtin role's Deployment whose replicas
        someone else changed since our last apply."""
        if self.autoscaler is None:
            return
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        decided = self.autoscaler.decided(key)
        markers = self._applied.get(key, {})
        for deployment in deployments:
            role: Role = deployment["metadata"]["labels"].get(LABEL_ROLE)
            auto = spec.autoscaled().get(role)
            given = int(deployment["spec"].get("replicas", 0))
            if auto is None or role not in decided or given == decided[role]:
                continue
            if markers.get(("Deployment", deployment["metadata"]["name"])) == applied_marker(
                "Deployment", deployment["metadata"]
            ):
                continue  # our own last apply
            taken = min(max(given, auto.min_replicas), auto.max_replicas)
            self.autoscaler.adopt(key, role, taken)
            clamp = "" if taken == given else f" (clamped to {taken}: minReplicas..maxReplicas)"
            self._event(
                owner,
                "Normal",
                "ManualScale",
                f"{role} was scaled to {given} outside the autoscaler{clamp}; taken as its current "
                "replicas and held for the scale-down stabilization window unless the metrics ask for more "
                "(set minReplicas = maxReplicas to pin a size)",
            )

    # ------------------------------------------------------------------------------------------ coalescing

    async def _request(
        self, key: Key, *, full: bool, fresh: bool = False, suspect: tuple[str, str, str] | None = None
    ) -> None:
        gate = self._gate(key)
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
                if full:
                    await self._work("full", gate.since, self._full, key[0], key[1], prune=fresh, fresh=fresh)
                else:
                    await self._work("refresh", gate.since, self._refresh, key[0], key[1])
                gate.failures = 0
            except SpecError:
                pass  # the CR's own handler reports it (Stalled + PermanentError)
            except KubeError as exc:
                if not exc.transient and not isinstance(exc, Forbidden):
                    logger.warning("%s/%s: %s", key[0], key[1], exc)
                    return
                delay = RETRY_DELAYS[min(gate.failures, len(RETRY_DELAYS) - 1)]
                if isinstance(exc, TooManyRequests):
                    delay = max(delay, exc.retry_after)
                gate.failures += 1
                logger.info("%s/%s: %s; retrying in %.0f s", key[0], key[1], exc, delay)
                gate.full = gate.full or full
                gate.fresh = gate.fresh or fresh
                self._retry_later(key, delay)

    def _drifted(self, key: Key, suspects: Iterable[tuple[str, str, str]]) -> bool:
        """Some child event carried a marker other than the one our last apply of that child left (judged
        now, after any reconcile that held the gate has recorded its own)."""
        applied = self._applied.get(key, {})
        return any(drifted(applied, kind, name, marker) for kind, name, marker in suspects)

    def _retry_later(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def start() -> None:
            self._retries.discard(handle)
            task = loop.create_task(self._request(key, full=False))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

        handle = loop.call_later(delay, start)
        self._retries.add(handle)

    # ------------------------------------------------------------------------------------- work (threads)

    def _owner(
        self, namespace: str, name: str, *, fresh: bool = False
    ) -> tuple[dict[str, Any], MultimodalDeploymentSpec] | None:
        key = (namespace, name)
        owner = None if fresh or self.cache is None else self.cache.owner(key)
        if owner is None:
            owner = self.kube.get_owner(namespace, name)
            if owner is not None:
                self.observe_owner(owner)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        meta = owner["metadata"]
        version = (str(meta.get("uid", "")), int(meta.get("generation", 0)))
        parsed = self._specs.get(key)
        if parsed is not None and parsed[0] == version:
            return owner, parsed[1]
        spec = parse_resource(owner)
        self._specs[key] = (version, spec)
        return owner, spec

    def _listed(
        self, key: Key, kinds: list[tuple[str, str]], *, fresh: bool = False
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Children by (apiVersion, kind): from the cache where it has listed them once (and not `fresh`),
        else from the API (which then becomes the cache's)."""
        listed: dict[tuple[str, str], list[dict[str, Any]]] = {}
        missing = []
        for kind in kinds:
            cached = None if fresh or self.cache is None else self.cache.items(kind[1], key)
            if cached is None:
                missing.append(kind)
            else:
                listed[kind] = cached
        if missing:
            read = self.kube.list_children(key[0], key[1], kinds=missing)
            for kind, items in read.items():
                if self.cache is not None:
                    self.cache.replace(kind[1], key, items)
                listed[kind] = items
        return listed

    def _pods(self, key: Key) -> list[dict[str, Any]]:
        cached = None if self.cache is None else self.cache.items("Pod", key)
        if cached is not None:
            return cached
        pods = self.kube.pods(*key)
        if self.cache is not None:
            self.cache.replace("Pod", key, pods)
        return pods

    def _full(self, namespace: str, name: str, *, prune: bool, fresh: bool = False) -> None:
        key = (namespace, name)
        found = self._owner(namespace, name, fresh=fresh)
        if found is None:
            return
        owner, spec = found
        self._track(namespace, name, spec)
        facts = self.kube.node_facts()
        scaled = bool(spec.autoscaled() or spec.externally_scaled())
        # Pruning deletes what is listed, so it lists from the API, never from the cache.
        if prune:
            listed = self._listed(key, list(CHILD_KINDS), fresh=True)
        elif scaled:
            listed = self._listed(key, [DEPLOYMENT, ROLE_SCALE])
        else:
            listed = {}
        existing = child_refs(listed) if prune else []
        live = listed.get(DEPLOYMENT, [])
        self._adopt_manual_scales(owner, spec, live)
        decided = self.autoscaler.decided(key) if self.autoscaler is not None else {}
        replicas = plan_replicas(spec, live, listed.get(ROLE_SCALE, []), decided)
        plan = plan_children(
            Owner(name, namespace, owner["metadata"]["uid"]), spec, self.settings, facts, existing,
            replicas={str(r): n for r, n in replicas.items()},
        )  # fmt: skip
        deployments, role_scales = self._apply(key, plan.desired, replicas)
        self._prune(owner, plan.prune)
        self._write_status(owner, spec, deployments, facts, role_scales)

    def _apply(
        self, key: Key, desired: Sequence[Mapping[str, Any]], replicas: Mapping[Role, int]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Apply each desired child that would change (`_unchanged`); the Deployments and MultimodalRoles
        as they are now."""
        markers = self._applied.setdefault(key, {})
        digests = self._digests.setdefault(key, {})
        deployments, role_scales = [], []
        for child in desired:
            ref, digest = (child["kind"], child["metadata"]["name"]), _digest(child)
            applied = self._unchanged(key, ref, digest)
            if applied is None:
                applied = self.kube.apply(child)
                if applied["kind"] == ROLE_KIND and "replicas" not in (applied.get("spec") or {}):
                    role = applied["metadata"]["labels"][LABEL_ROLE]
                    applied = self.kube.seed_replicas(applied, replicas[role])
                markers[ref] = applied_marker(applied["kind"], applied["metadata"])
                digests[ref] = digest
                if self.cache is not None:
                    self.cache.put(ref[0], key, applied)
            if applied["kind"] == ROLE_KIND:
                role_scales.append(applied)
            if applied["kind"] == "Deployment":
                deployments.append(applied)
        return deployments, role_scales

    def _prune(self, owner: Mapping[str, Any], refs: Sequence[ChildRef]) -> None:
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        markers, digests = self._applied.get(key, {}), self._digests.get(key, {})
        for ref in refs:
            if self.kube.delete(ref, key[0]):
                markers.pop((ref.kind, ref.name), None)
                digests.pop((ref.kind, ref.name), None)
                self._event(owner, "Normal", "Pruned", f"deleted {ref.kind} {ref.name}: no longer desired")
            if self.cache is not None:
                self.cache.remove(ref.kind, key, {"metadata": {"name": ref.name, "uid": ref.uid}})

    def _unchanged(self, key: Key, ref: tuple[str, str], digest: str) -> dict[str, Any] | None:
        """The live child, when applying `digest` again would change nothing: this process last applied
        exactly that, and the child (as the cache has it) still carries the marker that apply left, so
        nobody changed it since. None: apply."""
        if self.cache is None or self._digests.get(key, {}).get(ref) != digest:
            return None
        live = self.cache.get(ref[0], key, ref[1])
        if live is None or self._applied.get(key, {}).get(ref) != applied_marker(ref[0], live["metadata"]):
            return None
        self.reconcile_metrics.applies_skipped.inc()
        return live

    def _refresh(self, namespace: str, name: str) -> None:
        found = self._owner(namespace, name)
        if found is None:
            return
        owner, spec = found
        self._track(namespace, name, spec)
        kinds = [DEPLOYMENT, ROLE_SCALE] if spec.externally_scaled() else [DEPLOYMENT]
        listed = self._listed((namespace, name), kinds)
        self._write_status(owner, spec, listed[DEPLOYMENT], None, listed.get(ROLE_SCALE, []))

    def _write_status(
        self,
        owner: Mapping[str, Any],
        spec: MultimodalDeploymentSpec,
        deployments: list[dict[str, Any]],
        facts: NodeFacts | None,
        role_scales: list[dict[str, Any]] | None = None,
    ) -> None:
        meta = owner["metadata"]
        pods = self._pods((meta["namespace"], meta["name"]))
        if facts is None and needs_node_facts(pods):
            facts = self.kube.node_facts()
        scaling, transport = (
            self.autoscaler.last((meta["namespace"], meta["name"])) if self.autoscaler else ({}, None)
        )
        update = plan_status(
            owner,
            spec,
            deployments,
            pod_blockers(pods, facts),
            datetime.now(UTC),
            scaling={str(r): v for r, v in scaling.items()},
            transport=transport,
        )
        self._write(owner, update)
        self._write_role_scales((meta["namespace"], meta["name"]), deployments, role_scales or [])
        if update is not None:
            logger.info("%s/%s: status %s", meta["namespace"], meta["name"], update.status.get("summary"))

    def _write_role_scales(
        self, key: Key, deployments: list[dict[str, Any]], role_scales: list[dict[str, Any]]
    ) -> None:
        """Each MultimodalRole's /scale status from its role's Deployment, written when it changed."""
        by_role = {d["metadata"]["labels"].get(LABEL_ROLE): d for d in deployments}
        for scale in role_scales:
            role: Role = scale["metadata"]["labels"][LABEL_ROLE]
            status = role_scale_status(by_role.get(role), selector_labels(key[1], role))
            if (scale.get("status") or {}) != status:
                written = self.kube.patch_child_status(scale, status)
                if self.cache is not None and written:
                    self.cache.put(ROLE_KIND, key, written)

    def _write_invalid(self, namespace: str, name: str, message: str) -> None:
        owner = self.kube.get_owner(namespace, name)
        if owner is not None:
            self._write(owner, plan_invalid(owner, message, datetime.now(UTC)))

    def _write(self, owner: Mapping[str, Any], update: StatusUpdate | None) -> None:
        if update is None:  # unchanged: no write, no Event
            return
        meta = owner["metadata"]
        written = self.kube.patch_status(meta["namespace"], meta["name"], update.patch)
        self.reconcile_metrics.status_writes.inc()
        if written:  # the next refresh compares with what was written, not with an older cached status
            self.observe_owner(written)
        for event in update.events:
            self._event(owner, event.type, event.reason, event.message)

    def _event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.kube.emit_event(owner, type_, reason, message)
        except KubeError as exc:  # an Event is a courtesy: never fail a reconcile over it
            logger.info("could not record event %s: %s", reason, exc)


__all__ = ["Reconciler"]
