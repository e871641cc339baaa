"""A worker process's Prometheus metrics: one object owning one ``CollectorRegistry`` (no globals).

Names come from the shared contract (the operator's autoscaler reads them). The transport's metrics (queue
depth, in-flight, rejections, transfer bytes/seconds by transport, data plane info, degraded transport) are
``TransportMetrics`` on the same registry, reused here rather than registered twice; this module adds what
the roles measure: requests by outcome, TTFT and inter-token latency, the encoder cache (read from
``EncoderCache.stats()`` at scrape time), KV-cache utilization, and the requests the frontend holds for a
pool with no worker (``pending``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from triptych_contract import (
    METRIC_ENCODER_CACHE_EVICTIONS,
    METRIC_ENCODER_CACHE_HIT_RATE,
    METRIC_ENCODER_CACHE_UTILIZATION,
    METRIC_ITL,
    METRIC_KV_CACHE_UTILIZATION,
    METRIC_PENDING_REQUESTS,
    METRIC_REQUESTS,
    METRIC_TTFT,
)

from triptych_workers.cache import EncoderCacheStats
from triptych_workers.transport.metrics import TransportMetrics

if TYPE_CHECKING:
    from triptych_workers.engines.base import EngineLoad

Outcome = Literal["ok", "client_error", "error", "timeout", "cancelled", "busy"]

_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EncoderCacheCollector(Collector):
    """Reads the cache's own counters at scrape time, so they can never drift from the cache."""

    def __init__(self, stats: Callable[[], EncoderCacheStats], role: str, deployment: str) -> None:
        self._stats = stats
        self._labels = [role, deployment]

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        utilization = GaugeMetricFamily(
            METRIC_ENCODER_CACHE_UTILIZATION,
            "Bytes of embeddings stored in the encoder cache (the sum of its entries' sizes) over its "
            "capacity (encoderCache.capacityBytes); 0..1, 0 when the cache is off (capacity 0)",
            labels=["role", "deployment"],
        )
        utilization.add_metric(self._labels, stats.utilization)
        hit_rate = GaugeMetricFamily(
            METRIC_ENCODER_CACHE_HIT_RATE,
            "Encoder-cache lookups answered without running the encoder, over all lookups",
            labels=["role", "deployment"],
        )
        hit_rate.add_metric(self._labels, stats.hit_rate)
        evictions = CounterMetricFamily(
            METRIC_ENCODER_CACHE_EVICTIONS.removesuffix("_total"),
            "Entries the encoder cache evicted to stay within its capacity",
            labels=["role", "deployment"],
        )
        evictions.add_metric(self._labels, stats.evictions)
        return [utilization, hit_rate, evictions]

    def describe(self) -> Iterable[Metric]:
        return []


class WorkerMetrics:
    """Every metric of one worker process, labelled with its role and deployment."""

    def __init__(self, role: str, deployment: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.role = role
        self.deployment = deployment
        self.transport = TransportMetrics(self.registry)
        labels = ["role", "deployment"]
        self._requests = Counter(
            METRIC_REQUESTS,
            "Requests finished, by outcome (ok, client_error, error, timeout, cancelled, busy)",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._ttft = Histogram(
            METRIC_TTFT,
            "Seconds from a request's arrival to its first generated token",
            labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self._itl = Histogram(
            METRIC_ITL,
            "Seconds between two consecutive generated tokens of one request",
            labels,
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )
        self._kv = Gauge(
            METRIC_KV_CACHE_UTILIZATION,
            "KV-cache tokens held by the requests this worker is generating for (each holds its prompt, then "
            "every token before the newest one it has sent) over the most it can hold (serving.concurrency x "
            "the model's context length); 0..1, always 0 on workers that do not decode",
            labels,
            registry=self.registry,
        )
        # Unlike every other series here, ``role`` is the role waited *for*, not this process's: the operator
        # reads it from the frontend's pods to wake that pool (see ``pending``).
        self._pending = Gauge(
            METRIC_PENDING_REQUESTS,
            "Requests the frontend holds because a role they need (the role label) has no ready worker, e.g. "
            "an encode pool scaled to zero; the autoscaler wakes that pool on it. Always 0 on workers",
            labels,
            registry=self.registry,
        )
        self._encoder_cache: _EncoderCacheCollector | None = None
        self._engine_reports = False
        self._before_scrape: Callable[[], Awaitable[None]] | None = None
        # Every series exists from the start, so a scrape before the first request sees zeros, not gaps.
        self.in_flight.set(0)
        self.queue_depth.set(0)
        self.set_kv_utilization(0.0)
        # Encode is the only pool the frontend waits for (the one the autoscaler takes to zero).
        self._pending.labels("encode", deployment).set(0)
        for outcome in ("ok", "client_error", "error", "timeout", "cancelled", "busy"):
            self._requests.labels(role, deployment, outcome)

    # -- the transport's gauges, labelled for this process -----------------------------------------------
    @property
    def in_flight(self) -> Gauge:
        return self.transport.in_flight.labels(self.role, self.deployment)

    @property
    def queue_depth(self) -> Gauge:
        return self.transport.queue_depth.labels(self.role, self.deployment)

    # -- what the roles record -----------------------------------------------------------------------------
    def request_done(self, outcome: Outcome) -> None:
        self._requests.labels(self.role, self.deployment, outcome).inc()

    def observe_ttft(self, seconds: float) -> None:
        self._ttft.labels(self.role, self.deployment).observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self._itl.labels(self.role, self.deployment).observe(seconds)

    def set_kv_utilization(self, fraction: float) -> None:
        if not self._engine_reports:
            self._kv.labels(self.role, self.deployment).set(fraction)

    def follow_engine(
        self,
        read_load: Callable[[], Awaitable[EngineLoad | None]],
        local_queue: Callable[[], int],
        local_in_flight: Callable[[], int],
    ) -> None:
        """For a sidecar whose engine is its own server: from now on every scrape (``scrape``) first reads
        the engine's load (``read_load``; ``None``, a failed read, keeps the last figures), so nothing polls
        the engine between scrapes and what a scrape shows is as of that scrape. The KV utilization is the
        engine's own figure, the queue depth is ``local_queue()`` (the sidecar's own queue) plus the
        requests waiting inside the engine, and in-flight is what the engine runs: the requests the sidecar
        has handed it (``local_in_flight()``) less those still waiting there, so a request counts once, as
        waiting or as running."""
        self._engine_reports = True
        waiting = [0]

        async def refresh() -> None:
            load = await read_load()
            if load is not None:
                waiting[0] = load.waiting
                self._kv.labels(self.role, self.deployment).set(load.kv_cache_usage)

        self._before_scrape = refresh
        self.queue_depth.set_function(lambda: local_queue() + waiting[0])
        self.in_flight.set_function(lambda: max(0, local_in_flight() - waiting[0]))

    @contextlib.contextmanager
    def pending(self, role: str) -> Iterator[None]:
        """Count one request as held, waiting for a ``role`` worker, for as long as the block runs (however
        it ends: worker found, timeout, client gone)."""
        gauge = self._pending.labels(role, self.deployment)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def watch_encoder_cache(self, stats: Callable[[], EncoderCacheStats]) -> None:
        """Publish an encoder cache's stats (utilization, hit rate, evictions) at every scrape."""
        if self._encoder_cache is not None:
            raise RuntimeError("an encoder cache is already watched")
        self._encoder_cache = _EncoderCacheCollector(stats, self.role, self.deployment)
        self.registry.register(self._encoder_cache)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format, as it stands."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """What ``/metrics`` serves: the registry after reading what is read at scrape time (an engine
        server's own load, see ``follow_engine``)."""
        if self._before_scrape is not None:
            await self._before_scrape()
        return self.exposition()
