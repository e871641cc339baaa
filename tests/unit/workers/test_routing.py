"""Encoder-cache-aware routing: a pure function of the item's hash and the workers' announcements."""

from __future__ import annotations

from collections import Counter

from triptych_workers.config import WorkerConfig
from triptych_workers.roles.routing import RoundRobin, choose_encode_worker, encode_router
from triptych_workers.transport import WorkerLoad


def _w(worker_id: str, load: int = 0, keys: tuple[str, ...] = (), **kw: object) -> WorkerLoad:
    fields: dict[str, object] = {"concurrency": 1, "queue_capacity": 8, "leaving": False} | kw
    return WorkerLoad(
        worker_id=worker_id,
        role="encode",
        queue_depth=max(0, load - 1),
        in_flight=min(1, load),
        cache_keys=keys,
        **fields,  # type: ignore[arg-type]
    )


def test_no_workers_means_the_pool_decides() -> None:
    assert choose_encode_worker("h", []) is None


def test_the_holder_of_the_item_wins_over_a_less_loaded_worker() -> None:
    workers = [_w("a", load=0), _w("b", load=2, keys=("x", "h"))]
    assert choose_encode_worker("h", workers) == "b"


def test_least_loaded_holder_among_several() -> None:
    workers = [_w("a", load=3, keys=("h",)), _w("b", load=1, keys=("h",)), _w("c", load=0)]
    assert choose_encode_worker("h", workers) == "b"


def test_a_miss_goes_to_the_least_loaded() -> None:
    workers = [_w("a", load=2), _w("b", load=0), _w("c", load=1, keys=("other",))]
    assert choose_encode_worker("h", workers) == "b"


def test_an_overloaded_holder_is_skipped() -> None:
    workers = [_w("a", load=0), _w("b", load=6, keys=("h",))]
    assert choose_encode_worker("h", workers, max_extra_load=4) == "a"
    assert choose_encode_worker("h", workers, max_extra_load=6) == "b"


def test_full_and_leaving_workers_are_never_chosen() -> None:
    full = _w("full", load=9, keys=("h",))  # concurrency 1 + queue 8
    leaving = _w("leaving", keys=("h",), leaving=True)
    assert choose_encode_worker("h", [full, leaving]) is None
    assert choose_encode_worker("h", [full, leaving, _w("ok", load=3)]) == "ok"


def test_ties_are_stable_per_item_and_spread_across_items() -> None:
    workers = [_w(name) for name in ("a", "b", "c")]
    for item in ("h1", "h2", "h3"):
        assert len({choose_encode_worker(item, workers) for _ in range(5)}) == 1
        assert choose_encode_worker(item, list(reversed(workers))) == choose_encode_worker(item, workers)
    spread = Counter(choose_encode_worker(f"item-{i}", workers) for i in range(300))
    assert set(spread) == {"a", "b", "c"}
    assert min(spread.values()) > 50


def test_cache_aware_routing_beats_round_robin_on_reuse() -> None:
    """A trace with 50 % reuse over 3 workers: announced caches make repeats hit far more often."""
    caches: dict[str, set[str]] = {n: set() for n in ("a", "b", "c")}
    trace = [f"img-{i % 20}" if i % 2 else f"new-{i}" for i in range(400)]
    hits = rr_hits = 0
    rr_caches: dict[str, set[str]] = {n: set() for n in caches}
    for i, item in enumerate(trace):
        chosen = choose_encode_worker(item, [_w(n, keys=tuple(c)) for n, c in caches.items()])
        assert chosen is not None
        hits += item in caches[chosen]
        caches[chosen].add(item)
        rr = "abc"[i % 3]
        rr_hits += item in rr_caches[rr]
        rr_caches[rr].add(item)
    # Every distinct item is encoded exactly once with the router; round-robin encodes popular ones up to
    # three times (once per worker).
    distinct = len(set(trace))
    assert len(trace) - hits == distinct
    assert len(trace) - rr_hits >= distinct + 15


def test_round_robin_takes_workers_in_turn_and_ignores_caches() -> None:
    route = encode_router("round-robin")
    workers = [_w("c", load=3), _w("a", keys=("h",)), _w("b"), _w("full", load=9), _w("gone", leaving=True)]
    assert [route("h", workers) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert route("h", []) is None


def test_cache_aware_is_the_default_policy() -> None:
    config = WorkerConfig.model_validate(
        {"deployment": "d", "namespace": "n", "backend": "reference", "model": {"name": "m"}}
    )
    assert config.serving.encode_routing == "cache-aware"
    assert encode_router(config.serving.encode_routing) is choose_encode_worker
    rr = WorkerConfig.model_validate(
        {
            "deployment": "d",
            "namespace": "n",
            "backend": "reference",
            "model": {"name": "m"},
            "serving": {"encodeRouting": "round-robin"},
        }
    )
    assert isinstance(encode_router(rr.serving.encode_routing), RoundRobin)
