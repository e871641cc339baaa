"""Reconcile one MultimodalDeployment: read it (through `kube`), ask the planner (`plan.py`, pure) what to
apply, prune and write, and carry that out (server-side apply, deletes, a status patch only when it
changed, the Events the planner lists). The kopf handlers in `handlers/__init__.py` only call in here.

Two entry points share one per-object gate, so one object is never reconciled twice at once:

- `reconcile` (the CR's create/update/resume handlers): the whole path plus pruning; raises
  `kopf.PermanentError` for a spec that can never work and `kopf.TemporaryError` for what a retry can fix.
- `child_changed` (events of children and pods with our labels): a child that drifted from what the operator
  last applied (deleted, or edited so that its generation/resourceVersion moved) gets the whole path again;
  anything else (a Deployment's status, a pod's state) only refreshes the owner's status. Requests that arrive
  while one is queued are folded into it, so a burst of pod events costs one refresh. Nothing here raises
  into kopf: event handlers are not retried, so a transient failure re-queues itself with a backoff.

No timers or daemons: kopf puts a finalizer on objects that have them, and deletion is left to owner
references alone (deleting a MultimodalDeployment never waits for the operator). Every state change status
depends on shows up as an event of a child Deployment or pod, which is what refreshes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from triptych_operator.kube import Forbidden, Invalid, Kube, KubeError, TooManyRequests
from triptych_operator.plan import (
    NodeFacts,
    StatusUpdate,
    applied_marker,
    child_refs,
    drifted,
    needs_node_facts,
    plan_children,
    plan_invalid,
    plan_status,
    pod_blockers,
)
from triptych_operator.settings import OperatorSettings
from triptych_operator.spec import MultimodalDeploymentSpec, SpecError, parse_resource

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)  # child-event re-queues after transient errors


@dataclass
class _Gate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False  # a request waits for the lock; later ones fold into it
    full: bool = False  # the queued request needs the whole path, not only a status refresh
    failures: int = 0


class Reconciler:
    """One per operator process (built in main, handed to the handlers through kopf's memo)."""

    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube = kube
        self.settings = settings
        self._gates: dict[Key, _Gate] = {}
        # What the last apply left on each child (plan.applied_marker). A child event that shows something
        # else means someone changed the child: drift to repair.
        self._applied: dict[Key, dict[tuple[str, str], str]] = {}
        # Re-queued requests waiting out their backoff, kept so that close() can cancel them.
        self._retries: set[asyncio.TimerHandle | asyncio.Task[None]] = set()

    def _gate(self, key: Key) -> _Gate:
        return self._gates.setdefault(key, _Gate())

    # ------------------------------------------------------------------------------------------ entry points

    async def reconcile(self, namespace: str, name: str) -> None:
        """The whole path for the CR's own handlers; raises kopf's retry-policy exceptions."""
        gate = self._gate((namespace, name))
        async with gate.lock:
            try:
                await asyncio.to_thread(self._full, namespace, name, prune=True)
            except SpecError as exc:
                await asyncio.to_thread(self._write_invalid, namespace, name, str(exc))
                raise kopf.PermanentError(f"invalid spec: {exc}") from exc
            except Invalid as exc:
                # The API server refused a child the builders produced: no retry makes that pass.
                await asyncio.to_thread(self._write_invalid, namespace, name, str(exc))
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
        meta = body.get("metadata") or {}
        full = kind != "Pod" and (deleted or drifted(self._applied.get(key, {}), kind, meta))
        await self._request(key, full=full)

    def forget(self, namespace: str, name: str) -> None:
        """The MultimodalDeployment is gone: drop what is remembered about it."""
        self._applied.pop((namespace, name), None)
        gate = self._gates.get((namespace, name))
        if gate is not None and not gate.lock.locked() and not gate.queued:
            del self._gates[(namespace, name)]

    async def close(self) -> None:
        """Operator shutdown: cancel re-queued requests still waiting out their backoff (or running)."""
        retries, self._retries = self._retries, set()
        for retry in retries:
            retry.cancel()
        tasks = [r for r in retries if isinstance(r, asyncio.Task)]
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def pending_retries(self) -> int:
        return len(self._retries)

    # ------------------------------------------------------------------------------------------ coalescing

    async def _request(self, key: Key, *, full: bool) -> None:
        gate = self._gate(key)
        gate.full = gate.full or full
        if gate.queued:
            return
        gate.queued = True
        async with gate.lock:
            gate.queued = False
            full, gate.full = gate.full, False
            try:
                if full:
                    await asyncio.to_thread(self._full, key[0], key[1], prune=False)
                else:
                    await asyncio.to_thread(self._refresh, key[0], key[1])
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
                self._retry_later(key, delay)

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

    def _owner(self, namespace: str, name: str) -> tuple[dict[str, Any], MultimodalDeploymentSpec] | None:
        owner = self.kube.get_owner(namespace, name)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        return owner, parse_resource(owner)

    def _full(self, namespace: str, name: str, *, prune: bool) -> None:
        found = self._owner(namespace, name)
        if found is None:
            return
        owner, spec = found
        facts = self.kube.node_facts()
        existing = child_refs(self.kube.list_children(namespace, name)) if prune else []
        plan = plan_children(name, namespace, owner["metadata"]["uid"], spec, self.settings, facts, existing)
        markers = self._applied.setdefault((namespace, name), {})
        deployments = []
        for child in plan.desired:
            applied = self.kube.apply(child)
            markers[(applied["kind"], applied["metadata"]["name"])] = applied_marker(
                applied["kind"], applied["metadata"]
            )
            if applied["kind"] == "Deployment":
                deployments.append(applied)
        for ref in plan.prune:
            if self.kube.delete(ref, namespace):
                markers.pop((ref.kind, ref.name), None)
                self._event(owner, "Normal", "Pruned", f"deleted {ref.kind} {ref.name}: no longer desired")
        self._write_status(owner, spec, deployments, facts)

    def _refresh(self, namespace: str, name: str) -> None:
        found = self._owner(namespace, name)
        if found is None:
            return
        owner, spec = found
        listed = self.kube.list_children(namespace, name, kinds=[("apps/v1", "Deployment")])
        self._write_status(owner, spec, listed[("apps/v1", "Deployment")], None)

    def _write_status(
        self,
        owner: Mapping[str, Any],
        spec: MultimodalDeploymentSpec,
        deployments: list[dict[str, Any]],
        facts: NodeFacts | None,
    ) -> None:
        meta = owner["metadata"]
        pods = self.kube.pods(meta["namespace"], meta["name"])
        if facts is None and needs_node_facts(pods):
            facts = self.kube.node_facts()
        update = plan_status(owner, spec, deployments, pod_blockers(pods, facts), datetime.now(UTC))
        self._write(owner, update)
        if update is not None:
            logger.info("%s/%s: status %s", meta["namespace"], meta["name"], update.status.get("summary"))

    def _write_invalid(self, namespace: str, name: str, message: str) -> None:
        owner = self.kube.get_owner(namespace, name)
        if owner is not None:
            self._write(owner, plan_invalid(owner, message, datetime.now(UTC)))

    def _write(self, owner: Mapping[str, Any], update: StatusUpdate | None) -> None:
        if update is None:  # unchanged: no write, no Event
            return
        meta = owner["metadata"]
        self.kube.patch_status(meta["namespace"], meta["name"], update.patch)
        for event in update.events:
            self._event(owner, event.type, event.reason, event.message)

    def _event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.kube.emit_event(owner, type_, reason, message)
        except KubeError as exc:  # an Event is a courtesy: never fail a reconcile over it
            logger.info("could not record event %s: %s", reason, exc)


__all__ = ["Reconciler"]
