"""Autoscaler benchmark: one bursty trace replayed through the scaling decision, Triptych's controller beside
the HorizontalPodAutoscaler's defaults.

The trace (`tests/data/traces/bursty-prefill.csv`, made by `hack/make-trace`) is SYNTHETIC: arrivals per
second to one prefill pool over an hour, sampled with a fixed seed from a made-up process (a compressed
diurnal rise and fall from 3 to 9 req/s, with 3-10x bursts of 30 s to 5 min), not a production recording.

The pool is a discrete-time (1 s) fluid queue, `Pool`, with these parameters (`PoolParams`):
- each ready replica completes at most `mu` requests/s; a request is in service for `service_s` seconds, so
  a saturated replica has `mu * service_s` requests in service (Little's law);
- every second, `served = min(backlog + arrivals, mu * ready replicas)` and the rest is the backlog carried
  over to the next second;
- a replica requested at second t is ready from second t + `startup_s` (a pod start: image, weights, warm-up)
  and starts serving then; a scale-down removes replicas at once, the newest first (starting ones before
  ready ones, as a ReplicaSet prefers);
- the metric is in-flight requests per replica, `(served * service_s + backlog) / ready replicas` (in
  service plus waiting, the router spreading both evenly), read at evaluation time from the second before:
  instantaneous, one `PodSample` per pod, ready pods with that value, starting pods with 0 and ready=False.

Figures, per second t, with `a(t)` the trace's arrivals, `pods(t)` every replica (a starting pod holds its
GPU as much as a ready one) and `ready(t)` the ready ones:
- needed(t) = ceil(a(t) * service_s / target) within [minReplicas, maxReplicas]: the fewest replicas that
  keep in-flight per replica at the target in steady state, i.e. ceil(a / (mu * target utilization)) with
  utilization = target / (mu * service_s). Computed from each second's Poisson count, so its noise is in
  both controllers' figures alike; maxReplicas bounds it because no controller may go beyond;
- over-provisioned replica-seconds: the sum of max(0, pods(t) - needed(t));
- under-provisioned replica-seconds: the sum of max(0, needed(t) - ready(t));
- seconds above target: seconds whose in-flight per ready replica exceeds 1.1 x the target (the tolerance);
- scale events: evaluations that changed the replica count; peak replicas: the most pods at once.

The controllers, all calling the same pure `decide` (the HPA's algorithm and behavior semantics are what it
implements), so the difference is only the evaluation interval and the behavior:
- "HPA defaults": every 15 s (kube-controller-manager's --horizontal-pod-autoscaler-sync-period), the HPA's
  default behavior (up at once by max(4 pods, 100 %) per 15 s; down by up to 100 % per 15 s after a 300 s
  window);
- "triptych": Triptych's defaults, every `evaluationIntervalSeconds` (5 s) with `behavior_from(None)`, which
  is that same default behavior;
- "triptych tuned": every 5 s with a behavior a user might pick for bursty LLM traffic: scale-down window
  60 s, scale-up by 100 % per 5 s (the default scale-down policy).
Both read the same instantaneous metrics; a real HPA reads them through a metrics pipeline with its own
delay, which this replay leaves out (it favours the HPA side). Deterministic: the trace is fixed and nothing
is random; only the decision's cost (microseconds per call, this machine) varies between runs.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from triptych_operator.api import DeploymentAutoscalingSpec, ScalingBehaviorSpec
from triptych_operator.autoscaler.decision import Behavior, History, MetricReading, PodSample, decide
from triptych_operator.autoscaler.policy import behavior_from

from tests.bench.__main__ import machine

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "bursty-prefill.csv"
ROLE = "prefill"
METRIC = "inFlight"
HPA_SYNC_PERIOD_S = 15  # kube-controller-manager --horizontal-pod-autoscaler-sync-period default
COST_ROUNDS = 15
TOLERANCE = 1.1  # the metric counts as above target past this multiple of it (the HPA's 0.1 tolerance)

# What a user might write under roles.prefill.autoscaling.behavior for bursty traffic.
TUNED = ScalingBehaviorSpec.model_validate(
    {
        "scaleDown": {"stabilizationWindowSeconds": 60},
        "scaleUp": {"policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]},
    }
)


@dataclass(frozen=True)
class PoolParams:
    mu: float = 2.0  # requests/s one ready replica completes at most
    service_s: float = 2.0  # seconds a request is in service (mu * service_s = 4 in service when saturated)
    startup_s: int = 30  # seconds from a replica's request to its being ready


@dataclass(frozen=True)
class Limits:
    target_in_flight: float = 3.0  # per replica: 75 % of a saturated replica's 4 in service
    min_replicas: int = 2
    max_replicas: int = 64


@dataclass
class Pool:
    """The fluid queue (see the module docstring). `ready_at` holds, per pod, the second it is (or became)
    ready, in ascending order: new pods are appended and a scale-down drops from the end."""

    params: PoolParams
    ready_at: list[int]
    backlog: float = 0.0  # requests waiting at the end of the last second
    served: float = 0.0  # requests completed in the last second

    @classmethod
    def started(cls, params: PoolParams, replicas: int) -> Pool:
        return cls(params, [0] * replicas)

    @property
    def replicas(self) -> int:
        return len(self.ready_at)

    def ready(self, now: int) -> int:
        return sum(1 for at in self.ready_at if at <= now)

    def scale_to(self, replicas: int, now: int) -> None:
        if replicas > self.replicas:
            self.ready_at += [now + self.params.startup_s] * (replicas - self.replicas)
        else:
            del self.ready_at[replicas:]

    def step(self, now: int, arrivals: float) -> None:
        """Second `now`: serve what the ready replicas can of the backlog and this second's arrivals."""
        waiting = self.backlog + arrivals
        self.served = min(waiting, self.params.mu * self.ready(now))
        self.backlog = waiting - self.served

    def in_flight_per_ready(self, now: int) -> float:
        ready = self.ready(now)
        in_flight = self.served * self.params.service_s + self.backlog
        return in_flight / ready if ready else math.inf

    def samples(self, now: int) -> tuple[PodSample, ...]:
        """What each pod reports at `now`: its share of the in-flight requests, or 0 and not ready if it is
        still starting."""
        value = self.in_flight_per_ready(now)
        return tuple(PodSample(value) if at <= now else PodSample(0.0, ready=False) for at in self.ready_at)


def needed(arrivals: float, params: PoolParams, limits: Limits) -> int:
    wanted = math.ceil(arrivals * params.service_s / limits.target_in_flight)
    return min(limits.max_replicas, max(limits.min_replicas, wanted))


@dataclass(frozen=True)
class Controller:
    label: str
    interval_s: int
    behavior: Behavior


@dataclass
class Figures:
    replica_s: int = 0
    over_s: int = 0
    under_s: int = 0
    above_target_s: int = 0
    scale_events: int = 0
    peak_replicas: int = 0
    peak_backlog: float = 0.0
    calls: list[tuple[int, MetricReading, float]] = field(default_factory=list)  # decide()'s varying inputs


def replay(trace: Sequence[int], controller: Controller, params: PoolParams, limits: Limits) -> Figures:
    pool = Pool.started(params, limits.min_replicas)
    history = History()
    out = Figures()
    for now, arrivals in enumerate(trace):
        if now > 0 and now % controller.interval_s == 0:  # from the state the last second left
            reading = MetricReading(METRIC, limits.target_in_flight, pool.samples(now - 1))
            out.calls.append((pool.replicas, reading, float(now)))
            decision = decide(
                ROLE, pool.replicas, [reading], limits.min_replicas, limits.max_replicas,
                controller.behavior, history, float(now),
            )  # fmt: skip
            if decision.replicas != pool.replicas:
                out.scale_events += 1
                pool.scale_to(decision.replicas, now)
        pool.step(now, arrivals)
        need, ready = needed(arrivals, params, limits), pool.ready(now)
        out.replica_s += pool.replicas
        out.over_s += max(0, pool.replicas - need)
        out.under_s += max(0, need - ready)
        out.above_target_s += int(pool.in_flight_per_ready(now) > TOLERANCE * limits.target_in_flight)
        out.peak_replicas = max(out.peak_replicas, pool.replicas)
        out.peak_backlog = max(out.peak_backlog, pool.backlog)
    return out


def decide_cost_us(
    calls: Sequence[tuple[int, MetricReading, float]], controller: Controller, limits: Limits
) -> float:
    """Mean microseconds per decide() over one replay's calls, again with a fresh History (so the same
    decisions), the median of COST_ROUNDS rounds: one replay is too few calls to time on a busy machine."""
    rounds = []
    for _ in range(COST_ROUNDS):
        history = History()
        started = time.perf_counter_ns()
        for current, reading, now in calls:
            decide(
                ROLE,
                current,
                [reading],
                limits.min_replicas,
                limits.max_replicas,
                controller.behavior,
                history,
                now,
            )
        rounds.append((time.perf_counter_ns() - started) / len(calls) / 1e3)
    return statistics.median(rounds)


def load_trace(path: Path = TRACE) -> list[int]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["second"]) for r in rows] == list(range(len(rows))), f"{path}: seconds not 0, 1, 2, ..."
    return [int(r["arrivals_per_s"]) for r in rows]


def _rules(direction: str, behavior: Behavior) -> str:
    rules = behavior.scale_up if direction == "up" else behavior.scale_down
    policies = " or ".join(
        f"{p.value}{' pods' if p.type == 'Pods' else ' %'}/{p.period_seconds} s" for p in rules.policies
    )
    return f"{direction} {policies} ({rules.select_policy}), window {rules.stabilization_window_seconds} s"


def _ratio(ours: float, theirs: float) -> str:
    if theirs == 0:
        return "  n/a" if ours == 0 else "  inf"
    return f"{ours / theirs:5.2f}"


def main() -> None:
    print(f"machine: {machine()}")
    trace = load_trace()
    params, limits = PoolParams(), Limits()
    triptych_interval = DeploymentAutoscalingSpec().evaluation_interval_seconds
    controllers = [
        Controller("HPA defaults", HPA_SYNC_PERIOD_S, Behavior()),
        Controller("triptych", triptych_interval, behavior_from(None)),
        Controller("triptych tuned", triptych_interval, behavior_from(TUNED)),
    ]
    need = [needed(a, params, limits) for a in trace]
    print(
        f"trace: {TRACE.relative_to(TRACE.parents[3])} (synthetic, hack/make-trace), {len(trace)} s, "
        f"mean {sum(trace) / len(trace):.1f} req/s, peak {max(trace)} req/s"
    )
    print(
        f"pool: mu {params.mu:g} req/s per replica, {params.service_s:g} s in service, startup "
        f"{params.startup_s} s; target {METRIC} {limits.target_in_flight:g}/replica, replicas "
        f"{limits.min_replicas}..{limits.max_replicas}; needed: {sum(need)} replica-s, peak {max(need)}"
    )
    for c in controllers:
        b = c.behavior
        print(f"  {c.label:>14}: every {c.interval_s:2d} s; {_rules('up', b)}; {_rules('down', b)}")
    print("  (one decide() for all; triptych's default behavior is the HPA's, only the interval differs)")
    results = {c.label: replay(trace, c, params, limits) for c in controllers}
    base = results["HPA defaults"]
    rows: list[tuple[str, str]] = [
        ("replica-seconds (all pods)", "replica_s"),
        ("over-provisioned replica-s", "over_s"),
        ("under-provisioned replica-s", "under_s"),
        (f"seconds above target x{TOLERANCE:g}", "above_target_s"),
        ("scale events", "scale_events"),
        ("peak replicas", "peak_replicas"),
        ("peak backlog (requests)", "peak_backlog"),
    ]
    others = [c.label for c in controllers[1:]]
    header = f"{'':28} {'HPA defaults':>13}" + "".join(f" {o:>15} {'/HPA':>6}" for o in others)
    print(header)
    for title, attr in rows:
        theirs = float(getattr(base, attr))
        line = f"{title:28} {theirs:13.0f}"
        for o in others:
            ours = float(getattr(results[o], attr))
            line += f" {ours:15.0f} {_ratio(ours, theirs):>6}"
        print(line)
    cost = {c.label: decide_cost_us(results[c.label].calls, c, limits) for c in controllers}
    line = f"{'decide() us/call (mean)':28} {cost['HPA defaults']:13.1f}"
    line += "".join(f" {cost[o]:15.1f} {_ratio(cost[o], cost['HPA defaults']):>6}" for o in others)
    print(line)
    calls = ", ".join(f"{label} {len(r.calls)}" for label, r in results.items())
    print(f"decide() calls per replay: {calls}; cost: median of {COST_ROUNDS} timed re-runs of them")


if __name__ == "__main__":
    main()
