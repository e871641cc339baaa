"""The planner: what one reconcile should do, decided without I/O.

The Reconciler (`handlers/paths.py`) reads the cluster (`handlers/reads.py`), hands what it read to the
functions here, and carries out what they return (`handlers/executor.py`); `kube.py` only moves bytes.
Like LWS's `planner.ComputeNextStep`, each decision is a pure function of its inputs, unit-tested on its own:

- `plan_children`: desired children (built by the builders) and the prune set (children we control that
  are no longer desired) -> a `Plan`;
- `applied_marker` / `drifted`: whether a child event shows a change we did not make (drift to repair);
- `unchanged_since_applied`: whether an apply may be skipped; `manual_scales`: which Deployments someone
  else scaled, and what the autoscaler adopts; `children_to_read` / `children_for_status`: what to list;
  `retry_delay`: the backoff of a re-queued request;
- `pod_blockers` (+ `needs_node_facts`): what keeps pods from running, for `Stalled`;
- `plan_status` / `plan_invalid`: the new status (or None when nothing changed), the Events its condition
  flips deserve, and the merge patch that writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triptych_contract import LABEL_ROLE

from triptych_operator.api import ROLE_KIND, MultimodalDeploymentSpec, Role
from triptych_operator.builders import build_children
from triptych_operator.cluster import (
    CHILD_KINDS,
    DEPLOYMENT,
    GPU_PRODUCT_LABEL,
    ROLE_SCALE,
    ChildRef,
    NodeFacts,
)
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings
from triptych_operator.status import (
    BLOCKER_REASONS,
    READY,
    STALLED,
    Blocker,
    RoleScaling,
    TransportReport,
    compute_status,
    invalid_spec_status,
    status_changed,
    status_to_dict,
)

DEFAULT_RDMA_RESOURCE = "rdma/ib"
Json = dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A core/v1 Event to record on the MultimodalDeployment."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """The children to apply (pipeline order: per role its ConfigMap, Service, Deployment) and those to
    delete."""

    desired: tuple[Json, ...]
    prune: tuple[ChildRef, ...]


@dataclass(frozen=True)
class StatusUpdate:
    """A status that differs from the stored one: the merge patch to send and the Events to record."""

    status: Json
    patch: Json
    events: tuple[Event, ...]


# ------------------------------------------------------------------------------------------------ children


def rdma_available(spec: MultimodalDeploymentSpec, facts: NodeFacts) -> bool:
    """`networking.transport: auto` resolved: does any node advertise the RDMA resource the spec names?"""
    rdma = spec.networking.rdma
    return (rdma.resource if rdma is not None else DEFAULT_RDMA_RESOURCE) in facts.resources


def plan_children(
    owner: Owner,
    spec: MultimodalDeploymentSpec,
    settings: OperatorSettings,
    facts: NodeFacts,
    existing: Iterable[ChildRef] = (),
    *,
    replicas: Mapping[str, int] | None = None,
) -> Plan:
    """Desired children of one MultimodalDeployment, and which of `existing` to prune."""
    desired = build_children(
        owner, spec, settings, rdma_available=rdma_available(spec, facts), replicas=replicas
    )
    return Plan(tuple(desired), tuple(stale_children(existing, desired, owner.uid)))


def child_refs(listed: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]]) -> list[ChildRef]:
    """The listed children (by (apiVersion, kind)) as references, with the uid of their controller."""
    out = []
    for (api_version, kind), items in listed.items():
        for item in items:
            meta = item.get("metadata") or {}
            controller = next(
                (o.get("uid") for o in meta.get("ownerReferences") or [] if o.get("controller")), None
            )
            out.append(ChildRef(api_version, kind, meta.get("name", ""), meta.get("uid", ""), controller))
    return out


def stale_children(
    existing: Iterable[ChildRef], desired: Iterable[Mapping[str, Any]], owner_uid: str
) -> list[ChildRef]:
    """Children controlled by `owner_uid` that the desired state no longer has (a removed role). Objects
    with our labels but another controller are never touched."""
    wanted = {(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in desired}
    return [
        r for r in existing if r.controller_uid == owner_uid and (r.api_version, r.kind, r.name) not in wanted
    ]


def _by_role(items: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(((i.get("metadata") or {}).get("labels") or {}).get(LABEL_ROLE)): i for i in items}


def plan_replicas(
    spec: MultimodalDeploymentSpec,
    deployments: Iterable[Mapping[str, Any]],
    role_scales: Iterable[Mapping[str, Any]],
    decided: Mapping[Role, int],
) -> dict[Role, int]:
    """Replicas of the roles the spec does not set: a Builtin role takes the autoscaler's last decision,
    else (a restarted operator) what its Deployment has now, else the spec's, always within
    minReplicas..maxReplicas; an External role takes its MultimodalRole's spec.replicas (the spec's until
    that object exists)."""
    live, scales = _by_role(deployments), _by_role(role_scales)
    out: dict[Role, int] = {}
    for role in spec.present_roles():
        role_spec = spec.role(role)
        if role_spec is None:
            continue
        scaler = spec.scaler(role)
        if scaler == "Builtin" and role_spec.autoscaling is not None:
            a = role_spec.autoscaling
            now = (live.get(role) or {}).get("spec", {}).get("replicas")
            wanted = decided.get(role, int(now) if now is not None else role_spec.replicas)
            out[role] = min(max(wanted, a.min_replicas), a.max_replicas)
        elif scaler == "External":
            given = (scales.get(role) or {}).get("spec", {}).get("replicas")
            out[role] = int(given) if given is not None else role_spec.replicas
    return out


def role_scale_status(deployment: Mapping[str, Any] | None, selector: Mapping[str, str]) -> dict[str, Any]:
    """A MultimodalRole's status from its role's Deployment: what /scale reports."""
    status = (deployment or {}).get("status") or {}
    return {
        "replicas": int(status.get("replicas", 0)),
        "ready": int(status.get("readyReplicas", 0)),
        "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
    }


def peering_active(peers: Mapping[str, Any], own_priority: int, now: datetime) -> bool:
    """Whether this operator is the one kopf lets work, from the peering object's status (peer id ->
    priority, lifetime, lastseen): no live peer outranks it and none shares its priority (kopf pauses
    both then). The autoscaler's loop is not a kopf handler, so it asks this itself."""
    same = 0
    for peer in peers.values():
        if not isinstance(peer, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(peer.get("lastseen")))
            alive = (now - seen).total_seconds() < float(peer.get("lifetime", 60))
            priority = int(peer.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if alive and priority > own_priority:
            return False
        same += alive and priority == own_priority
    return same <= 1


# ------------------------------------------------------------------------------------------------ drift


GENERATION_KINDS = ("Deployment", ROLE_KIND)  # kinds with a status subresource: status writes keep generation


def applied_marker(kind: str, meta: Mapping[str, Any]) -> str:
    """What identifies the state we applied: a Deployment's or MultimodalRole's generation (status writes
    move resourceVersion, not generation), any other kind's resourceVersion."""
    return str(meta.get("generation") if kind in GENERATION_KINDS else meta.get("resourceVersion"))


def drifted(applied: Mapping[tuple[str, str], str], kind: str, name: str, marker: str) -> bool:
    """A child event whose marker (`applied_marker` of the child it showed) is not the one our last apply
    left: someone else changed the child (or we never applied it in this process)."""
    return applied.get((kind, name)) != marker


def child_digest(child: Mapping[str, Any]) -> str:
    """What identifies a desired child: equal digests, equal objects (`unchanged_since_applied`)."""
    return hashlib.blake2b(json.dumps(child, sort_keys=True).encode(), digest_size=16).hexdigest()


def unchanged_since_applied(
    kind: str, digest: str, applied_digest: str | None, marker: str | None, live: Mapping[str, Any] | None
) -> bool:
    """Whether applying a desired child (`digest`) again would change nothing, so the apply is skipped:
    this process last applied exactly that (`applied_digest`), and the child as the cache has it (`live`;
    None where there is no cache or it holds no such child) still carries the marker that apply left, so
    nobody changed it since."""
    if applied_digest != digest or live is None:
        return False
    return marker == applied_marker(kind, live.get("metadata") or {})


@dataclass(frozen=True)
class ManualScale:
    """A Builtin-autoscaled role's Deployment scaled by someone else to `given`; `taken` is what the
    autoscaler adopts (`given` clamped to minReplicas..maxReplicas)."""

    role: Role
    given: int
    taken: int

    def event(self) -> Event:
        clamp = "" if self.taken == self.given else f" (clamped to {self.taken}: minReplicas..maxReplicas)"
        return Event(
            "Normal",
            "ManualScale",
            f"{self.role} was scaled to {self.given} outside the autoscaler{clamp}; taken as its current "
            "replicas and held for the scale-down stabilization window unless the metrics ask for more "
            "(set minReplicas = maxReplicas to pin a size)",
        )


def manual_scales(
    spec: MultimodalDeploymentSpec,
    deployments: Iterable[Mapping[str, Any]],
    decided: Mapping[Role, int],
    applied: Mapping[tuple[str, str], str],
) -> list[ManualScale]:
    """The documented manual-scale rule (README, "Manual scale"): the Deployments of Builtin-autoscaled
    roles whose replicas differ from the autoscaler's decision and that someone other than this process's
    last apply (its marker in `applied`) changed."""
    out = []
    autoscaled = spec.autoscaled()
    for deployment in deployments:
        meta = deployment["metadata"]
        role: Role = meta["labels"].get(LABEL_ROLE)
        auto = autoscaled.get(role)
        given = int(deployment["spec"].get("replicas", 0))
        if auto is None or role not in decided or given == decided[role]:
            continue
        if applied.get(("Deployment", meta["name"])) == applied_marker("Deployment", meta):
            continue  # our own last apply
        out.append(ManualScale(role, given, min(max(given, auto.min_replicas), auto.max_replicas)))
    return out


def children_to_read(spec: MultimodalDeploymentSpec, *, prune: bool) -> list[tuple[str, str]]:
    """The kinds of child a whole reconcile lists: every kind when it may prune (from the API, never the
    cache: it deletes what is listed); else the Deployments and MultimodalRoles that replicas are planned
    from, where some role is scaled by something other than the spec; else none."""
    if prune:
        return list(CHILD_KINDS)
    if spec.autoscaled() or spec.externally_scaled():
        return [DEPLOYMENT, ROLE_SCALE]
    return []


def children_for_status(spec: MultimodalDeploymentSpec) -> list[tuple[str, str]]:
    """The kinds of child a status refresh reads: the Deployments, and the MultimodalRoles whose /scale
    status it also writes."""
    return [DEPLOYMENT, ROLE_SCALE] if spec.externally_scaled() else [DEPLOYMENT]


def current_replicas(deployments: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each role's replicas as its Deployment has them now (what the autoscaler decides from)."""
    return {
        str(d["metadata"]["labels"].get(LABEL_ROLE)): int(d["spec"].get("replicas", 0)) for d in deployments
    }


RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)  # child-event re-queues after transient errors


def retry_delay(failures: int, retry_after: float | None = None) -> float:
    """How long a re-queued request waits after `failures` failures in a row: the next step of
    RETRY_DELAYS (its last one from then on), never less than the API server's Retry-After."""
    delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
    return delay if retry_after is None else max(delay, retry_after)


# ------------------------------------------------------------------------------------------------ blockers


def needs_node_facts(pods: Iterable[Mapping[str, Any]]) -> bool:
    """Whether some pod is unschedulable, so `pod_blockers` needs the nodes' GPU products to say why."""
    return any(
        c.get("reason") == "Unschedulable"
        for p in pods
        for c in (p.get("status") or {}).get("conditions") or []
    )


def pod_blockers(pods: Iterable[Mapping[str, Any]], facts: NodeFacts | None = None) -> list[Blocker]:
    """What keeps pods from running: Unschedulable (PodScheduled=False), or a container waiting with one of
    status.BLOCKER_REASONS (image pulls, crash loops). One blocker per (role, reason), first message kept.
    When a pod is unschedulable because it asks for a GPU product no node has, say so (the scheduler's
    message only counts nodes that did not match)."""
    found: dict[tuple[str, str], Blocker] = {}
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        role = str((meta.get("labels") or {}).get(LABEL_ROLE, ""))
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                reason, message = "Unschedulable", str(cond.get("message", ""))
                product = _required_gpu_product(pod)
                if product is not None and facts is not None and product not in facts.gpu_products:
                    reason = "GPUProductUnavailable"
                    message = f"no node has {GPU_PRODUCT_LABEL}={product} ({message})"
                found.setdefault((role, reason), Blocker(role, reason, message))
        for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in BLOCKER_REASONS:
                reason = str(waiting["reason"])
                message = f"container {cs.get('name')}: {waiting.get('message', '')}".strip()
                found.setdefault((role, reason), Blocker(role, reason, message))
    return list(found.values())


def _required_gpu_product(pod: Mapping[str, Any]) -> str | None:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == GPU_PRODUCT_LABEL and expr.get("operator") == "In" and expr.get("values"):
                return str(expr["values"][0])
    return None


# ------------------------------------------------------------------------------------------------ status


def plan_status(
    owner: Mapping[str, Any],
    spec: MultimodalDeploymentSpec,
    deployments: Sequence[Mapping[str, Any]],
    blockers: Sequence[Blocker],
    now: datetime,
    *,
    scaling: Mapping[str, RoleScaling] | None = None,
    transport: Sequence[TransportReport] | None = None,
) -> StatusUpdate | None:
    """The owner's new status from its child Deployments, pod blockers and the autoscaler's last
    observation; None when it is unchanged."""
    previous = owner.get("status")
    generation = int((owner.get("metadata") or {}).get("generation", 0))
    new = compute_status(
        spec, generation, deployments, previous, now, blockers=blockers, scaling=scaling, transport=transport
    )
    if not status_changed(previous, new):
        return None
    return _update(previous, status_to_dict(new))


def plan_invalid(owner: Mapping[str, Any], message: str, now: datetime) -> StatusUpdate | None:
    """Status for a spec the operator refuses (Stalled, InvalidSpec); None when it is already that."""
    previous = owner.get("status")
    generation = int((owner.get("metadata") or {}).get("generation", 0))
    new = invalid_spec_status(generation, previous, message, now)
    if not status_changed(previous, new):
        return None
    return _update(previous, status_to_dict(new))


def _update(previous: Mapping[str, Any] | None, new: Json) -> StatusUpdate:
    old = previous or {}
    return StatusUpdate(new, merge_patch(old, new), tuple(flip_events(old, new)))


def is_ready(status: Mapping[str, Any]) -> bool:
    return _condition(status, READY).get("status") == "True"


def flip_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """Events only when Ready or Stalled flips (or a stall's reason changes), not on every refresh."""
    was_ready, now_ready = is_ready(old), is_ready(new)
    was_stalled, now_stalled = _condition(old, STALLED), _condition(new, STALLED)
    events = []
    if now_ready and not was_ready:
        events.append(Event("Normal", "Ready", str(_condition(new, READY).get("message", ""))))
    stall = (now_stalled.get("status"), now_stalled.get("reason"))
    if stall[0] == "True" and stall != (was_stalled.get("status"), was_stalled.get("reason")):
        reason = str(stall[1] or "Stalled")
        events.append(Event("Warning", reason, str(now_stalled.get("message", ""))))
    if was_ready and not now_ready:
        events.append(Event("Normal", "NotReady", str(_condition(new, READY).get("message", ""))))
    return events


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return cond  # type: ignore[no-any-return]
    return {}


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Json:
    """A JSON merge patch (RFC 7386) turning `old` into `new`: changed keys, and None for removed ones
    (a merge patch otherwise keeps what it does not mention)."""
    patch: Json = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


__all__ = [
    "RETRY_DELAYS",
    "Event",
    "ManualScale",
    "Plan",
    "StatusUpdate",
    "applied_marker",
    "child_digest",
    "child_refs",
    "children_for_status",
    "children_to_read",
    "current_replicas",
    "drifted",
    "flip_events",
    "is_ready",
    "manual_scales",
    "merge_patch",
    "needs_node_facts",
    "peering_active",
    "plan_children",
    "plan_invalid",
    "plan_replicas",
    "plan_status",
    "pod_blockers",
    "rdma_available",
    "retry_delay",
    "role_scale_status",
    "stale_children",
    "unchanged_since_applied",
]
