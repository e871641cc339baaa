"""What one reconcile does, path by path: read (`Reads`), ask the planner (`plan.py`, pure), carry it out
(`Executor`). Each path is synchronous and runs in a worker thread, under the object's gate.

- `full`: the whole path: read the owner and what replicas are planned from, adopt manual scales, plan the
  children (and, when pruning, what to delete), apply, prune, write status.
- `refresh`: only the status, from the cache where it can (a pod or a Deployment's status changed).
- `autoscaler_view` / `write_status`: what an autoscaler evaluation reads, and the status it writes.
- `write_invalid`: Stalled with InvalidSpec for a spec that can never work.

Manual scale of a Builtin-autoscaled role (`kubectl scale deployment/<name>-<role>`): the new count,
clamped to minReplicas..maxReplicas, becomes the role's current replicas and counts as a recommendation
made at that moment (an Event says so; `plan.manual_scales`). So a manual scale-up holds for at least the
role's scale-down stabilization window (300 s by default) before the metrics may take it back, and a manual
scale-down below what the metrics need is undone at the next evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from triptych_operator.api import MultimodalDeploymentSpec
from triptych_operator.autoscaler.evaluate import Autoscaler, needs_evaluation
from triptych_operator.autoscaler.observe import RolePods, current_template_hashes, role_pods
from triptych_operator.cluster import DEPLOYMENT, ROLE_SCALE, NodeFacts
from triptych_operator.handlers.executor import Executor
from triptych_operator.handlers.reads import Reads
from triptych_operator.naming import Owner
from triptych_operator.plan import (
    child_refs,
    children_for_status,
    children_to_read,
    manual_scales,
    needs_node_facts,
    plan_children,
    plan_invalid,
    plan_replicas,
    plan_status,
    pod_blockers,
)
from triptych_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
Json = dict[str, Any]


@dataclass(frozen=True)
class AutoscalerView:
    """What one evaluation decides from: the owner, its spec, the role Deployments, each role's pods of the
    current ReplicaSet, and the node facts."""

    owner: Json
    spec: MultimodalDeploymentSpec
    deployments: list[Json]
    pods: dict[str, RolePods]
    facts: NodeFacts


class Paths:
    def __init__(
        self,
        reads: Reads,
        executor: Executor,
        settings: OperatorSettings,
        autoscaler: Autoscaler | None,
        forget: Callable[[Key], None],
    ) -> None:
        self.reads = reads
        self.executor = executor
        self.settings = settings
        self.autoscaler = autoscaler
        self._forget = forget  # the owner is gone: everything remembered about it goes
        # Deployments the autoscaler loop evaluates, with their evaluation interval (tracked by every path).
        self.tracked: dict[Key, float] = {}

    def _owner(self, key: Key, *, fresh: bool = False) -> tuple[Json, MultimodalDeploymentSpec] | None:
        found = self.reads.owner(key, fresh=fresh)
        if found is None:
            self._forget(key)
            return None
        owner, spec = found
        if self.autoscaler is not None and needs_evaluation(spec):
            self.tracked[key] = float(spec.autoscaling.evaluation_interval_seconds)
        else:
            self.tracked.pop(key, None)
        return owner, spec

    def full(self, key: Key, *, prune: bool, fresh: bool = False) -> None:
        found = self._owner(key, fresh=fresh)
        if found is None:
            return
        owner, spec = found
        facts = self.reads.kube.node_facts()
        listed = self.reads.children(key, children_to_read(spec, prune=prune), fresh=prune)
        existing = child_refs(listed) if prune else []
        live = listed.get(DEPLOYMENT, [])
        self._adopt_manual_scales(key, owner, spec, live)
        decided = self.autoscaler.decided(key) if self.autoscaler is not None else {}
        replicas = plan_replicas(spec, live, listed.get(ROLE_SCALE, []), decided)
        plan = plan_children(
            Owner(key[1], key[0], owner["metadata"]["uid"]), spec, self.settings, facts, existing,
            replicas={str(r): n for r, n in replicas.items()},
        )  # fmt: skip
        deployments, role_scales = self.executor.apply(key, plan.desired, replicas)
        self.executor.prune(owner, plan.prune)
        self.write_status(owner, spec, deployments, facts, role_scales)

    def _adopt_manual_scales(
        self, key: Key, owner: Mapping[str, Any], spec: MultimodalDeploymentSpec, deployments: list[Json]
    ) -> None:
        if self.autoscaler is None:
            return
        for scale in manual_scales(
            spec, deployments, self.autoscaler.decided(key), self.executor.applied(key)
        ):
            self.autoscaler.adopt(key, scale.role, scale.taken)
            event = scale.event()
            self.executor.event(owner, event.type, event.reason, event.message)

    def refresh(self, key: Key) -> None:
        found = self._owner(key)
        if found is None:
            return
        owner, spec = found
        listed = self.reads.children(key, children_for_status(spec))
        self.write_status(owner, spec, listed[DEPLOYMENT], None, listed.get(ROLE_SCALE, []))

    def autoscaler_view(self, key: Key) -> AutoscalerView | None:
        found = self._owner(key)
        if found is None:
            return None
        owner, spec = found
        deployments = self.reads.children(key, [DEPLOYMENT])[DEPLOYMENT]
        hashes = current_template_hashes(deployments, self.reads.kube.replica_sets(*key))
        facts = self.reads.kube.node_facts()
        pods = role_pods(self.reads.pods(key), hashes, facts.fake_nodes)
        return AutoscalerView(owner, spec, deployments, pods, facts)

    def write_status(
        self,
        owner: Mapping[str, Any],
        spec: MultimodalDeploymentSpec,
        deployments: list[Json],
        facts: NodeFacts | None,
        role_scales: list[Json] | None = None,
    ) -> None:
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        pods = self.reads.pods(key)
        if facts is None and needs_node_facts(pods):
            facts = self.reads.kube.node_facts()
        scaling, transport = self.autoscaler.last(key) if self.autoscaler else ({}, None)
        update = plan_status(
            owner,
            spec,
            deployments,
            pod_blockers(pods, facts),
            datetime.now(UTC),
            scaling={str(r): v for r, v in scaling.items()},
            transport=transport,
        )
        self.executor.write_status(owner, update)
        self.executor.write_role_scales(key, deployments, role_scales or [])
        if update is not None:
            logger.info("%s/%s: status %s", key[0], key[1], update.status.get("summary"))

    def write_invalid(self, key: Key, message: str) -> None:
        owner = self.reads.kube.get_owner(*key)
        if owner is not None:
            self.executor.write_status(owner, plan_invalid(owner, message, datetime.now(UTC)))


__all__ = ["AutoscalerView", "Paths"]
