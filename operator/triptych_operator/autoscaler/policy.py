"""From the API to the decision: a role's `behavior` with the HPA's defaults filled in per direction, and
the ratio bounds between roles applied after each role's own decision. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from triptych_operator.api import RatioBound, ScalingBehaviorSpec, ScalingRulesSpec, WorkerRoleName
from triptych_operator.autoscaler.decision import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    DEFAULT_TOLERANCE,
    Behavior,
    ScalingPolicy,
    ScalingRules,
)


def _rules(given: ScalingRulesSpec | None, default: ScalingRules) -> ScalingRules:
    if given is None:
        return default
    policies = default.policies
    if given.policies is not None:
        policies = tuple(ScalingPolicy(p.type, p.value, p.period_seconds) for p in given.policies)
    window = default.stabilization_window_seconds
    if given.stabilization_window_seconds is not None:
        window = given.stabilization_window_seconds
    return ScalingRules(window, policies, given.select_policy or default.select_policy)


def behavior_from(spec: ScalingBehaviorSpec | None) -> Behavior:
    """The decision's Behavior: each absent field takes the HPA's default for its direction."""
    if spec is None:
        return Behavior()
    tolerance = DEFAULT_TOLERANCE if spec.tolerance is None else spec.tolerance
    return Behavior(
        _rules(spec.scale_up, DEFAULT_SCALE_UP), _rules(spec.scale_down, DEFAULT_SCALE_DOWN), tolerance
    )


@dataclass(frozen=True)
class Bounded:
    replicas: dict[WorkerRoleName, int]
    reasons: tuple[str, ...]


def apply_ratio_bounds(
    replicas: Mapping[WorkerRoleName, int],
    bounds: Sequence[RatioBound],
    max_replicas: Mapping[WorkerRoleName, int],
) -> Bounded:
    """Each bound in turn, by growing the side that is short (never by taking away replicas a role's own
    metrics asked for): above `max`, the denominator grows to ceil(numerator / max); below `min`, the
    numerator grows to ceil(denominator * min); neither past its role's maxReplicas (then the reason
    says the bound could not be met)."""
    out = dict(replicas)
    reasons: list[str] = []
    for bound in bounds:
        num, den = bound.numerator, bound.denominator
        if num not in out or den not in out:
            continue
        label = f"{num}:{den}"
        if bound.max is not None and out[den] > 0 and out[num] / out[den] > bound.max:
            wanted = math.ceil(out[num] / bound.max) if bound.max > 0 else out[den]
            out[den], reason = _grow(den, out[den], wanted, max_replicas.get(den))
            reasons.append(f"{label} above {bound.max:g}: {reason}")
        if bound.min is not None and out[den] > 0 and out[num] / out[den] < bound.min:
            wanted = math.ceil(out[den] * bound.min)
            out[num], reason = _grow(num, out[num], wanted, max_replicas.get(num))
            reasons.append(f"{label} below {bound.min:g}: {reason}")
    return Bounded(out, tuple(reasons))


def _grow(role: WorkerRoleName, current: int, wanted: int, cap: int | None) -> tuple[int, str]:
    if cap is not None and wanted > cap:
        return max(current, cap), f"{role} to {max(current, cap)} (maxReplicas; the bound is not met)"
    return wanted, f"{role} to {wanted}"


__all__ = ["Bounded", "apply_ratio_bounds", "behavior_from"]
