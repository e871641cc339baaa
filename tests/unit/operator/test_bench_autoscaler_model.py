"""The autoscaler benchmark's fluid queue model (tests/bench/bench_autoscaler.py), its pure pieces only.

Expected values are worked out by hand from the model's definition in that module's docstring.
"""

from __future__ import annotations

from triptych_operator.autoscaler.decision import PodSample

from tests.bench.bench_autoscaler import Limits, Pool, PoolParams, needed

PARAMS = PoolParams(mu=2.0, service_s=2.0, startup_s=30)  # capacity 2 req/s per ready replica


def test_a_load_equal_to_capacity_keeps_the_queue_flat() -> None:
    pool = Pool.started(PARAMS, 3)  # 3 x 2 = 6 req/s
    pool.backlog = 5.0
    for now in range(100):
        pool.step(now, 6)
        assert pool.backlog == 5.0
        assert pool.served == 6.0
    # in flight: 6 served/s x 2 s in service + 5 waiting = 17, over 3 ready replicas
    assert pool.in_flight_per_ready(99) == 17.0 / 3


def test_a_load_above_capacity_grows_the_queue_by_the_difference() -> None:
    pool = Pool.started(PARAMS, 3)
    for now in range(10):
        pool.step(now, 10)  # 10 arrive, 6 served: +4 a second
    assert pool.backlog == 40.0


def test_a_replica_requested_at_t_is_ready_at_t_plus_startup() -> None:
    pool = Pool.started(PARAMS, 3)
    pool.scale_to(4, 10)
    assert pool.replicas == 4
    assert pool.ready(39) == 3
    assert pool.samples(39) == (PodSample(0.0), PodSample(0.0), PodSample(0.0), PodSample(0.0, ready=False))
    assert pool.ready(40) == 4
    pool.step(40, 100)
    assert pool.served == 8.0  # 4 ready x 2 req/s
    assert pool.backlog == 92.0


def test_a_scale_down_removes_the_newest_pods_first_and_at_once() -> None:
    pool = Pool.started(PARAMS, 3)
    pool.scale_to(5, 10)  # two starting, ready at 40
    pool.scale_to(4, 20)
    assert pool.ready_at == [0, 0, 0, 40]
    pool.scale_to(2, 20)
    assert pool.ready_at == [0, 0]
    assert pool.ready(20) == 2


def test_needed_is_the_steady_state_replicas_at_target_within_the_bounds() -> None:
    limits = Limits(target_in_flight=3.0, min_replicas=2, max_replicas=64)
    assert needed(10, PARAMS, limits) == 7  # 10 req/s x 2 s = 20 in flight; 20 / 3 = 6.67 -> 7
    assert needed(9, PARAMS, limits) == 6  # 18 / 3 = 6 exactly
    assert needed(0, PARAMS, limits) == 2  # minReplicas
    assert needed(1000, PARAMS, limits) == 64  # maxReplicas
