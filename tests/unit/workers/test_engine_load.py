"""``parse_load``: a backend's own gauges as the contract's load, on hand-written exposition text (the
real backends' text is checked in their tiers: vLLM's in tests/e2e/vllm, SGLang's in
tests/integration/backends)."""

from __future__ import annotations

import pytest
from triptych_workers.engines.base import EngineError
from triptych_workers.engines.load import LoadGauges, parse_load

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
