"""The SGLang gauges the workers read as the contract's load (``engines/sglang/metrics.SGLANG_LOAD``),
checked against SGLang 0.5.23's own scheduler metrics collector: `tests/backends/sglang_metrics_check.py` (in
the SGLang venv) makes SGLang's ``SchedulerMetricsCollector`` log the figures below, one forked process per
data-parallel scheduler as SGLang runs them, and returns the ``/metrics`` text SGLang's server would serve
(its multiprocess registry). The workers' own ``parse_load`` must read from it the figures worked out here by
hand. Nothing stands in for SGLang's metrics code; only the serving loop that would call it is absent (SGLang
needs an accelerator to serve).

Opt-in (marker ``backends``), like the command-line check beside it: `make test-backends`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from triptych_workers.engines.base import EngineLoad
from triptych_workers.engines.errors import EngineError
from triptych_workers.engines.load import parse_load
from triptych_workers.engines.sglang.metrics import SGLANG_LOAD

from tests.conftest import REPO
from tests.integration.backends.conftest import run_checker

pytestmark = [pytest.mark.backends, pytest.mark.slow]

CHECKER = REPO / "tests" / "backends" / "sglang_metrics_check.py"


def queue(total: int, **by_priority: int) -> dict[str, Any]:
    """A ``QueueCount``: the total, and per priority where priority scheduling reports them."""
    return {"total": total, "by_priority": {p.removeprefix("p"): n for p, n in by_priority.items()} or None}


# (what each scheduler logs, and the load read from SGLang's /metrics, worked out by hand)
SCENARIOS: dict[str, tuple[dict[str, Any], EngineLoad]] = {
    # Two data-parallel schedulers: their series add up, their usages average.
    "aggregated-two-dp-ranks": (
        {
            "disaggregation_mode": "null",
            "priority_scheduling": False,
            "schedulers": [
                {"num_queue_reqs": queue(4), "num_running_reqs": queue(2), "token_usage": 0.2},
                {"num_queue_reqs": queue(1), "num_running_reqs": queue(3), "token_usage": 0.6},
            ],
        },
        EngineLoad(waiting=5, running=5, kv_cache_usage=0.4),
    ),
    # Priority scheduling: SGLang exports each total and its breakdown (3 = 2 + 1); only totals count. The
    # bootstrap queue waits; the inflight queue (computed, sending its KV) does not.
    "prefill-with-priorities": (
        {
            "disaggregation_mode": "prefill",
            "priority_scheduling": True,
            "schedulers": [
                {
                    "num_queue_reqs": queue(3, p0=2, p1=1),
                    "num_running_reqs": queue(2, p0=2),
                    "num_prefill_bootstrap_queue_reqs": queue(2, p1=2),
                    "num_prefill_inflight_queue_reqs": queue(5),
                    "token_usage": 0.5,
                }
            ],
        },
        EngineLoad(waiting=5, running=2, kv_cache_usage=0.5),
    ),
    # Decode: pre-allocation and transfer queues wait; host-receive is part of the transfer queue.
    "decode": (
        {
            "disaggregation_mode": "decode",
            "priority_scheduling": False,
            "schedulers": [
                {
                    "num_queue_reqs": queue(1),
                    "num_decode_prealloc_queue_reqs": queue(2),
                    "num_decode_transfer_queue_reqs": queue(3),
                    "num_decode_host_receive_queue_reqs": queue(1),
                    "num_running_reqs": queue(7),
                    "token_usage": 0.9,
                }
            ],
        },
        EngineLoad(waiting=6, running=7, kv_cache_usage=0.9),
    ),
}


@pytest.fixture(scope="module")
def expositions(sglang_python: Path) -> dict[str, str]:
    """SGLang's /metrics text for every scenario, from one run of the checker."""
    scenarios = [{"id": name, **logged} for name, (logged, _) in SCENARIOS.items()]
    expositions: dict[str, str] = run_checker(sglang_python, CHECKER, {"scenarios": scenarios})["expositions"]
    return expositions


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sglang_metrics_give_the_contracts_load(scenario: str, expositions: dict[str, str]) -> None:
    _, expected = SCENARIOS[scenario]
    load = parse_load(expositions[scenario], SGLANG_LOAD)
    assert (load.waiting, load.running) == (expected.waiting, expected.running)
    assert load.kv_cache_usage == pytest.approx(expected.kv_cache_usage)


def test_every_gauge_read_is_a_gauge_sglang_exports(expositions: dict[str, str]) -> None:
    """Each name ``SGLANG_LOAD`` reads, optional queues included, is a gauge of SGLang's collector, and
    the breakdown label is one SGLang really puts on them (else the totals would be summed twice)."""
    families = {f.name: f for f in text_string_to_metric_families(expositions["prefill-with-priorities"])}
    for name in (*SGLANG_LOAD.required, *SGLANG_LOAD.also_waiting):
        assert name in families, f"SGLang exports no {name}"
        assert families[name].type == "gauge", (name, families[name].type)
    queue_labels = {sample.labels.get("priority") for sample in families[SGLANG_LOAD.waiting].samples}
    assert queue_labels == {"", "0", "1"}


def test_a_renamed_gauge_is_an_error_not_a_zero(expositions: dict[str, str]) -> None:
    """The check can fail: SGLang's text with a gauge renamed is refused, naming the gauge."""
    renamed = expositions["decode"].replace("sglang:token_usage{", "sglang:kv_usage{")
    with pytest.raises(EngineError, match="SGLang's /metrics lacks sglang:token_usage"):
        parse_load(renamed, SGLANG_LOAD)
