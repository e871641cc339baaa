"""The Reconciler's own logic on plans: what it applies, prunes and writes, drift, coalescing, retries.

`MemoryKube` is an in-memory stand-in for the kube module, with the same methods the Reconciler calls:
these tests are about the Reconciler's decisions and bookkeeping (how many calls, in what order, what is
re-queued), which a real API server cannot make observable or deterministic. The same paths against the
real local cluster (drift repair, pruning, status, API-server restarts) are tests/e2e/operator.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import kopf
import pytest
from triptych_contract import METRIC_QUEUE_DEPTH
from triptych_operator import plan as plan_module
from triptych_operator.autoscaler.evaluate import Autoscaler
from triptych_operator.autoscaler.sources import PodMetrics
from triptych_operator.cluster import CHILD_KINDS, ChildRef, NodeFacts
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.handlers.reconcile import Reconciler
from triptych_operator.kube import ServerError
from triptych_operator.settings import OperatorSettings

NS, NAME, UID = "ns", "x", "owner-uid"
REVISION = "deployment.kubernetes.io/revision"


class MemoryKube:
    """Objects in dicts; Deployments' generation moves only when their spec does, like the API server's."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.owner: dict[str, Any] = {
            "apiVersion": "triptych.dev/v1alpha1",
            "kind": "MultimodalDeployment",
            "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
            "spec": spec,
        }
        self.children: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.fail_listing: int = 0  # the next N list_children calls raise a 503
        self.pods_gate: threading.Event | None = None  # when set, pods() waits for it
        self.in_pods = threading.Event()
        self.apply_gate: threading.Event | None = None  # when set, apply() waits for it once it wrote
        self.in_apply = threading.Event()
        self.pod_list: list[dict[str, Any]] = []
        self.messages: list[str] = []
        self._version = 0

    def _rv(self) -> str:
        self._version += 1
        return str(self._version)

    def get_owner(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get_owner")
        return copy.deepcopy(self.owner)

    def node_facts(self) -> NodeFacts:
        self.calls.append("node_facts")
        return NodeFacts(frozenset(), frozenset())

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        self.calls.append(f"apply {obj['kind']} {obj['metadata']['name']}")
        old = self.children.get(key)
        new = copy.deepcopy(dict(obj))
        generation = 1 if old is None else old["metadata"]["generation"]
        if old is not None and old.get("spec") != new.get("spec"):
            generation += 1
        new["metadata"].update(generation=generation, resourceVersion=self._rv(), uid=f"uid-{key[2]}")
        if old is not None and old["kind"] == "MultimodalRole":  # the seeded replicas are not ours to drop
            new["spec"] = {**old["spec"], **new["spec"]}
        if obj["kind"] == "Deployment":  # what the Deployment controller writes, for the current ReplicaSet
            new["metadata"].setdefault("annotations", {})[REVISION] = "1"
        self.children[key] = new
        self.in_apply.set()
        if self.apply_gate is not None:
            assert self.apply_gate.wait(10), "the test never released apply()"
        return copy.deepcopy(new)

    def seed_replicas(self, obj: Mapping[str, Any], replicas: int) -> dict[str, Any]:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        self.calls.append(f"seed {obj['metadata']['name']} {replicas}")
        self.children[key]["spec"]["replicas"] = replicas
        self.children[key]["metadata"]["generation"] += 1
        return copy.deepcopy(self.children[key])

    def patch_child_status(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        self.calls.append(f"status {obj['metadata']['name']}")
        self.children[key]["status"] = dict(status)
        self.children[key]["metadata"]["resourceVersion"] = self._rv()
        return copy.deepcopy(self.children[key])

    def replica_sets(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        return [
            {"metadata": {"labels": {**d["metadata"]["labels"], "pod-template-hash": "h"},
                          "annotations": {REVISION: "1"}}}
            for (_, kind, _), d in self.children.items() if kind == "Deployment"
        ]  # fmt: skip

    def list_children(
        self, namespace: str, owner: str, kinds: Iterable[tuple[str, str]] = CHILD_KINDS
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        self.calls.append("list_children")
        if self.fail_listing:
            self.fail_listing -= 1
            raise ServerError("list: 503 Service Unavailable", status=503)
        return {
            (av, kind): [copy.deepcopy(o) for (a, k, _), o in self.children.items() if (a, k) == (av, kind)]
            for av, kind in kinds
        }

    def delete(self, ref: ChildRef, namespace: str) -> bool:
        self.calls.append(f"delete {ref.kind} {ref.name}")
        return self.children.pop((ref.api_version, ref.kind, ref.name), None) is not None

    def replace_pods(self, pods: list[dict[str, Any]]) -> None:
        """New pods, each with the next resourceVersion (as the API server would have them)."""
        self.pod_list = [{**p, "metadata": {**p["metadata"], "resourceVersion": self._rv()}} for p in pods]

    def pods(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        self.calls.append("pods")
        self.in_pods.set()
        if self.pods_gate is not None:
            assert self.pods_gate.wait(10), "the test never released pods()"
        return copy.deepcopy(self.pod_list)

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append("patch_status")
        self.status_patches.append(dict(patch))
        status = self.owner.setdefault("status", {})
        _merge(status, patch)
        self.owner["metadata"]["resourceVersion"] = self._rv()
        return copy.deepcopy(self.owner)

    def emit_event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))
        self.messages.append(message)


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _reconciler(kube: MemoryKube) -> Reconciler:
    return Reconciler(kube, OperatorSettings.from_env({}))  # type: ignore[arg-type]


def _spec(**roles: Any) -> dict[str, Any]:
    return {"backend": "reference", "model": {"name": "m"}, "roles": roles or {"decode": {}}}


def _applies(kube: MemoryKube) -> list[str]:
    return [c for c in kube.calls if c.startswith("apply")]


async def test_reconcile_applies_the_plan_and_writes_status_once() -> None:
    kube = MemoryKube(_spec())
    reconciler = _reconciler(kube)
    await reconciler.reconcile(NS, NAME)
    assert _applies(kube) == [
        f"apply {kind} x-{role}"
        for role in ("frontend", "decode")
        for kind in ("ConfigMap", "Service", "Deployment")
    ] + ["apply NetworkPolicy x-egress"]
    assert len(kube.status_patches) == 1
    assert kube.owner["status"]["observedGeneration"] == 1
    # Again, unchanged: applied again (server-side apply is idempotent), but status is not rewritten.
    await reconciler.reconcile(NS, NAME)
    assert len(_applies(kube)) == 14
    assert len(kube.status_patches) == 1


async def test_a_removed_role_is_pruned_with_an_event() -> None:
    kube = MemoryKube(_spec(encode={}, decode={}))
    reconciler = _reconciler(kube)
    await reconciler.reconcile(NS, NAME)
    assert ("v1", "Service", "x-encode") in kube.children
    kube.owner["spec"] = _spec(decode={})
    kube.owner["metadata"]["generation"] = 2
    await reconciler.reconcile(NS, NAME)
    assert {k[2] for k in kube.children} == {"x-frontend", "x-decode", "x-egress"}
    assert sorted(c for c in kube.calls if c.startswith("delete")) == [
        "delete ConfigMap x-encode",
        "delete Deployment x-encode",
        "delete Service x-encode",
    ]
    assert kube.events.count(("Normal", "Pruned")) == 3


async def test_child_events_refresh_status_and_drift_takes_the_whole_path() -> None:
    kube = MemoryKube(_spec())
    reconciler = _reconciler(kube)
    await reconciler.reconcile(NS, NAME)
    applied = kube.children[("apps/v1", "Deployment", "x-decode")]
    # The Deployment controller wrote status (resourceVersion moved, generation did not): a refresh.
    seen = copy.deepcopy(applied)
    seen["metadata"]["resourceVersion"] = "999"
    before = len(_applies(kube))
    await reconciler.child_changed(NS, NAME, "Deployment", seen, deleted=False)
    assert len(_applies(kube)) == before
    # Someone edited its spec (generation moved): the whole path again, which re-applies every child.
    seen["metadata"]["generation"] = applied["metadata"]["generation"] + 1
    await reconciler.child_changed(NS, NAME, "Deployment", seen, deleted=False)
    assert len(_applies(kube)) == before + 7
    # A deleted child is drift too (the NetworkPolicy as much as a Service); a pod event never is.
    await reconciler.child_changed(NS, NAME, "Service", {"metadata": {"name": "x-decode"}}, deleted=True)
    assert len(_applies(kube)) == before + 14
    policy = {"metadata": {"name": "x-egress"}}
    await reconciler.child_changed(NS, NAME, "NetworkPolicy", policy, deleted=True)
    assert len(_applies(kube)) == before + 21
    await reconciler.child_changed(NS, NAME, "Pod", {"metadata": {"name": "x-decode-abc"}}, deleted=True)
    assert len(_applies(kube)) == before + 21


async def test_a_burst_of_pod_events_costs_one_running_and_one_queued_refresh() -> None:
    kube = MemoryKube(_spec())
    reconciler = _reconciler(kube)
    await reconciler.reconcile(NS, NAME)
    kube.calls.clear()
    kube.pods_gate = threading.Event()
    pod = {"metadata": {"name": "x-decode-abc"}}
    burst = [
        asyncio.create_task(reconciler.child_changed(NS, NAME, "Pod", pod, deleted=False)) for _ in range(20)
    ]
    kube.in_pods.clear()
    # The first refresh is inside pods(); the other 19 arrive meanwhile.
    assert await asyncio.to_thread(kube.in_pods.wait, 10)
    await asyncio.sleep(0.05)
    kube.pods_gate.set()
    await asyncio.gather(*burst)
    assert kube.calls.count("pods") == 2


async def test_a_transient_failure_is_requeued_and_shutdown_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = MemoryKube(_spec())
    reconciler = _reconciler(kube)
    await reconciler.reconcile(NS, NAME)
    kube.fail_listing = 1
    await reconciler.child_changed(NS, NAME, "Pod", {"metadata": {"name": "p"}}, deleted=False)
    assert reconciler.pending_retries == 1  # the retry is kept, not a task nobody references
    await reconciler.close()
    assert reconciler.pending_retries == 0
    await asyncio.sleep(RETRY_WAIT)
    assert kube.calls.count("list_children") == 2  # the reconcile's and the failed one: no retry ran

    # With a short backoff, the re-queued refresh runs by itself and succeeds.
    monkeypatch.setattr(plan_module, "RETRY_DELAYS", (0.05,))
    kube.fail_listing = 1
    await reconciler.child_changed(NS, NAME, "Pod", {"metadata": {"name": "p"}}, deleted=False)
    for _ in range(200):
        if kube.calls.count("list_children") == 4 and reconciler.pending_retries == 0:
            break
        await asyncio.sleep(0.01)
    assert kube.calls.count("list_children") == 4
    assert reconciler.pending_retries == 0


RETRY_WAIT = 1.2  # past the first backoff (1 s): a retry that had not been cancelled would have run


async def test_an_invalid_spec_is_permanent_and_stalls() -> None:
    kube = MemoryKube(_spec(decode={"gpus": 1}))  # the reference backend runs on CPU
    with pytest.raises(kopf.PermanentError, match=r"spec\.roles\.decode"):
        await _reconciler(kube).reconcile(NS, NAME)
    assert _applies(kube) == []
    stalled = next(c for c in kube.owner["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    assert ("Warning", "InvalidSpec") in kube.events


# ------------------------------------------------------------------------------------------------ autoscaling


class _QueueSource:
    """Per-pod queue depths the test sets (stands in for the pods' /metrics; the scrape source itself is
    tested against real worker pods in tests/e2e/autoscaling)."""

    name = "memory"
    errors = 0

    def __init__(self) -> None:
        self.queue: dict[str, float] = {}

    async def collect(self, namespace: str, pods: Any, metrics: Any) -> dict[str, PodMetrics]:
        return {
            p.name: PodMetrics({METRIC_QUEUE_DEPTH: self.queue[p.name]}) for p in pods if p.name in self.queue
        }

    async def aclose(self) -> None:
        return None


def _ready_pod(name: str, role: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"triptych.dev/role": role, "pod-template-hash": "h"}},
        "spec": {"nodeName": "real"},
        "status": {"podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _deployment(kube: MemoryKube, role: str) -> dict[str, Any]:
    return kube.children[("apps/v1", "Deployment", f"{NAME}-{role}")]


async def test_a_scale_is_applied_with_an_event_and_a_manual_scale_is_adopted() -> None:
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 4, "targets": {"queueDepth": 2}}
    kube = MemoryKube(_spec(decode={"replicas": 1, "autoscaling": auto}))
    source = _QueueSource()
    reconciler = Reconciler(kube, OperatorSettings.from_env({}), autoscaler=Autoscaler(source))  # type: ignore[arg-type]
    await reconciler.reconcile(NS, NAME)
    kube.pod_list = [_ready_pod("d-1", "decode")]
    source.queue = {"d-1": 6.0}
    await reconciler.evaluate(NS, NAME)
    assert _deployment(kube, "decode")["spec"]["replicas"] == 3
    assert ("Normal", "Scaled") in kube.events
    assert any(m.startswith("decode 1 -> 3: queueDepth 6/replica vs target 2 -> 3") for m in kube.messages)
    status = kube.owner["status"]["roles"]["decode"]
    assert (status["scaler"], status["queueDepth"]) == ("Builtin", 6.0)
    # Someone runs `kubectl scale --replicas 4`: the Deployment's generation moves under us.
    deployment = _deployment(kube, "decode")
    deployment["spec"]["replicas"] = 4
    deployment["metadata"]["generation"] += 1
    await reconciler.reconcile(NS, NAME)
    assert _deployment(kube, "decode")["spec"]["replicas"] == 4  # taken, not fought
    assert ("Normal", "ManualScale") in kube.events
    assert reconciler.autoscaler is not None
    assert reconciler.autoscaler.decided((NS, NAME)) == {"decode": 4}
    # The queue is gone, but the manual 4 holds for the scale-down window (300 s by default).
    source.queue = {"d-1": 0.0}
    await reconciler.evaluate(NS, NAME)
    assert _deployment(kube, "decode")["spec"]["replicas"] == 4


async def test_an_external_role_follows_its_multimodalrole() -> None:
    kube = MemoryKube(_spec(decode={"replicas": 2, "autoscaling": {"enabled": True, "scaler": "External"}}))
    reconciler = Reconciler(kube, OperatorSettings.from_env({}), autoscaler=Autoscaler(_QueueSource()))  # type: ignore[arg-type]
    await reconciler.reconcile(NS, NAME)
    role = kube.children[("triptych.dev/v1alpha1", "MultimodalRole", f"{NAME}-decode")]
    assert role["spec"] == {"replicas": 2}  # seeded once from the spec
    assert f"seed {NAME}-decode 2" in kube.calls
    assert role["status"]["selector"] == f"triptych.dev/deployment={NAME},triptych.dev/role=decode"
    # An HPA writes /scale: spec.replicas 5, generation moves; the operator's next pass follows it.
    role["spec"]["replicas"] = 5
    role["metadata"]["generation"] += 1
    await reconciler.child_changed(NS, NAME, "MultimodalRole", role, deleted=False)
    assert _deployment(kube, "decode")["spec"]["replicas"] == 5
    assert kube.calls.count(f"seed {NAME}-decode 2") == 1  # never seeded again


# ---------------------------------------------------------------------------------------------- with a cache


def _cached(kube: MemoryKube) -> tuple[Reconciler, ObjectCache]:
    cache = ObjectCache()
    return Reconciler(kube, OperatorSettings.from_env({}), cache=cache), cache  # type: ignore[arg-type]


def _reads(kube: MemoryKube) -> list[str]:
    return [c for c in kube.calls if c in ("get_owner", "list_children", "pods")]


def _waiting_pod(reason: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "x-decode-abc", "uid": "pod-uid", "labels": {"triptych.dev/role": "decode"}},
        "spec": {"nodeName": "real"},
        "status": {"containerStatuses": [{"name": "w", "state": {"waiting": {"reason": reason}}}]},
    }


async def test_with_a_cache_an_unchanged_reconcile_applies_nothing_and_skips_are_counted() -> None:
    kube = MemoryKube(_spec())
    reconciler, _ = _cached(kube)
    await reconciler.reconcile(NS, NAME, kube.owner)
    assert len(_applies(kube)) == 7
    await reconciler.reconcile(NS, NAME, kube.owner)
    assert len(_applies(kube)) == 7  # nothing changed: no apply at all
    assert reconciler.reconcile_metrics.applies_skipped._value.get() == 7
    # The spec changes one role: only that role's children are applied again.
    kube.owner["spec"] = _spec(decode={"replicas": 3})
    kube.owner["metadata"]["generation"] = 2
    await reconciler.reconcile(NS, NAME, kube.owner)
    assert _applies(kube)[7:] == ["apply Deployment x-decode"]
    assert _deployment(kube, "decode")["spec"]["replicas"] == 3


async def test_with_a_cache_a_drifted_child_is_applied_again_and_only_it() -> None:
    kube = MemoryKube(_spec())
    reconciler, _ = _cached(kube)
    await reconciler.reconcile(NS, NAME, kube.owner)
    edited = copy.deepcopy(_deployment(kube, "frontend"))
    edited["spec"]["replicas"] = 9  # someone's kubectl edit: generation moves
    edited["metadata"]["generation"] += 1
    edited["metadata"]["resourceVersion"] = kube._rv()
    kube.children[("apps/v1", "Deployment", "x-frontend")] = edited
    await reconciler.child_changed(NS, NAME, "Deployment", edited, deleted=False)
    assert _applies(kube)[7:] == ["apply Deployment x-frontend"]
    assert _deployment(kube, "frontend")["spec"]["replicas"] == 1  # taken back
    # A deleted child is re-created, the others are left alone.
    service = copy.deepcopy(kube.children.pop(("v1", "Service", "x-decode")))
    await reconciler.child_changed(NS, NAME, "Service", service, deleted=True)
    assert _applies(kube)[8:] == ["apply Service x-decode"]


async def test_the_event_of_our_own_apply_arriving_mid_reconcile_is_not_drift_but_an_edit_then_is() -> None:
    kube = MemoryKube(_spec())
    reconciler, _ = _cached(kube)
    kube.apply_gate = threading.Event()
    running = asyncio.create_task(reconciler.reconcile(NS, NAME, kube.owner))
    # The first child is written; its watch event comes while the reconcile still holds the gate, before
    # it recorded that apply's marker: one whole path and one status refresh, not two whole paths.
    assert await asyncio.to_thread(kube.in_apply.wait, 10)
    first = copy.deepcopy(next(iter(kube.children.values())))
    ours = asyncio.create_task(reconciler.child_changed(NS, NAME, first["kind"], first, deleted=False))
    await asyncio.sleep(0.05)
    kube.apply_gate.set()
    await asyncio.gather(running, ours)
    reconciles = reconciler.reconcile_metrics.reconciles
    assert (reconciles.labels("full")._value.get(), reconciles.labels("refresh")._value.get()) == (1, 1)
    assert len(_applies(kube)) == 7
    # Someone edits that child afterwards: drift, so the whole path again, re-applying only it.
    edited = copy.deepcopy(first)
    edited["metadata"].update(generation=first["metadata"]["generation"] + 1, resourceVersion=kube._rv())
    await reconciler.child_changed(NS, NAME, edited["kind"], edited, deleted=False)
    assert reconciles.labels("full")._value.get() == 2
    assert _applies(kube)[7:] == [f"apply {first['kind']} {first['metadata']['name']}"]


async def test_with_a_cache_pod_events_read_nothing_from_the_api_and_write_status_only_on_change() -> None:
    kube = MemoryKube(_spec())
    reconciler, cache = _cached(kube)
    await reconciler.reconcile(NS, NAME, kube.owner)
    writes = len(kube.status_patches)
    kube.calls.clear()
    pod = _waiting_pod("ContainerCreating")
    for version in range(20):  # the same state over and over (resourceVersion only)
        await reconciler.child_changed(
            NS, NAME, "Pod", {**pod, "metadata": {**pod["metadata"], "resourceVersion": str(900 + version)}},
            deleted=False,
        )  # fmt: skip
    assert _reads(kube) == []  # owner, Deployments and pods all came from the cache
    assert len(kube.status_patches) == writes  # and nothing changed the status
    # The pod cannot pull its image: that changes the status (Stalled), written once.
    await reconciler.child_changed(NS, NAME, "Pod", _waiting_pod("ImagePullBackOff"), deleted=False)
    await reconciler.child_changed(NS, NAME, "Pod", _waiting_pod("ImagePullBackOff"), deleted=False)
    assert _reads(kube) == []
    assert len(kube.status_patches) == writes + 1
    stalled = next(c for c in kube.owner["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ImagePullBackOff")
    # The pod goes: the stall clears from the cache's view alone.
    await reconciler.child_changed(NS, NAME, "Pod", _waiting_pod("ImagePullBackOff"), deleted=True)
    assert cache.items("Pod", (NS, NAME)) == []
    stalled = next(c for c in kube.owner["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"
    assert _reads(kube) == []


async def test_with_a_cache_a_resync_reads_the_api_again() -> None:
    kube = MemoryKube(_spec())
    reconciler, cache = _cached(kube)
    await reconciler.reconcile(NS, NAME, kube.owner)
    # A child deleted while the watch was down: the cache still has it, the API does not.
    del kube.children[("v1", "ConfigMap", "x-decode")]
    await reconciler.child_changed(NS, NAME, "Pod", _waiting_pod("ContainerCreating"), deleted=False)
    assert cache.get("ConfigMap", (NS, NAME), "x-decode") is not None
    kube.calls.clear()
    await reconciler.queue.request((NS, NAME), full=True, fresh=True)
    assert kube.calls[:2] == ["get_owner", "node_facts"]
    assert "list_children" in kube.calls
    assert _applies(kube) == ["apply ConfigMap x-decode"]  # the one that went, no other


def test_the_knobs_a_large_cluster_needs_come_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {"TRIPTYCH_OPERATOR_CONCURRENCY": "4", "TRIPTYCH_OPERATOR_RESYNC_SECONDS": "0"}
    )
    assert (settings.concurrency, settings.resync_seconds) == (4, 0)
    assert (OperatorSettings().concurrency, OperatorSettings().resync_seconds) == (16, 3600)
    with pytest.raises(ValueError, match="concurrency"):
        OperatorSettings.from_env({"TRIPTYCH_OPERATOR_CONCURRENCY": "0"})


async def test_the_resync_reconciles_every_known_object_from_the_api() -> None:
    kube = MemoryKube(_spec())
    cache = ObjectCache()
    settings = OperatorSettings.from_env({"TRIPTYCH_OPERATOR_RESYNC_SECONDS": "1"})
    reconciler = Reconciler(kube, settings, cache=cache)  # type: ignore[arg-type]
    await reconciler.reconcile(NS, NAME, kube.owner)
    kube.calls.clear()
    reconciler.start()
    try:
        for _ in range(500):  # the one object is due after 1 s
            if "get_owner" in kube.calls:
                break
            await asyncio.sleep(0.01)
    finally:
        await reconciler.close()
    assert kube.calls[:2] == ["get_owner", "node_facts"]  # the owner read afresh, not from the cache
    assert "list_children" in kube.calls
