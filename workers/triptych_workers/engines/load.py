"""A backend server's own Prometheus gauges as the contract's ``EngineLoad`` (pure: text in, figures out).

Each backend that is its own server names the same three figures differently, and only its ``/metrics`` knows
them: requests waiting (every queue a request sits in before it runs: for a disaggregated SGLang server also
its bootstrap, pre-allocation and transfer queues), requests running, and KV-cache usage (0..1). A
``LoadGauges`` says which gauges they are; ``parse_load`` reads them, summing over the engines of a
data-parallel pod (each exports its own series, by an ``engine`` or ``dp_rank`` label) and averaging the
usage. The names are checked against each backend's own code: vLLM's in a real vLLM (``tests/e2e/vllm``),
SGLang's against its own metrics collector (``tests/integration/backends``).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from triptych_workers.engines.base import EngineLoad
from triptych_workers.engines.errors import EngineError


@dataclass(frozen=True, slots=True)
class LoadGauges:
    """Which gauges of a backend's ``/metrics`` give each figure of ``EngineLoad``."""

    backend: str
    waiting: str
    running: str
    kv_cache_usage: str
    also_waiting: tuple[str, ...] = ()
    """Further queues counted as waiting where the server has them (a mode-specific gauge has no series
    on a server of another mode, so their absence is not an error)."""
    breakdown_label: str | None = None
    """A label whose non-empty values mark a breakdown of a total exported beside it (SGLang's
    ``priority``: the total under ``priority=""``, then one series per priority); only totals are summed."""

    @property
    def required(self) -> tuple[str, ...]:
        return (self.waiting, self.running, self.kv_cache_usage)


def parse_load(exposition: str, gauges: LoadGauges) -> EngineLoad:
    """The server's ``/metrics`` text as an ``EngineLoad``; ``EngineError`` naming the gauges missing from
    it (a server that renamed one: the autoscaler must not read a silent zero)."""
    wanted = {*gauges.required, *gauges.also_waiting}
    values: dict[str, list[float]] = {name: [] for name in wanted}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if gauges.breakdown_label and sample.labels.get(gauges.breakdown_label):
                continue
            if sample.name in values:
                values[sample.name].append(sample.value)
    missing = [name for name in gauges.required if not values[name]]
    if missing:
        raise EngineError(f"{gauges.backend}'s /metrics lacks {', '.join(missing)}")
    usage = values[gauges.kv_cache_usage]
    waiting = sum(values[gauges.waiting]) + sum(sum(values[name]) for name in gauges.also_waiting)
    return EngineLoad(
        waiting=round(waiting),
        running=round(sum(values[gauges.running])),
        kv_cache_usage=max(0.0, min(1.0, sum(usage) / len(usage))),
    )
