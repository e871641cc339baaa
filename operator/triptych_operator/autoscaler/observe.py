"""Which pods the autoscaler reads, and what it makes of their samples. Pure.

A role's pods count only if they belong to the role's current ReplicaSet (the one whose revision is the
Deployment's: a rolling update's old pods are about to go), are not being deleted, and run on a real node
(a kwok node's pods have fake IPs that nothing may connect to). Of those, Ready pods with an IP are read;
the others count as not ready (0 % of the target when scaling up, as the HPA counts them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from triptych_contract import (
    LABEL_ROLE,
    METRIC_ENCODER_CACHE_UTILIZATION,
    METRIC_IN_FLIGHT,
    METRIC_KV_CACHE_UTILIZATION,
    METRIC_QUEUE_DEPTH,
)

from triptych_operator.api import AutoscalingTargets, Role
from triptych_operator.autoscaler.decision import MetricReading, PodSample
from triptych_operator.autoscaler.sources import PodMetrics, PodTarget

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TEMPLATE_HASH_LABEL = "pod-template-hash"
TargetName = Literal["queueDepth", "inFlight", "cacheUtilization"]


@dataclass(frozen=True)
class RolePods:
    """One role's pods as the autoscaler counts them."""

    ready: tuple[PodTarget, ...] = ()
    not_ready: int = 0


def current_template_hashes(
    deployments: Sequence[Mapping[str, Any]], replica_sets: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """Role -> the pod-template-hash of its Deployment's current ReplicaSet (same revision annotation)."""
    revision_by_role: dict[str, str] = {}
    for d in deployments:
        meta = d.get("metadata") or {}
        role = (meta.get("labels") or {}).get(LABEL_ROLE)
        revision = (meta.get("annotations") or {}).get(REVISION_ANNOTATION)
        if role and revision:
            revision_by_role[role] = revision
    out: dict[str, str] = {}
    for rs in replica_sets:
        meta = rs.get("metadata") or {}
        labels = meta.get("labels") or {}
        role = labels.get(LABEL_ROLE)
        revision = (meta.get("annotations") or {}).get(REVISION_ANNOTATION)
        if role in revision_by_role and revision == revision_by_role[role] and TEMPLATE_HASH_LABEL in labels:
            out[role] = labels[TEMPLATE_HASH_LABEL]
    return out


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def role_pods(
    pods: Sequence[Mapping[str, Any]], hashes: Mapping[str, str], fake_nodes: frozenset[str]
) -> dict[str, RolePods]:
    """Role -> its countable pods (see the module docstring); roles without a current ReplicaSet: none."""
    ready: dict[str, list[PodTarget]] = {}
    not_ready: dict[str, int] = {}
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        labels = meta.get("labels") or {}
        role = labels.get(LABEL_ROLE)
        if role is None or role not in hashes or labels.get(TEMPLATE_HASH_LABEL) != hashes[role]:
            continue
        if meta.get("deletionTimestamp") or (pod.get("spec") or {}).get("nodeName") in fake_nodes:
            continue
        ip = status.get("podIP")
        if _ready(pod) and ip:
            ready.setdefault(role, []).append(PodTarget(str(meta.get("name")), str(ip)))
        else:
            not_ready[role] = not_ready.get(role, 0) + 1
    roles = set(ready) | set(not_ready)
    return {r: RolePods(tuple(ready.get(r, [])), not_ready.get(r, 0)) for r in roles}


def metric_for(role: Role, target: TargetName) -> tuple[str, float]:
    """The worker metric behind a target, and the factor turning its value into the target's unit
    (utilization is published as 0..1 and targeted in percent)."""
    if target == "queueDepth":
        return METRIC_QUEUE_DEPTH, 1.0
    if target == "inFlight":
        return METRIC_IN_FLIGHT, 1.0
    cache = METRIC_ENCODER_CACHE_UTILIZATION if role == "encode" else METRIC_KV_CACHE_UTILIZATION
    return cache, 100.0


def configured(targets: AutoscalingTargets | None) -> list[tuple[TargetName, float]]:
    if targets is None:
        return []
    found: list[tuple[TargetName, int | None]] = [
        ("queueDepth", targets.queue_depth),
        ("inFlight", targets.in_flight),
        ("cacheUtilization", targets.cache_utilization),
    ]
    return [(name, float(value)) for name, value in found if value is not None]


def readings(
    role: Role, targets: AutoscalingTargets | None, pods: RolePods, samples: Mapping[str, PodMetrics]
) -> list[MetricReading]:
    """One MetricReading per configured target: ready pods with their value (None: no sample), not-ready
    pods as 0 and not ready."""
    out = []
    for name, target in configured(targets):
        metric, factor = metric_for(role, name)
        per_pod: list[PodSample] = []
        for pod in pods.ready:
            got = samples.get(pod.name)
            value = got.values.get(metric) if got is not None else None
            per_pod.append(PodSample(None if value is None else value * factor))
        per_pod += [PodSample(0.0, ready=False)] * pods.not_ready
        out.append(MetricReading(name, target, tuple(per_pod)))
    return out


def observed_means(found: Sequence[MetricReading]) -> dict[str, float]:
    """Each reading's mean over the ready pods that reported it (what status shows)."""
    out: dict[str, float] = {}
    for r in found:
        values = [p.value for p in r.pods if p.ready and p.value is not None]
        if values:
            out[r.name] = sum(values) / len(values)
    return out


__all__ = [
    "RolePods",
    "TargetName",
    "configured",
    "current_template_hashes",
    "metric_for",
    "observed_means",
    "readings",
    "role_pods",
]
