"""``parse_load``: a backend's own gauges as the contract's load, on hand-written exposition text (the
real backends' text is checked in their tiers: vLLM's in tests/e2e/vllm, SGLang's in
tests/integration/backends); and how a sidecar turns that load into the contract's gauges."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from triptych_contract import METRIC_IN_FLIGHT, METRIC_KV_CACHE_UTILIZATION, METRIC_QUEUE_DEPTH
from triptych_workers.engines.base import EngineLoad
from triptych_workers.engines.errors import EngineError
from triptych_workers.engines.load import LoadGauges, parse_load
from triptych_workers.metrics import WorkerMetrics

GAUGES = LoadGauges(
    backend="B",
    waiting="b:waiting",
    running="b:running",
    kv_cache_usage="b:usage",
    also_waiting=("b:handshake",),
    breakdown_label="priority",
)

TEXT = """\
# TYPE b:waiting gauge
b:waiting{rank="0",priority=""} 3.0
b:waiting{rank="0",priority="0"} 2.0
b:waiting{rank="0",priority="1"} 1.0
b:waiting{rank="1",priority=""} 4.0
# TYPE b:running gauge
b:running{rank="0",priority=""} 1.0
b:running{rank="1",priority=""} 2.0
# TYPE b:usage gauge
b:usage{rank="0",priority=""} 0.2
b:usage{rank="1",priority=""} 0.4
"""


def test_totals_are_summed_and_breakdowns_skipped() -> None:
    load = parse_load(TEXT, GAUGES)
    assert (load.waiting, load.running) == (7, 3)
    assert load.kv_cache_usage == pytest.approx(0.3)


def test_an_optional_queue_adds_to_waiting_where_it_exists() -> None:
    text = TEXT + '# TYPE b:handshake gauge\nb:handshake{rank="0",priority=""} 5.0\n'
    assert parse_load(text, GAUGES).waiting == 12


def test_a_missing_required_gauge_is_an_error_naming_it() -> None:
    with pytest.raises(EngineError, match="B's /metrics lacks b:running"):
        parse_load(TEXT.replace("b:running", "b:other"), GAUGES)


def test_usage_is_clamped_to_one() -> None:
    assert parse_load(TEXT.replace("0.4", "3.0"), GAUGES).kv_cache_usage == 1.0


def test_a_sidecar_counts_each_request_once_as_waiting_or_running() -> None:
    """The contract's gauges of a sidecar whose engine batches, as one scrape shows them: queue depth is the
    sidecar's own queue plus the engine's waiting requests; in-flight is what the engine runs (handed to
    it, not waiting there). The engine is read at the scrape, and only then."""
    metrics = WorkerMetrics("decode", "d")
    local = {"queued": 2, "handed": 10}
    engine: list[EngineLoad | None] = [EngineLoad(waiting=3, running=7, kv_cache_usage=0.5)]
    reads = []

    async def read_load() -> EngineLoad | None:
        reads.append(engine[0])
        return engine[0]

    metrics.follow_engine(read_load, lambda: local["queued"], lambda: local["handed"])
    assert reads == []  # nothing is read until a scrape asks
    labels = {"role": "decode", "deployment": "d"}
    text = asyncio.run(metrics.scrape())
    assert len(reads) == 1
    assert _sample(text, METRIC_QUEUE_DEPTH, labels) == 5
    assert _sample(text, METRIC_IN_FLIGHT, labels) == 7
    assert _sample(text, METRIC_KV_CACHE_UTILIZATION, labels) == 0.5
    local["handed"] = 1  # the engine's figure is older than the sidecar's: never below zero
    engine[0] = None  # a failed read keeps the last figures
    text = asyncio.run(metrics.scrape())
    assert len(reads) == 2
    assert _sample(text, METRIC_IN_FLIGHT, labels) == 0
    assert _sample(text, METRIC_QUEUE_DEPTH, labels) == 5
    assert _sample(text, METRIC_KV_CACHE_UTILIZATION, labels) == 0.5
    engine[0] = EngineLoad(waiting=0, running=1, kv_cache_usage=0.25)
    text = asyncio.run(metrics.scrape())
    assert (_sample(text, METRIC_QUEUE_DEPTH, labels), _sample(text, METRIC_IN_FLIGHT, labels)) == (2, 1)
    assert _sample(text, METRIC_KV_CACHE_UTILIZATION, labels) == 0.25


def _sample(text: bytes, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
