"""The autoscaling API mapped onto the decision (HPA defaults per direction) and the ratio bounds."""

from __future__ import annotations

from typing import Any

import pytest
from triptych_operator.api import RatioBound, ScalingBehaviorSpec, SpecError, parse_spec
from triptych_operator.autoscaler.decision import Behavior, ScalingPolicy, ScalingRules
from triptych_operator.autoscaler.policy import apply_ratio_bounds, behavior_from


def test_no_behavior_is_the_hpa_defaults() -> None:
    assert behavior_from(None) == Behavior()
    assert behavior_from(ScalingBehaviorSpec()) == Behavior()


def test_each_field_given_replaces_only_its_default() -> None:
    spec = ScalingBehaviorSpec.model_validate(
        {
            "scaleDown": {"stabilizationWindowSeconds": 60},
            "scaleUp": {
                "policies": [{"type": "Pods", "value": 2, "periodSeconds": 30}],
                "selectPolicy": "Min",
            },
            "tolerance": 0.05,
        }
    )
    got = behavior_from(spec)
    # scale-down: the window given, the HPA's default policy (100 % per 15 s) and selectPolicy kept.
    assert got.scale_down == ScalingRules(60, (ScalingPolicy("Percent", 100, 15),), "Max")
    # scale-up: the policies and selectPolicy given, the default window (0) kept.
    assert got.scale_up == ScalingRules(0, (ScalingPolicy("Pods", 2, 30),), "Min")
    assert got.tolerance == 0.05


def _bound(numerator: str, denominator: str, **limits: float) -> RatioBound:
    return RatioBound.model_validate({"numerator": numerator, "denominator": denominator, **limits})


@pytest.mark.parametrize(
    ("replicas", "bound", "caps", "expected"),
    [
        # decode:prefill at most 4: 10 decode over 2 prefill is 5 -> prefill grows to ceil(10 / 4) = 3.
        ({"decode": 10, "prefill": 2}, _bound("decode", "prefill", max=4), {}, {"decode": 10, "prefill": 3}),
        # at least 1: 1 decode over 2 prefill -> decode grows to 2.
        ({"decode": 1, "prefill": 2}, _bound("decode", "prefill", min=1), {}, {"decode": 2, "prefill": 2}),
        # within the bounds: nothing moves.
        (
            {"decode": 4, "prefill": 2},
            _bound("decode", "prefill", min=1, max=4),
            {},
            {"decode": 4, "prefill": 2},
        ),
        # a side at its maxReplicas stops there, and the bound is reported unmet.
        (
            {"decode": 12, "prefill": 2},
            _bound("decode", "prefill", max=2),
            {"prefill": 4},
            {"decode": 12, "prefill": 4},
        ),
        # encode at zero (scaled to zero on text-only traffic) is never divided by.
        ({"decode": 3, "encode": 0}, _bound("decode", "encode", max=2), {}, {"decode": 3, "encode": 0}),
    ],
)
def test_ratio_bounds_grow_the_short_side(
    replicas: dict[str, int], bound: RatioBound, caps: dict[str, int], expected: dict[str, int]
) -> None:
    got = apply_ratio_bounds(replicas, [bound], caps)  # type: ignore[arg-type]
    assert got.replicas == expected
    assert bool(got.reasons) == (expected != replicas)
    if caps:
        assert "the bound is not met" in got.reasons[0]


def _spec(**extra: Any) -> dict[str, Any]:
    return {"backend": "vllm", "model": {"name": "m"}, "roles": {"prefill": {}, "decode": {}}, **extra}


@pytest.mark.parametrize(
    ("autoscaling", "field"),
    [
        ({"ratios": [{"numerator": "decode", "denominator": "encode", "max": 4}]}, "spec.autoscaling.ratios"),
        (
            {"ratios": [{"numerator": "decode", "denominator": "prefill", "min": 4, "max": 1}]},
            "spec.autoscaling.ratios[0].min",
        ),
        (
            {"ratios": [{"numerator": "decode", "denominator": "decode", "max": 1}]},
            "spec.autoscaling.ratios[0].denominator",
        ),
        ({"ratios": [{"numerator": "decode", "denominator": "prefill"}]}, "spec.autoscaling.ratios[0]"),
    ],
)
def test_nonsense_ratio_bounds_are_refused_naming_the_field(autoscaling: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(autoscaling=autoscaling))
    assert field in info.value.fields


def test_a_sane_deployment_autoscaling_block_parses() -> None:
    spec = parse_spec(
        _spec(autoscaling={"ratios": [{"numerator": "decode", "denominator": "prefill", "min": 1, "max": 4}]})
    )
    assert spec.autoscaling.evaluation_interval_seconds == 5  # three times the HPA's rate
    assert spec.autoscaling.ratios[0].max == 4
