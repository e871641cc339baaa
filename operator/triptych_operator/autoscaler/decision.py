"""The scaling decision for one role pool: pure, with the HorizontalPodAutoscaler's documented semantics,
so a user who knows the HPA can predict it, and unit-tested case by case against them.

Per metric (the HPA's replica calculator, `pkg/controller/podautoscaler/replica_calculator.go`):
- `ratio = mean(value over pods with a sample) / target`; within the tolerance (0.1) of 1: no change;
  else `desired = ceil(ratio * pods with a sample)`;
- pods without a sample count as 100 % of the target when scaling down and 0 % when scaling up, and pods
  not ready count 0 % when scaling up (only then); with them filled in the ratio is taken again, and if it
  is now within the tolerance or points the other way, nothing changes;
- several metrics: the largest recommendation wins; none readable: no change.

Then behavior (`horizontal.go`, `normalizeDesiredReplicasWithBehaviors`):
- stabilization: the recommendation is held between the lowest recommendation inside the scale-up window
  and the highest inside the scale-down window (so scale-down waits out its window, 300 s by default);
- rate policies: over each policy's period, at most `Pods` replicas or `Percent` of the replicas at the
  period's start may be added (removed), combined by `selectPolicy` (Max: the most permissive; Min: the
  least; Disabled: no change in that direction);
- then `minReplicas`/`maxReplicas`.

Every result carries a reason a person can read ("prefill: queueDepth 8.0/replica vs target 2.0 -> 8, limited
to 4 by the scale-up policy").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_TOLERANCE = 0.1

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]


@dataclass(frozen=True)
class ScalingPolicy:
    type: PolicyType
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window_seconds: int
    policies: tuple[ScalingPolicy, ...]
    select_policy: SelectPolicy = "Max"


# The HPA's defaults (autoscaling/v2): up at once, by 100 % or 4 pods per 15 s, whichever is more; down
# after a 300 s window, by up to 100 % per 15 s.
DEFAULT_SCALE_UP = ScalingRules(0, (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)), "Max")
DEFAULT_SCALE_DOWN = ScalingRules(300, (ScalingPolicy("Percent", 100, 15),), "Max")


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class PodSample:
    """One pod's value of one metric: None when its scrape had no sample (a missing metric)."""

    value: float | None
    ready: bool = True


@dataclass(frozen=True)
class MetricReading:
    """One metric over the role's current pods, with its per-pod target (an average value)."""

    name: str
    target: float
    pods: tuple[PodSample, ...]


@dataclass(frozen=True)
class Recommendation:
    replicas: int
    reason: str


@dataclass(frozen=True)
class ScaleEvent:
    at: float  # seconds (any monotonic clock, the same as `now`)
    change: int  # replicas added (> 0) or removed (< 0)


@dataclass
class History:
    """What the decision remembers between evaluations of one role (the HPA keeps the same per target)."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[ScaleEvent] = field(default_factory=list)

    def forget_before(self, cutoff: float) -> None:
        self.recommendations = [r for r in self.recommendations if r[0] >= cutoff]
        self.events = [e for e in self.events if e.at >= cutoff]


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str


# ------------------------------------------------------------------------------------------------ per metric


def _ratio(values: Sequence[float], target: float) -> float:
    return (sum(values) / len(values)) / target


def recommend(current: int, reading: MetricReading, tolerance: float = DEFAULT_TOLERANCE) -> Recommendation:
    """The replica calculator for one metric (see the module docstring)."""
    name, target = reading.name, reading.target
    if target <= 0:
        raise ValueError(f"{name}: target must be positive, got {target}")
    sampled = [p.value for p in reading.pods if p.value is not None and p.ready]
    unready = [p for p in reading.pods if p.value is not None and not p.ready]
    missing = sum(1 for p in reading.pods if p.value is None)
    if not sampled:
        return Recommendation(current, f"{name}: no ready pod reported it; replicas stay {current}")
    ratio = _ratio(sampled, target)
    mean = sum(sampled) / len(sampled)
    seen = f"{name} {mean:.4g}/replica vs target {target:.4g}"
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if abs(ratio - 1.0) <= tolerance:
            return Recommendation(current, f"{seen}: within tolerance")
        desired = math.ceil(ratio * len(sampled))
        return Recommendation(desired, f"{seen} -> {desired}")
    filled = list(sampled)
    if missing:  # the conservative assumption in the direction of the change
        filled += [target if ratio < 1.0 else 0.0] * missing
    if scale_up_with_unready:
        filled += [0.0] * len(unready)
    new_ratio = _ratio(filled, target)
    note = f" ({missing} missing, {len(unready)} not ready counted {'as 0' if ratio > 1 else 'at target'})"
    if abs(new_ratio - 1.0) <= tolerance or (ratio < 1.0 < new_ratio) or (new_ratio < 1.0 < ratio):
        return Recommendation(current, f"{seen}{note}: no change")
    desired = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and desired > current) or (new_ratio > 1.0 and desired < current):
        return Recommendation(current, f"{seen}{note}: no change")
    return Recommendation(desired, f"{seen}{note} -> {desired}")


def recommend_all(
    current: int, readings: Sequence[MetricReading], tolerance: float = DEFAULT_TOLERANCE
) -> Recommendation:
    """The largest recommendation over the metrics; no metric at all: no change."""
    if not readings:
        return Recommendation(current, f"no metrics; replicas stay {current}")
    found = [recommend(current, r, tolerance) for r in readings]
    return max(found, key=lambda r: r.replicas)


# ------------------------------------------------------------------------------------------------ behavior


def _changed_within(events: Sequence[ScaleEvent], period: int, now: float, *, up: bool) -> int:
    cutoff = now - period
    return sum(abs(e.change) for e in events if e.at > cutoff and (e.change > 0) == up)


def _period_start(current: int, policy: ScalingPolicy, history: History, now: float) -> int:
    added = _changed_within(history.events, policy.period_seconds, now, up=True)
    removed = _changed_within(history.events, policy.period_seconds, now, up=False)
    return current - added + removed


def _limit(current: int, rules: ScalingRules, history: History, now: float, *, up: bool) -> int:
    """The furthest the policies let the role go in one direction: each policy proposes a bound from the
    replicas at its period's start (Pods: +/- value; Percent: up rounds up, down rounds down, as the HPA
    does); `Max` takes the most permissive, `Min` the least, `Disabled` allows no change."""
    if rules.select_policy == "Disabled" or not rules.policies:
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(current, policy, history, now)
        if policy.type == "Pods":
            proposals.append(start + policy.value if up else start - policy.value)
        elif up:
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    most_permissive = max if up else min
    least_permissive = min if up else max
    return (most_permissive if rules.select_policy == "Max" else least_permissive)(proposals)


def scale_up_limit(current: int, rules: ScalingRules, history: History, now: float) -> int:
    return _limit(current, rules, history, now, up=True)


def scale_down_limit(current: int, rules: ScalingRules, history: History, now: float) -> int:
    return _limit(current, rules, history, now, up=False)


def _stabilized(desired: int, current: int, behavior: Behavior, history: History, now: float) -> int:
    up_cutoff = now - behavior.scale_up.stabilization_window_seconds
    down_cutoff = now - behavior.scale_down.stabilization_window_seconds
    up, down = desired, desired
    for at, replicas in history.recommendations:
        if at > up_cutoff:
            up = min(up, replicas)
        if at > down_cutoff:
            down = max(down, replicas)
    history.recommendations.append((now, desired))
    return min(max(current, up), down)


def decide(  # noqa: PLR0917 - the HPA's inputs, all of them
    role: str,
    current: int,
    readings: Sequence[MetricReading],
    min_replicas: int,
    max_replicas: int,
    behavior: Behavior,
    history: History,
    now: float,
) -> Decision:
    """The role's replicas after this evaluation, and why. Records the recommendation and any change in
    `history` (the caller keeps one History per role)."""
    recommended = recommend_all(current, readings, behavior.tolerance)
    if not history.recommendations:
        # First sight of the role: the HPA seeds its recommendations with the current replicas, so a
        # (re)started autoscaler waits out the scale-down window before shrinking anything.
        history.recommendations.append((now, current))
    stabilized = _stabilized(recommended.replicas, current, behavior, history, now)
    reason = f"{role}: {recommended.reason}"
    if stabilized != recommended.replicas:
        reason += f"; held at {stabilized} by the stabilization window"
    replicas = stabilized
    if stabilized > current:
        limit = max(current, scale_up_limit(current, behavior.scale_up, history, now))
        if limit < max_replicas and replicas > limit:
            replicas, reason = limit, reason + f"; limited to {limit} by the scale-up policy"
    elif stabilized < current:
        limit = min(current, scale_down_limit(current, behavior.scale_down, history, now))
        if limit > min_replicas and replicas < limit:
            replicas, reason = limit, reason + f"; limited to {limit} by the scale-down policy"
    if replicas > max_replicas:
        replicas, reason = max_replicas, reason + f"; capped at maxReplicas {max_replicas}"
    if replicas < min_replicas:
        replicas, reason = min_replicas, reason + f"; raised to minReplicas {min_replicas}"
    if replicas != current:
        history.events.append(ScaleEvent(now, replicas - current))
    longest = max(
        [behavior.scale_up.stabilization_window_seconds, behavior.scale_down.stabilization_window_seconds]
        + [p.period_seconds for p in (*behavior.scale_up.policies, *behavior.scale_down.policies)]
    )
    history.forget_before(now - longest)
    return Decision(replicas, reason)


__all__ = [
    "DEFAULT_SCALE_DOWN",
    "DEFAULT_SCALE_UP",
    "DEFAULT_TOLERANCE",
    "Behavior",
    "Decision",
    "History",
    "MetricReading",
    "PodSample",
    "Recommendation",
    "ScaleEvent",
    "ScalingPolicy",
    "ScalingRules",
    "decide",
    "recommend",
    "recommend_all",
    "scale_down_limit",
    "scale_up_limit",
]
