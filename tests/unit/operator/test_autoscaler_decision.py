"""The scaling decision against the HorizontalPodAutoscaler's documented behaviour, case by case.

Expected values are worked out by hand from the HPA's documentation ("Algorithm details", "Configurable
scaling behavior") and its controller's rules, never taken from the code under test.
"""

from __future__ import annotations

import pytest
from triptych_operator.autoscaler.decision import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Behavior,
    History,
    MetricReading,
    PodSample,
    ScaleEvent,
    ScalingPolicy,
    ScalingRules,
    decide,
    recommend,
    recommend_all,
)

NO_WINDOWS = Behavior(
    scale_up=ScalingRules(0, (ScalingPolicy("Percent", 1000, 15),)),
    scale_down=ScalingRules(0, (ScalingPolicy("Percent", 100, 15),)),
)


def _reading(*values: float | None, target: float = 100.0, unready: int = 0) -> MetricReading:
    pods = [PodSample(v) for v in values] + [PodSample(target * 4, ready=False)] * unready
    return MetricReading("queueDepth", target, tuple(pods))


@pytest.mark.parametrize(
    ("current", "reading", "expected"),
    [
        # desired = ceil(current * value / target): 200 vs 100 on one pod -> 2; 50 vs 100 on four -> 2.
        (1, _reading(200.0), 2),
        (4, _reading(50.0, 50.0, 50.0, 50.0), 2),
        # within the 0.1 tolerance: no change, either way; just outside it: a change.
        (4, _reading(105.0, 105.0, 105.0, 105.0), 4),
        (4, _reading(91.0, 91.0, 91.0, 91.0), 4),
        (4, _reading(112.0, 112.0, 112.0, 112.0), 5),
        (10, _reading(*[89.0] * 10), 9),
        # 101.1 % of target is inside the tolerance: no change.
        (3, _reading(101.1, 101.1, 101.1), 3),
        # missing samples on a scale-down count as 100 % of target: [50, 50, 100] -> ceil(3 * 0.667) = 2
        # (not ceil(2 * 0.5) = 1).
        (3, _reading(50.0, 50.0, None), 2),
        # missing samples on a scale-up count as 0 %: [200, 200, 0] -> ceil(3 * 1.333) = 4.
        (3, _reading(200.0, 200.0, None), 4),
        (4, _reading(150.0, None, None, None), 4),  # [150, 0, 0, 0]: 0.375, the other way: no change
        (4, _reading(50.0, None, None, None), 4),  # [50, 100, 100, 100]: ceil(4 * 0.875) = 4, as it was
        # not-ready pods count 0 % on a scale-up: ready [200, 200] + unready 0 -> ceil(3 * 1.333) = 4.
        (3, _reading(200.0, 200.0, unready=1), 4),
        # ... and are left out on a scale-down: ready [50, 50] -> ceil(2 * 0.5) = 1.
        (3, _reading(50.0, 50.0, unready=1), 1),
        # no pod reported the metric: no change.
        (3, _reading(None, None, None), 3),
    ],
)
def test_replica_calculator(current: int, reading: MetricReading, expected: int) -> None:
    assert recommend(current, reading).replicas == expected


def test_the_largest_recommendation_over_metrics_wins_and_no_metric_changes_nothing() -> None:
    queue = _reading(300.0, 300.0)  # -> 6
    cache = MetricReading("encoderCacheUtilization", 0.8, (PodSample(0.4), PodSample(0.4)))  # -> 1
    got = recommend_all(2, [queue, cache])
    assert got.replicas == 6
    assert "queueDepth" in got.reason
    assert recommend_all(2, []).replicas == 2


def test_a_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="target must be positive"):
        recommend(1, MetricReading("queueDepth", 0.0, (PodSample(1.0),)))


def _decide(current: int, reading: MetricReading, history: History, now: float, **kwargs: object) -> int:
    behavior = kwargs.pop("behavior", Behavior())
    assert isinstance(behavior, Behavior)
    min_r = int(kwargs.pop("min_replicas", 1))  # type: ignore[call-overload]
    max_r = int(kwargs.pop("max_replicas", 100))  # type: ignore[call-overload]
    return decide("prefill", current, [reading], min_r, max_r, behavior, history, now).replicas


def test_default_scale_up_is_4_pods_or_100_percent_per_15_s_whichever_is_more() -> None:
    # From 2: max(2 + 4, 2 * 2) = 6 per period; from 10: max(14, 20) = 20.
    assert _decide(2, _reading(*[1000.0] * 2), History(), 0.0) == 6
    assert _decide(10, _reading(*[1000.0] * 10), History(), 0.0) == 20


def test_scale_up_rate_counts_what_the_period_already_added() -> None:
    history = History()
    assert _decide(2, _reading(*[1000.0] * 2), history, 0.0) == 6  # +4 at t=0
    # 5 s later, still inside the 15 s period that started at 2 replicas: no further room.
    assert _decide(6, _reading(*[1000.0] * 6), history, 5.0) == 6
    # Once the period has passed, the limit is counted from 6: max(10, 12) = 12.
    assert _decide(6, _reading(*[1000.0] * 6), history, 16.0) == 12


def test_select_policy_min_takes_the_least_permissive_and_disabled_forbids() -> None:
    least = Behavior(scale_up=ScalingRules(0, DEFAULT_SCALE_UP.policies, "Min"))
    assert _decide(10, _reading(*[1000.0] * 10), History(), 0.0, behavior=least) == 14  # min(14, 20)
    frozen = Behavior(scale_down=ScalingRules(0, DEFAULT_SCALE_DOWN.policies, "Disabled"))
    assert _decide(10, _reading(*[10.0] * 10), History(), 0.0, behavior=frozen) == 10


def test_scale_down_waits_for_the_stabilization_window() -> None:
    """Default 300 s: the highest recommendation inside the window holds; after it, the load is believed."""
    history = History()
    assert _decide(6, _reading(*[100.0] * 6), history, 0.0) == 6  # at target: recommends 6
    idle = _reading(*[10.0] * 6)  # recommends ceil(6 * 0.1) = 1
    assert _decide(6, idle, history, 60.0) == 6
    assert _decide(6, idle, history, 299.0) == 6
    assert _decide(6, idle, history, 301.0) == 1  # the 6 at t=0 has left the window; 100 %/15 s allows it


def test_scale_down_pods_policy_removes_one_per_period() -> None:
    one_a_minute = Behavior(scale_down=ScalingRules(0, (ScalingPolicy("Pods", 1, 60),)))
    history = History()
    idle = _reading(*[10.0] * 5)
    assert _decide(5, idle, history, 0.0, behavior=one_a_minute) == 4
    assert _decide(4, _reading(*[10.0] * 4), history, 30.0, behavior=one_a_minute) == 4  # same period
    assert _decide(4, _reading(*[10.0] * 4), history, 61.0, behavior=one_a_minute) == 3


def test_scale_down_percent_policy_rounds_down() -> None:
    half = Behavior(scale_down=ScalingRules(0, (ScalingPolicy("Percent", 50, 15),)))
    assert _decide(5, _reading(*[10.0] * 5), History(), 0.0, behavior=half) == 2  # int(5 * 0.5)


def test_min_and_max_bound_the_result_and_say_so() -> None:
    assert _decide(4, _reading(*[1000.0] * 4), History(), 0.0, behavior=NO_WINDOWS, max_replicas=5) == 5
    assert _decide(4, _reading(*[1.0] * 4), History(), 0.0, behavior=NO_WINDOWS, min_replicas=2) == 2
    got = decide("decode", 4, [_reading(*[1000.0] * 4)], 1, 5, NO_WINDOWS, History(), 0.0)
    assert "maxReplicas 5" in got.reason
    assert got.reason.startswith("decode: queueDepth 1000/replica vs target 100 -> 40")


def test_a_change_is_recorded_and_old_history_is_forgotten() -> None:
    history = History()
    decide("encode", 2, [_reading(1000.0, 1000.0)], 1, 100, Behavior(), history, 0.0)
    assert history.events == [ScaleEvent(0.0, 4)]
    decide("encode", 6, [_reading(*[100.0] * 6)], 1, 100, Behavior(), history, 1000.0)
    assert history.events == []  # older than the longest window (300 s)
    assert history.recommendations == [(1000.0, 6)]
