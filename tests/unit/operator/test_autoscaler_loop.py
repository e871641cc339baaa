"""The autoscaler's parts around the decision: parsing what pods publish, which pods count, one evaluation
over several roles (wake from zero, ratio bounds, a failing source), the replicas the planner applies, the
peering check, and what status makes of an observation.

`evaluate` is driven here through `_Source`, an in-memory MetricsSource returning fixed per-pod values: it
stands in for the pods (or Prometheus) so the orchestration can be checked case by case; the real sources
are exercised against real worker pods and a real Prometheus in tests/e2e/autoscaling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from triptych_contract import (
    METRIC_ENCODER_CACHE_UTILIZATION,
    METRIC_KV_CACHE_UTILIZATION,
    METRIC_PENDING_REQUESTS,
    METRIC_QUEUE_DEPTH,
    METRIC_TRANSPORT_DEGRADED,
)
from triptych_operator.api import AutoscalingTargets, parse_spec
from triptych_operator.autoscaler.evaluate import Autoscaler, needs_evaluation
from triptych_operator.autoscaler.observe import RolePods, current_template_hashes, readings, role_pods
from triptych_operator.autoscaler.sources import (
    PodMetrics,
    PodTarget,
    SourceError,
    parse_exposition,
    parse_vector,
    pod_query,
)
from triptych_operator.plan import peering_active, plan_replicas, role_scale_status
from triptych_operator.status import RoleScaling, TransportReport, compute_status

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _auto(targets: dict[str, int], lo: int = 1, hi: int = 4, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "minReplicas": lo, "maxReplicas": hi, "targets": targets, **extra}


def _spec(roles: dict[str, Any], **top: Any) -> Any:
    return parse_spec({"backend": "reference", "model": {"name": "m"}, "roles": roles, **top})


# ------------------------------------------------------------------------------------------------ sources


def test_parse_exposition_sums_a_metric_and_finds_degraded_series() -> None:
    registry = CollectorRegistry()
    queue = Gauge(METRIC_QUEUE_DEPTH, "q", ["role", "deployment"], registry=registry)
    queue.labels("prefill", "d").set(3)
    queue.labels("encode", "d").set(2)  # a folded role's second series: one pod, one process
    degraded = Gauge(METRIC_TRANSPORT_DEGRADED, "x", ["requested", "effective", "reason"], registry=registry)
    degraded.labels("rdma", "tcp", "no ib device").set(1)
    degraded.labels("rdma", "rdma", "").set(0)
    text = generate_latest(registry).decode()
    got = parse_exposition(text, "pod-a", [METRIC_QUEUE_DEPTH, METRIC_KV_CACHE_UTILIZATION])
    assert got.values == {METRIC_QUEUE_DEPTH: 5.0}  # KV absent: missing, not 0
    assert [(d.pod, d.requested, d.effective, d.reason) for d in got.degraded] == [
        ("pod-a", "rdma", "tcp", "no ib device")
    ]


def test_pod_query_and_vector_parsing() -> None:
    query = pod_query(METRIC_QUEUE_DEPTH, "ns", ["a-1", "b.2"])
    assert query == 'sum by (pod) (triptych_queue_depth{namespace="ns",pod=~"a-1|b\\\\.2"})'
    with pytest.raises(ValueError, match="not a Kubernetes name"):
        pod_query(METRIC_QUEUE_DEPTH, 'ns"} or vector(1) #', ["a"])
    body = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {"pod": "a-1"}, "value": [1.0, "2.5"]}]},
    }
    assert parse_vector(body) == [({"pod": "a-1"}, 2.5)]
    with pytest.raises(SourceError, match="bad_data"):
        parse_vector({"status": "error", "errorType": "bad_data", "error": "parse error"})


# ------------------------------------------------------------------------------------------------ observe


def _deployment(role: str, revision: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"d-{role}",
            "labels": {"triptych.dev/role": role},
            "annotations": {"deployment.kubernetes.io/revision": revision},
        },
        "spec": {"replicas": replicas},
    }


def _rs(role: str, revision: str, hash_: str) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"triptych.dev/role": role, "pod-template-hash": hash_},
            "annotations": {"deployment.kubernetes.io/revision": revision},
        }
    }


def _pod(name: str, role: str, hash_: str, *, ready: bool = True, node: str = "real", **meta: Any) -> Any:
    return {
        "metadata": {"name": name, "labels": {"triptych.dev/role": role, "pod-template-hash": hash_}, **meta},
        "spec": {"nodeName": node},
        "status": {
            "podIP": f"10.0.0.{len(name)}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_only_current_replicaset_pods_on_real_nodes_count() -> None:
    hashes = current_template_hashes(
        [_deployment("prefill", "3")], [_rs("prefill", "2", "old"), _rs("prefill", "3", "new")]
    )
    assert hashes == {"prefill": "new"}
    pods = [
        _pod("p1", "prefill", "new"),
        _pod("p2", "prefill", "new", ready=False),
        _pod("p3", "prefill", "old"),  # a rolling update's old pod
        _pod("p4", "prefill", "new", deletionTimestamp="2026-01-01T00:00:00Z"),
        _pod("p5", "prefill", "new", node="kwok-gpu-0"),  # fake IP: never connected to
    ]
    got = role_pods(pods, hashes, frozenset({"kwok-gpu-0"}))
    assert [p.name for p in got["prefill"].ready] == ["p1"]
    assert got["prefill"].not_ready == 1


def test_readings_scale_utilization_to_percent_and_mark_missing_and_not_ready() -> None:
    pods = RolePods((PodTarget("a", "1"), PodTarget("b", "2")), not_ready=1)
    samples = {"a": PodMetrics({METRIC_ENCODER_CACHE_UTILIZATION: 0.5})}
    (reading,) = readings(
        "encode", AutoscalingTargets.model_validate({"cacheUtilization": 40}), pods, samples
    )
    assert reading.target == 40.0
    assert [(p.value, p.ready) for p in reading.pods] == [(50.0, True), (None, True), (0.0, False)]


# ------------------------------------------------------------------------------------------------ evaluate


class _Source:
    name = "memory"

    def __init__(self, values: dict[str, dict[str, float]], *, fail: bool = False) -> None:
        self.values = values
        self.fail = fail
        self.errors = 0
        self.asked: list[list[str]] = []

    async def collect(
        self, namespace: str, pods: Sequence[PodTarget], metrics: Sequence[str]
    ) -> dict[str, PodMetrics]:
        self.asked.append([p.name for p in pods])
        if self.fail:
            raise SourceError("connection refused")
        return {p.name: PodMetrics(dict(self.values[p.name])) for p in pods if p.name in self.values}

    async def aclose(self) -> None:
        return None


def _pods(**names: list[str]) -> dict[str, RolePods]:
    return {role: RolePods(tuple(PodTarget(n, "10.0.0.1") for n in ns)) for role, ns in names.items()}


def test_queue_on_prefill_scales_prefill_only() -> None:
    spec = _spec(
        {
            "encode": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2})},
            "prefill": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2})},
            "decode": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2})},
        }
    )
    source = _Source(
        {"e": {METRIC_QUEUE_DEPTH: 2}, "p": {METRIC_QUEUE_DEPTH: 7}, "d": {METRIC_QUEUE_DEPTH: 2}}
    )
    scaler = Autoscaler(source, clock=lambda: 100.0)
    current = {"frontend": 1, "encode": 1, "prefill": 1, "decode": 1}
    got = asyncio.run(scaler.evaluate(("ns", "m"), spec, current, _pods(encode=["e"], prefill=["p"],
                                                                         decode=["d"]), []))  # fmt: skip
    assert got.replicas == {"encode": 1, "prefill": 4, "decode": 1}
    assert [(s.role, s.before, s.after) for s in got.scales] == [("prefill", 1, 4)]
    assert "queueDepth 7/replica vs target 2 -> 4" in got.scales[0].reason
    assert got.scaling["prefill"].observed == {"queueDepth": 7.0}
    assert scaler.decided(("ns", "m"))["prefill"] == 4


def test_encode_at_zero_wakes_on_pending_and_text_traffic_leaves_it_asleep() -> None:
    spec = _spec(
        {
            "encode": {"replicas": 0, "autoscaling": _auto({"queueDepth": 2}, lo=0)},
            "decode": {"replicas": 1},
        }
    )
    current = {"frontend": 1, "encode": 0, "decode": 1}
    asleep = _Source({"f": {METRIC_PENDING_REQUESTS: 0}})
    got = asyncio.run(Autoscaler(asleep).evaluate(("ns", "m"), spec, current, {}, [PodTarget("f", "1")]))
    assert got.replicas == {"encode": 0}
    assert not got.scales
    woken = _Source({"f": {METRIC_PENDING_REQUESTS: 2}})
    got = asyncio.run(Autoscaler(woken).evaluate(("ns", "m"), spec, current, {}, [PodTarget("f", "1")]))
    assert [(s.role, s.before, s.after) for s in got.scales] == [("encode", 0, 1)]
    assert "2 requests pending" in got.scales[0].reason
    assert got.scaling["encode"].pending == 2


def test_idle_encode_goes_to_zero_after_its_window() -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 10}}
    spec = _spec(
        {
            "encode": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2}, lo=0, behavior=behavior)},
            "decode": {"replicas": 1},
        }
    )
    clock = [0.0]
    scaler = Autoscaler(_Source({"e": {METRIC_QUEUE_DEPTH: 0}}), clock=lambda: clock[0])
    current = {"frontend": 1, "encode": 1, "decode": 1}
    seen = []
    for t in (0.0, 5.0, 11.0):
        clock[0] = t
        seen.append(asyncio.run(scaler.evaluate(("n", "m"), spec, current, _pods(encode=["e"]), [])).replicas)
    # Recommendations of 1 (the start) and 0: held at 1 until the window has only zeros in it.
    assert seen == [{"encode": 1}, {"encode": 1}, {"encode": 0}]


def test_ratio_bound_grows_the_short_autoscaled_side() -> None:
    spec = _spec(
        {
            "prefill": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2})},
            "decode": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2})},
        },
        autoscaling={"ratios": [{"numerator": "decode", "denominator": "prefill", "min": 1}]},
    )
    source = _Source({"p": {METRIC_QUEUE_DEPTH: 6}, "d": {METRIC_QUEUE_DEPTH: 2}})
    got = asyncio.run(Autoscaler(source).evaluate(
        ("ns", "m"), spec, {"frontend": 1, "prefill": 1, "decode": 1}, _pods(prefill=["p"], decode=["d"]), []
    ))  # fmt: skip
    assert got.replicas == {"prefill": 3, "decode": 3}
    assert "decode:prefill below 1" in got.scaling["decode"].reason


def test_a_failing_source_changes_nothing_and_says_why() -> None:
    spec = _spec({"decode": {"replicas": 2, "autoscaling": _auto({"queueDepth": 2})}})
    got = asyncio.run(Autoscaler(_Source({}, fail=True)).evaluate(
        ("ns", "m"), spec, {"frontend": 1, "decode": 2}, _pods(decode=["d"]), []
    ))  # fmt: skip
    assert got.replicas == {"decode": 2}
    assert not got.scales
    assert got.error is not None
    assert "connection refused" in got.scaling["decode"].reason


def test_which_deployments_are_evaluated() -> None:
    assert not needs_evaluation(_spec({"decode": {}}))
    assert needs_evaluation(_spec({"decode": {"autoscaling": _auto({"inFlight": 4})}}))
    external = {"enabled": True, "scaler": "External"}
    assert not needs_evaluation(_spec({"decode": {"autoscaling": external}}))


# ------------------------------------------------------------------------------------------------ plan


def test_plan_replicas_per_scaler() -> None:
    spec = _spec(
        {
            "encode": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2}, lo=1, hi=3)},
            "prefill": {"replicas": 2, "autoscaling": {"enabled": True, "scaler": "External"}},
            "decode": {"replicas": 1},
        }
    )
    scale = {"metadata": {"labels": {"triptych.dev/role": "prefill"}}, "spec": {"replicas": 5}}
    # Spec roles absent (the spec's replicas apply); Builtin: the decision, clamped; External: its /scale.
    assert plan_replicas(spec, [], [scale], {"encode": 9}) == {"encode": 3, "prefill": 5}
    # A restarted operator keeps what the Deployment has; before the MultimodalRole exists: the spec's.
    assert plan_replicas(spec, [_deployment("encode", "1", replicas=2)], [], {}) == {
        "encode": 2,
        "prefill": 2,
    }


def test_role_scale_status_reports_what_scale_needs() -> None:
    got = role_scale_status({"status": {"replicas": 3, "readyReplicas": 2}}, {"b": "2", "a": "1"})
    assert got == {"replicas": 3, "ready": 2, "selector": "a=1,b=2"}


def test_peering_active() -> None:
    now = T0
    seen = (now - timedelta(seconds=5)).isoformat()
    old = (now - timedelta(seconds=120)).isoformat()
    me = {"priority": 5, "lifetime": 30, "lastseen": seen}
    assert peering_active({"me": me}, 5, now)
    assert not peering_active({"me": me, "other": {"priority": 7, "lifetime": 30, "lastseen": seen}}, 5, now)
    assert peering_active({"me": me, "gone": {"priority": 7, "lifetime": 30, "lastseen": old}}, 5, now)
    assert not peering_active({"me": me, "twin": dict(me)}, 5, now)  # kopf pauses both


# ------------------------------------------------------------------------------------------------ status


def test_status_carries_the_observation_and_transport_degraded() -> None:
    spec = _spec({"decode": {"replicas": 1, "autoscaling": _auto({"queueDepth": 2})}})
    scaling = {"decode": RoleScaling("Builtin", {"queueDepth": 3.14159}, "decode: ... -> 2", None, T0)}
    report = TransportReport("decode", "d-1", "rdma", "tcp", "no ib device")
    got = compute_status(spec, 1, [], None, T0, scaling=scaling, transport=[report])
    role = got.roles["decode"]
    assert (role.scaler, role.queue_depth, role.scaling, role.last_scale_time) == (
        "Builtin", 3.14, "decode: ... -> 2", T0
    )  # fmt: skip
    (degraded,) = [c for c in got.conditions if c.type == "TransportDegraded"]
    assert degraded.status == "True"
    assert "decode pod d-1: rdma requested, tcp in use" in degraded.message
    # A refresh without a new observation keeps both.
    again = compute_status(spec, 1, [], got, T0 + timedelta(seconds=1))
    assert again.roles["decode"].queue_depth == 3.14
    assert [c.status for c in again.conditions if c.type == "TransportDegraded"] == ["True"]
    clear = compute_status(spec, 1, [], got, T0, scaling=scaling, transport=[])
    assert [c.status for c in clear.conditions if c.type == "TransportDegraded"] == ["False"]


def test_evaluations_keep_their_cadence_when_the_loop_ticks_late() -> None:
    clock = [0.0]
    scaler = Autoscaler(_Source({}), clock=lambda: clock[0])
    due_at = []
    for tick in range(1, 40):
        clock[0] = tick * 1.07  # a loop ticking every second, 7 % late each time
        if scaler.due(("ns", "m"), 5.0):
            due_at.append(round(clock[0], 2))
    # Due at 0-based cadence 5, 10, 15, ... (first at the first tick): never stretched to 6-tick periods.
    assert len(due_at) == 9
    assert due_at[:3] == [1.07, 6.42, 11.77]
