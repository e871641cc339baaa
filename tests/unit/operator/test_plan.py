"""The planner: desired children and the prune set, drift, blockers, status updates and their Events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from triptych_operator.api import parse_spec
from triptych_operator.cluster import CHILD_KINDS, DEPLOYMENT, ROLE_SCALE, ChildRef, NodeFacts
from triptych_operator.naming import Owner
from triptych_operator.plan import (
    Event,
    applied_marker,
    child_digest,
    child_refs,
    children_for_status,
    children_to_read,
    current_replicas,
    drifted,
    flip_events,
    manual_scales,
    merge_patch,
    needs_node_facts,
    plan_children,
    plan_invalid,
    plan_status,
    pod_blockers,
    retry_delay,
    stale_children,
    unchanged_since_applied,
)
from triptych_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env({})
NO_NODES = NodeFacts(frozenset(), frozenset())
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _spec(**roles: Any) -> Any:
    return parse_spec({"backend": "vllm", "model": {"name": "m"}, "roles": roles or {"decode": {}}})


def _names(children: Any) -> list[tuple[str, str]]:
    return [(c["kind"], c["metadata"]["name"]) for c in children]


def _listed(*refs: tuple[str, str, str, str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """What Kube.list_children returns: (apiVersion, kind) -> objects with name, uid, controller."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for api_version, kind, name, controller in refs:
        out.setdefault((api_version, kind), []).append(
            {
                "metadata": {
                    "name": name,
                    "uid": f"uid-{name}",
                    "ownerReferences": [{"uid": controller, "controller": True}],
                }
            }
        )
    return out


def test_create_plans_every_role_and_prunes_nothing() -> None:
    plan = plan_children(Owner("x", "ns", "owner"), _spec(encode={}, decode={}), SETTINGS, NO_NODES)
    assert _names(plan.desired) == [
        (kind, f"x-{role}")
        for role in ("frontend", "encode", "decode")
        for kind in ("ConfigMap", "Service", "Deployment")
    ] + [("NetworkPolicy", "x-egress")]
    assert plan.prune == ()


def test_update_with_a_removed_role_prunes_its_children_only() -> None:
    existing = child_refs(
        _listed(
            ("apps/v1", "Deployment", "x-decode", "owner"),
            ("apps/v1", "Deployment", "x-encode", "owner"),
            ("v1", "Service", "x-encode", "owner"),
            ("v1", "ConfigMap", "x-encode", "someone-else"),  # our labels, another controller: untouched
        )
    )
    plan = plan_children(Owner("x", "ns", "owner"), _spec(decode={}), SETTINGS, NO_NODES, existing)
    assert [(r.kind, r.name, r.uid) for r in plan.prune] == [
        ("Deployment", "x-encode", "uid-x-encode"),
        ("Service", "x-encode", "uid-x-encode"),
    ]
    assert ("Deployment", "x-decode") in _names(plan.desired)


def test_replicas_decided_elsewhere_reach_the_deployment() -> None:
    plan = plan_children(
        Owner("x", "ns", "o"), _spec(decode={"replicas": 2}), SETTINGS, NO_NODES, replicas={"decode": 7}
    )
    (decode,) = [c for c in plan.desired if c["kind"] == "Deployment" and c["metadata"]["name"] == "x-decode"]
    assert decode["spec"]["replicas"] == 7


def test_transport_auto_follows_the_nodes() -> None:
    spec = _spec(decode={"gpus": 1})
    with_rdma = NodeFacts(frozenset({"rdma/ib"}), frozenset())

    def decode_env(facts: NodeFacts) -> dict[str, str]:
        plan = plan_children(Owner("x", "ns", "o"), spec, SETTINGS, facts)
        dep = next(
            c for c in plan.desired if c["kind"] == "Deployment" and c["metadata"]["name"] == "x-decode"
        )
        engine = dep["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in engine["env"]}

    assert decode_env(with_rdma)["UCX_TLS"].startswith("rc_x")
    assert decode_env(NO_NODES)["UCX_TLS"] == "tcp,cuda_copy"


def test_drift_is_a_marker_we_did_not_leave() -> None:
    applied = {
        ("Deployment", "x-decode"): applied_marker("Deployment", {"name": "x-decode", "generation": 3}),
        ("Service", "x-decode"): applied_marker("Service", {"name": "x-decode", "resourceVersion": "41"}),
    }

    def seen(kind: str, meta: dict[str, Any]) -> bool:  # an event showing a child with this metadata
        return drifted(applied, kind, str(meta["name"]), applied_marker(kind, meta))

    # A Deployment's status writes move its resourceVersion, not its generation: not drift.
    assert not seen("Deployment", {"name": "x-decode", "generation": 3, "resourceVersion": "99"})
    assert seen("Deployment", {"name": "x-decode", "generation": 4})  # someone edited the spec
    assert not seen("Service", {"name": "x-decode", "resourceVersion": "41"})
    assert seen("Service", {"name": "x-decode", "resourceVersion": "42"})
    assert seen("ConfigMap", {"name": "x-decode", "resourceVersion": "1"})  # never applied here


def _owner(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    owner: dict[str, Any] = {"metadata": {"name": "x", "namespace": "ns", "generation": generation}}
    if status is not None:
        owner["status"] = status
    return owner


def _deployment(role: str, ready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"x-{role}", "generation": 1, "labels": {"triptych.dev/role": role}},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "replicas": 1,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": 1,
        },
    }


def test_status_update_then_nothing_when_unchanged() -> None:
    spec = _spec(decode={})
    deployments = [_deployment("frontend", 1), _deployment("decode", 1)]
    first = plan_status(_owner(), spec, deployments, [], T0)
    assert first is not None
    assert first.status["observedGeneration"] == 1
    assert first.patch == first.status  # from nothing: the patch is the whole status
    assert [e.reason for e in first.events] == ["Ready"]
    # Read back and planned again a minute later: no write, no Event.
    assert plan_status(_owner(first.status), spec, deployments, [], T0 + timedelta(minutes=1)) is None
    # One pod goes unready: a patch of what changed only, and a NotReady Event.
    later = plan_status(_owner(first.status), spec, [deployments[0], _deployment("decode", 0)], [], T0)
    assert later is not None
    assert [e.reason for e in later.events] == ["NotReady"]
    assert set(later.patch) <= {"conditions", "roles", "summary"}
    assert list(later.patch["roles"]) == ["decode"]  # the frontend did not change: not in the patch
    assert later.patch["roles"]["decode"]["ready"] == 0


def test_invalid_spec_stalls_once() -> None:
    update = plan_invalid(_owner(generation=2), "spec.roles: bad", T0)
    assert update is not None
    stalled = next(c for c in update.status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"], stalled["observedGeneration"]) == ("True", "InvalidSpec", 2)
    assert update.events == (Event("Warning", "InvalidSpec", "spec.roles: bad"),)
    assert plan_invalid(_owner(update.status, generation=2), "spec.roles: bad", T0) is None


def _conditions(ready: str, stalled: str = "False", reason: str = "") -> dict[str, Any]:
    return {
        "conditions": [
            {"type": "Ready", "status": ready, "message": f"ready={ready}"},
            {"type": "Stalled", "status": stalled, "reason": reason, "message": reason},
        ]
    }


def test_events_only_on_flips() -> None:
    assert flip_events(_conditions("False"), _conditions("False")) == []
    assert flip_events({}, _conditions("True")) == [Event("Normal", "Ready", "ready=True")]
    assert flip_events(_conditions("True"), _conditions("False")) == [
        Event("Normal", "NotReady", "ready=False")
    ]
    stalled = _conditions("False", "True", "ImagePullBackOff")
    assert flip_events(_conditions("False"), stalled) == [
        Event("Warning", "ImagePullBackOff", "ImagePullBackOff")
    ]
    assert flip_events(stalled, stalled) == []
    other = _conditions("False", "True", "GPUProductUnavailable")  # a stall's reason changes: a new Event
    assert [e.reason for e in flip_events(stalled, other)] == ["GPUProductUnavailable"]


def test_node_facts_needed_only_for_unschedulable_pods() -> None:
    running = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    pending = {
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
    }
    assert not needs_node_facts([running])
    assert needs_node_facts([running, pending])


def test_merge_patch_nulls_removed_keys() -> None:
    old = {"a": 1, "roles": {"encode": {"queueDepth": 3, "ready": 1}}, "gone": True}
    new = {"a": 1, "roles": {"encode": {"ready": 2}}}
    assert merge_patch(old, new) == {"roles": {"encode": {"queueDepth": None, "ready": 2}}, "gone": None}
    assert merge_patch(new, new) == {}


def test_stale_children_only_ours_and_undesired() -> None:
    desired = [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x-decode"}}]
    existing = [
        ChildRef("apps/v1", "Deployment", "x-decode", "u1", "owner"),
        ChildRef("apps/v1", "Deployment", "x-prefill", "u2", "owner"),
        ChildRef("apps/v1", "Deployment", "x-encode", "u3", "someone-else"),
    ]
    assert [r.name for r in stale_children(existing, desired, "owner")] == ["x-prefill"]


def _pod(role: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"triptych.dev/role": role}},
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["B200"]}
                                ]
                            }
                        ]
                    }
                }
            }
        },
        "status": status,
    }


def test_blockers_from_pods() -> None:
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5"}
    pulling = {"name": "worker", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}
    pods = [
        _pod("decode", conditions=[unschedulable]),
        _pod("decode", conditions=[unschedulable]),
        _pod("frontend", containerStatuses=[pulling]),
        _pod("prefill", containerStatuses=[{"name": "w", "state": {"running": {}}}]),
    ]
    found = pod_blockers(pods, NodeFacts(frozenset(), frozenset({"H100"})))
    assert [(b.role, b.reason) for b in found] == [
        ("decode", "GPUProductUnavailable"),
        ("frontend", "ImagePullBackOff"),
    ]
    assert "nvidia.com/gpu.product=B200" in found[0].message
    # With the product present, the scheduler's own reason stands.
    found = pod_blockers(pods[:1], NodeFacts(frozenset(), frozenset({"B200"})))
    assert [(b.role, b.reason) for b in found] == [("decode", "Unschedulable")]


# ------------------------------------------------------------------------------------ what a reconcile does


AUTOSCALED = {"replicas": 2, "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4,
                                            "targets": {"queueDepth": 4}}}  # fmt: skip


def _role_deployment(role: str, replicas: int, generation: int) -> dict[str, Any]:
    meta = {"name": f"x-{role}", "generation": generation, "labels": {"triptych.dev/role": role}}
    return {"kind": "Deployment", "metadata": meta, "spec": {"replicas": replicas}}


def test_an_apply_is_skipped_only_when_the_same_object_was_applied_and_nobody_changed_it() -> None:
    child = {"kind": "Deployment", "metadata": {"name": "x-decode"}, "spec": {"replicas": 1}}
    digest = child_digest(child)
    live = {"metadata": {"name": "x-decode", "generation": 3, "resourceVersion": "99"}}
    assert digest == child_digest(dict(reversed(list(child.items()))))  # key order does not matter
    assert unchanged_since_applied("Deployment", digest, digest, "3", live)
    assert not unchanged_since_applied("Deployment", digest, "another", "3", live)  # a new desired state
    assert not unchanged_since_applied("Deployment", digest, digest, "2", live)  # someone changed it
    assert not unchanged_since_applied("Deployment", digest, None, None, live)  # never applied here
    assert not unchanged_since_applied("Deployment", digest, digest, "3", None)  # no cached child


def test_a_manual_scale_of_an_autoscaled_role_is_adopted_clamped() -> None:
    spec = _spec(prefill=AUTOSCALED, decode=AUTOSCALED)
    ours = {("Deployment", "x-decode"): "5"}  # our last apply left generation 5 on decode
    deployments = [_role_deployment("prefill", 9, 7), _role_deployment("decode", 3, 5)]
    (scale,) = manual_scales(spec, deployments, {"prefill": 2, "decode": 2}, ours)
    assert (scale.role, scale.given, scale.taken) == ("prefill", 9, 4)
    assert scale.event().reason == "ManualScale"
    assert "clamped to 4" in scale.event().message
    # Our own apply, a role the autoscaler has not decided yet, and a role that is not autoscaled: none.
    assert manual_scales(spec, deployments[1:], {"decode": 2}, ours) == []
    assert manual_scales(spec, deployments, {}, {}) == []
    assert manual_scales(_spec(decode={}), [_role_deployment("decode", 3, 1)], {"decode": 1}, {}) == []


def test_what_a_reconcile_lists() -> None:
    plain, scaled = _spec(decode={}), _spec(decode=AUTOSCALED)
    external = _spec(decode={"autoscaling": {"enabled": True, "scaler": "External"}})
    assert children_to_read(plain, prune=True) == list(CHILD_KINDS)
    assert children_to_read(plain, prune=False) == []
    assert children_to_read(scaled, prune=False) == [DEPLOYMENT, ROLE_SCALE]
    assert children_for_status(plain) == [DEPLOYMENT]
    assert children_for_status(scaled) == [DEPLOYMENT]
    assert children_for_status(external) == [DEPLOYMENT, ROLE_SCALE]


def test_current_replicas_by_role() -> None:
    assert current_replicas([_role_deployment("decode", 3, 1), _role_deployment("encode", 0, 1)]) == {
        "decode": 3,
        "encode": 0,
    }


def test_retry_delay_backs_off_and_honours_retry_after() -> None:
    assert [retry_delay(n) for n in range(9)] == [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 60.0, 60.0]
    assert retry_delay(0, retry_after=7.0) == 7.0
    assert retry_delay(6, retry_after=7.0) == 60.0
