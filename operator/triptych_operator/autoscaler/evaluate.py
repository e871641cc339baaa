"""One evaluation of one MultimodalDeployment's autoscaled roles, and what is remembered between them.

The Reconciler (handlers/reconcile.py) reads the cluster, calls `Autoscaler.evaluate` every
`spec.autoscaling.evaluationIntervalSeconds`, and writes what it returns: the replicas through its one
server-side-apply field manager, status, an Event per scale. Here:

1. the countable pods of each role (`observe.role_pods`) and of the frontends are read through the metrics
   source (scrape or Prometheus);
2. each Builtin role gets `decision.decide` with its own behavior and History (HPA semantics);
3. encode at zero replicas is woken (0 -> max(1, minReplicas)) when the frontends hold requests for it
   (the pending-requests metric); text-only traffic holds none, so it never wakes encode;
4. `policy.apply_ratio_bounds` keeps the pools in proportion, growing only autoscaled roles.

Every decision carries a reason a person can read; the last one per role is kept for status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from triptych_contract import METRIC_PENDING_REQUESTS

from triptych_operator.api import MultimodalDeploymentSpec, Role
from triptych_operator.autoscaler.decision import History, decide
from triptych_operator.autoscaler.observe import (
    RolePods,
    configured,
    metric_for,
    observed_means,
    readings,
)
from triptych_operator.autoscaler.policy import apply_ratio_bounds, behavior_from
from triptych_operator.autoscaler.sources import MetricsSource, PodMetrics, PodTarget, SourceError
from triptych_operator.status import RoleScaling, TransportReport

Key = tuple[str, str]


@dataclass(frozen=True)
class Scale:
    """One role's replicas changing."""

    role: Role
    before: int
    after: int
    reason: str


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation found: the replicas each autoscaled role should have, the scales among them,
    status per role, the degraded-transport reports, and whether the source failed as a whole."""

    replicas: dict[Role, int]
    scales: tuple[Scale, ...]
    scaling: dict[Role, RoleScaling]
    transport: tuple[TransportReport, ...] | None
    error: str | None = None


@dataclass
class _Memory:
    histories: dict[Role, History] = field(default_factory=dict)
    decided: dict[Role, int] = field(default_factory=dict)
    last_scale: dict[Role, datetime] = field(default_factory=dict)
    scaling: dict[Role, RoleScaling] = field(default_factory=dict)
    transport: tuple[TransportReport, ...] | None = None
    next_at: float = 0.0


def observed_roles(spec: MultimodalDeploymentSpec) -> list[Role]:
    """Roles whose pods an evaluation reads: the Builtin-autoscaled ones, and every worker role when the
    deployment may run RDMA (so a silent fallback to TCP is seen)."""
    roles: list[Role] = list(spec.autoscaled())
    if spec.uses_gpus and spec.networking.transport != "tcp":
        roles += [r for r in spec.present_roles() if r != "frontend" and r not in roles]
    return roles


def needs_evaluation(spec: MultimodalDeploymentSpec) -> bool:
    return bool(observed_roles(spec))


class Autoscaler:
    """Per MultimodalDeployment: the decision's History per role, the last replicas decided, the last
    observation (for status), and when to evaluate next. One per operator process."""

    def __init__(self, source: MetricsSource, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self._memory: dict[Key, _Memory] = {}

    # ------------------------------------------------------------------------------------------ state

    def decided(self, key: Key) -> dict[Role, int]:
        """Replicas the autoscaler last decided per role (empty before its first evaluation)."""
        memory = self._memory.get(key)
        return dict(memory.decided) if memory is not None else {}

    def adopt(self, key: Key, role: Role, replicas: int) -> None:
        """Take a replica count set outside the autoscaler (a manual `kubectl scale` of the Deployment,
        clamped by the caller) as the role's current one, and as a recommendation made now: the scale-down
        window then holds a manual scale-up for its length (the HPA's own stabilization would undo it at
        the next evaluation, its window holding only the lower recommendations made before), while a
        manual scale-down below what the metrics need is undone by the next evaluation."""
        memory = self._memory.setdefault(key, _Memory())
        memory.decided[role] = replicas
        memory.histories.setdefault(role, History()).recommendations.append((self._clock(), replicas))

    def last(self, key: Key) -> tuple[dict[Role, RoleScaling], tuple[TransportReport, ...] | None]:
        memory = self._memory.get(key)
        if memory is None:
            return {}, None
        return dict(memory.scaling), memory.transport

    def due(self, key: Key, interval_s: float) -> bool:
        """Whether the deployment's next evaluation is due; if so, the one after is scheduled one interval
        after this one was due (not after now: a loop that ticks a little late must not stretch every
        interval by its lateness), or an interval from now when it fell behind by more than one."""
        memory = self._memory.setdefault(key, _Memory())
        now = self._clock()
        if now < memory.next_at:
            return False
        behind = now - memory.next_at
        memory.next_at = (memory.next_at if memory.next_at and behind < interval_s else now) + interval_s
        return True

    def tracked(self) -> list[Key]:
        return list(self._memory)

    def forget(self, key: Key) -> None:
        self._memory.pop(key, None)

    # ------------------------------------------------------------------------------------------ evaluation

    async def evaluate(
        self,
        key: Key,
        spec: MultimodalDeploymentSpec,
        current: Mapping[str, int],
        pods: Mapping[str, RolePods],
        frontends: Sequence[PodTarget],
    ) -> Evaluation:
        """Decide every Builtin role's replicas from its pods' metrics (see the module docstring).
        `current`: each role's replicas now (its Deployment's spec.replicas)."""
        memory = self._memory.setdefault(key, _Memory())
        autoscaled = spec.autoscaled()
        roles = observed_roles(spec)
        metrics = sorted({metric_for(r, name)[0] for r in autoscaled for name, _ in configured(
            autoscaled[r].targets)})  # fmt: skip
        targets = [p for r in roles for p in pods.get(r, RolePods()).ready]
        wake = "encode" in autoscaled and current.get("encode", 0) == 0
        try:
            samples = await self.source.collect(key[0], targets, metrics)
            pending_samples = (
                await self.source.collect(key[0], frontends, [METRIC_PENDING_REQUESTS]) if wake else {}
            )
        except SourceError as exc:
            return self._unchanged(memory, current, autoscaled, f"metrics source {self.source.name}: {exc}")
        now, wall = self._clock(), datetime.now(UTC)
        replicas = {r: current.get(r, 0) for r in spec.present_roles()}
        reasons: dict[Role, str] = {}
        observed: dict[Role, dict[str, float]] = {}
        pending = _pending(pending_samples)
        for role, auto in autoscaled.items():
            found = readings(role, auto.targets, pods.get(role, RolePods()), samples)
            observed[role] = observed_means(found)
            history = memory.histories.setdefault(role, History())
            before = current.get(role, 0)
            if role == "encode" and before == 0 and pending > 0:
                replicas[role] = max(1, auto.min_replicas)
                reasons[role] = (
                    f"encode: {pending} requests pending with no encode replica -> {replicas[role]}"
                )
                continue
            decision = decide(
                role, before, found, auto.min_replicas, auto.max_replicas, behavior_from(auto.behavior),
                history, now,
            )  # fmt: skip
            replicas[role], reasons[role] = decision.replicas, decision.reason
        workers = {r: n for r, n in replicas.items() if r != "frontend"}
        bounded = apply_ratio_bounds(
            workers,
            spec.autoscaling.ratios,
            {r: a.max_replicas for r, a in autoscaled.items() if r != "frontend"},
        )
        grown_by_role: dict[str, int] = {str(r): n for r, n in bounded.replicas.items()}
        for role in autoscaled:
            grown = grown_by_role.get(role, replicas[role])
            if grown != replicas[role]:
                notes = [n for n in bounded.reasons if f" {role} to " in n]
                reasons[role] += "; " + "; ".join(notes)
                replicas[role] = grown
        scales = []
        for role in autoscaled:
            before, after = current.get(role, 0), replicas[role]
            if after != before:
                scales.append(Scale(role, before, after, reasons[role]))
                memory.last_scale[role] = wall
            memory.decided[role] = after
            memory.scaling[role] = RoleScaling(
                "Builtin",
                observed.get(role, {}),
                reasons[role],
                pending if role == "encode" and wake else None,
                memory.last_scale.get(role),
            )
        memory.transport = tuple(
            TransportReport(role, d.pod, d.requested, d.effective, d.reason)
            for role in roles
            for pod in pods.get(role, RolePods()).ready
            for d in samples.get(pod.name, PodMetrics()).degraded
        )
        return Evaluation(
            {r: replicas[r] for r in autoscaled}, tuple(scales), dict(memory.scaling), memory.transport
        )

    def _unchanged(
        self, memory: _Memory, current: Mapping[str, int], autoscaled: Mapping[Role, object], error: str
    ) -> Evaluation:
        """The source failed as a whole: no role changes (the HPA does the same), and status says why."""
        for role in autoscaled:
            memory.decided.setdefault(role, current.get(role, 0))
            previous = memory.scaling.get(role)
            memory.scaling[role] = RoleScaling(
                "Builtin",
                previous.observed if previous is not None else {},
                f"{role}: {error}; replicas stay {current.get(role, 0)}",
                None,
                memory.last_scale.get(role),
            )
        return Evaluation(
            {r: current.get(r, 0) for r in autoscaled}, (), dict(memory.scaling), memory.transport, error
        )


def _pending(samples: Mapping[str, PodMetrics]) -> int:
    return round(sum(m.values.get(METRIC_PENDING_REQUESTS, 0.0) for m in samples.values()))


__all__ = ["Autoscaler", "Evaluation", "Scale", "needs_evaluation", "observed_roles"]
