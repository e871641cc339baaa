"""Reconcile one MultimodalDeployment: read it, build the desired children (pure), apply them
(server-side), compute status (pure), write it when it changed. The kopf handlers in
`handlers/__init__.py` only call in here.

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

from triptych_operator.builders import build_children
from triptych_operator.kube import (
    Forbidden,
    Invalid,
    Kube,
    KubeError,
    NodeFacts,
    TooManyRequests,
    child_refs,
    pod_blockers,
    stale_children,
)
from triptych_operator.settings import OperatorSettings
from triptych_operator.spec import MultimodalDeploymentSpec, SpecError, parse_resource
from triptych_operator.status import (
    READY,
    STALLED,
    Blocker,
    compute_status,
    invalid_spec_status,
    status_changed,
    status_to_dict,
)

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)  # child-event re-queues after transient errors
DEFAULT_RDMA_RESOURCE = "rdma/ib"


@dataclass
class _Gate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: bool = False  # a request waits for the lock; later ones fold into it
    full: bool = False  # the queued request needs the whole path, not only a status refresh
    failures: int = 0


@dataclass(frozen=True)
class _Outcome:
    ready: bool
    changed: bool


class Reconciler:
    """One per operator process (built in main, handed to the handlers through kopf's memo)."""

    def __init__(self, kube: Kube, settings: OperatorSettings) -> None:
        self.kube = kube
        self.settings = settings
        self._gates: dict[Key, _Gate] = {}
        # What the last apply left on each child: a Deployment's generation, otherwise its resourceVersion.
        # A child event that shows something else means someone changed the child: drift to repair.
        self._applied: dict[Key, dict[tuple[str, str], str]] = {}

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
        full = kind != "Pod" and (deleted or self._drifted(key, kind, meta))
        await self._request(key, full=full)

    def forget(self, namespace: str, name: str) -> None:
        """The MultimodalDeployment is gone: drop what is remembered about it."""
        self._applied.pop((namespace, name), None)
        gate = self._gates.get((namespace, name))
        if gate is not None and not gate.lock.locked() and not gate.queued:
            del self._gates[(namespace, name)]

    # ------------------------------------------------------------------------------------------ coalescing

    def _drifted(self, key: Key, kind: str, meta: Mapping[str, Any]) -> bool:
        marker = meta.get("generation") if kind == "Deployment" else meta.get("resourceVersion")
        return self._applied.get(key, {}).get((kind, str(meta.get("name")))) != str(marker)

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
                loop = asyncio.get_running_loop()
                loop.call_later(delay, lambda: loop.create_task(self._request(key, full=False)))

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
        meta = owner["metadata"]
        facts = self.kube.node_facts()
        net = spec.networking
        resource = net.rdma.resource if net.rdma is not None else DEFAULT_RDMA_RESOURCE
        desired = build_children(
            name, namespace, meta["uid"], spec, self.settings, rdma_available=resource in facts.resources
        )
        markers = self._applied.setdefault((namespace, name), {})
        deployments = []
        for child in desired:
            applied = self.kube.apply(child)
            child_meta = applied["metadata"]
            kind = applied["kind"]
            marker = (
                child_meta.get("generation") if kind == "Deployment" else child_meta.get("resourceVersion")
            )
            markers[(kind, child_meta["name"])] = str(marker)
            if kind == "Deployment":
                deployments.append(applied)
        if prune:
            existing = child_refs(self.kube.list_children(namespace, name))
            for ref in stale_children(existing, desired, meta["uid"]):
                if self.kube.delete(ref, namespace):
                    markers.pop((ref.kind, ref.name), None)
                    self._event(
                        owner, "Normal", "Pruned", f"deleted {ref.kind} {ref.name}: no longer desired"
                    )
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
    ) -> _Outcome:
        meta = owner["metadata"]
        blockers: list[Blocker] = []
        pods = self.kube.pods(meta["namespace"], meta["name"])
        if pods:
            unschedulable = any(
                c.get("reason") == "Unschedulable"
                for p in pods
                for c in (p.get("status") or {}).get("conditions") or []
            )
            if unschedulable and facts is None:
                facts = self.kube.node_facts()
            blockers = pod_blockers(pods, facts)
        previous = owner.get("status")
        new = compute_status(
            spec, int(meta.get("generation", 0)), deployments, previous, datetime.now(UTC), blockers=blockers
        )
        ready = _condition_status(status_to_dict(new), READY) == "True"
        if not status_changed(previous, new):
            return _Outcome(ready, changed=False)
        new_dict = status_to_dict(new)
        self.kube.patch_status(meta["namespace"], meta["name"], previous, new_dict)
        self._events_for_flips(owner, previous or {}, new_dict)
        logger.info("%s/%s: status %s", meta["namespace"], meta["name"], new_dict.get("summary"))
        return _Outcome(ready, changed=True)

    def _write_invalid(self, namespace: str, name: str, message: str) -> None:
        owner = self.kube.get_owner(namespace, name)
        if owner is None:
            return
        previous = owner.get("status")
        new = invalid_spec_status(
            int(owner["metadata"].get("generation", 0)), previous, message, datetime.now(UTC)
        )
        if status_changed(previous, new):
            new_dict = status_to_dict(new)
            self.kube.patch_status(namespace, name, previous, new_dict)
            self._events_for_flips(owner, previous or {}, new_dict)

    # ------------------------------------------------------------------------------------------ events

    def _events_for_flips(
        self, owner: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        """Events only when Ready or Stalled flips (or a stall's reason changes), not on every refresh."""
        was_ready, is_ready = _condition_status(old, READY), _condition_status(new, READY)
        was_stalled = (_condition_status(old, STALLED), _condition_reason(old, STALLED))
        is_stalled = (_condition_status(new, STALLED), _condition_reason(new, STALLED))
        if is_ready == "True" and was_ready != "True":
            self._event(owner, "Normal", "Ready", _condition_message(new, READY))
        if is_stalled[0] == "True" and is_stalled != was_stalled:
            self._event(owner, "Warning", is_stalled[1] or "Stalled", _condition_message(new, STALLED))
        if was_ready == "True" and is_ready != "True":
            self._event(owner, "Normal", "NotReady", _condition_message(new, READY))

    def _event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.kube.emit_event(owner, type_, reason, message)
        except KubeError as exc:  # an Event is a courtesy: never fail a reconcile over it
            logger.info("could not record event %s: %s", reason, exc)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return cond  # type: ignore[no-any-return]
    return {}


def _condition_status(status: Mapping[str, Any], type_: str) -> str:
    return str(_condition(status, type_).get("status", ""))


def _condition_reason(status: Mapping[str, Any], type_: str) -> str:
    return str(_condition(status, type_).get("reason", ""))


def _condition_message(status: Mapping[str, Any], type_: str) -> str:
    return str(_condition(status, type_).get("message", ""))


__all__ = ["Reconciler"]
