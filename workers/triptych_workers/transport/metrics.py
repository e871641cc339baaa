"""The transport's Prometheus metrics, owned by one object per process.

Names come from the shared contract so the autoscaler and dashboards cannot drift. The registry is passed in
(the process's, or a fresh one in tests) rather than taken from prometheus-client's module-level default, so
two planes in one test process never collide. Queue depth and in-flight requests live here because the worker
server is what counts them; roles reuse this object instead of registering the same names again.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from triptych_contract import (
    METRIC_DATA_PLANE,
    METRIC_IN_FLIGHT,
    METRIC_QUEUE_DEPTH,
    METRIC_REQUESTS_REJECTED,
    METRIC_TRANSFER_BYTES,
    METRIC_TRANSFER_DISCARDED,
    METRIC_TRANSFER_LEASED_BYTES,
    METRIC_TRANSFER_LEASES_EXPIRED,
    METRIC_TRANSFER_REGISTERED_BYTES,
    METRIC_TRANSFER_SECONDS,
    METRIC_TRANSPORT_DEGRADED,
)

# From 100 us (an inline 1 KiB payload) to 10 s (a stalled TCP fallback of a big KV cache).
_TRANSFER_BUCKETS = (
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class TransportMetrics:
    """All transport metrics; every collector registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.transfer_bytes = Counter(
            METRIC_TRANSFER_BYTES,
            "Payload bytes moved by the data plane, counted once by the reader",
            ["transport"],
            registry=registry,
        )
        self.transfer_seconds = Histogram(
            METRIC_TRANSFER_SECONDS,
            "Reader-side time to fetch one payload, control messages included",
            ["transport"],
            buckets=_TRANSFER_BUCKETS,
            registry=registry,
        )
        self.registered_bytes = Gauge(
            METRIC_TRANSFER_REGISTERED_BYTES,
            "Bytes of memory registered with the data plane (pooled regions included)",
            ["transport"],
            registry=registry,
        )
        self.leased_bytes = Gauge(
            METRIC_TRANSFER_LEASED_BYTES,
            "Bytes of published payloads still held for a reader",
            ["transport"],
            registry=registry,
        )
        self.leases_expired = Counter(
            METRIC_TRANSFER_LEASES_EXPIRED,
            "Published payloads released because no reader came before the lease ran out",
            ["transport"],
            registry=registry,
        )
        self.discarded = Counter(
            METRIC_TRANSFER_DISCARDED,
            "Published payloads a reader told the producer to drop unread (e.g. an encoder-cache hit)",
            ["transport"],
            registry=registry,
        )
        self.data_plane = Gauge(
            METRIC_DATA_PLANE,
            "1 for each data plane this process can use for large payloads",
            ["transport"],
            registry=registry,
        )
        self.degraded = Gauge(
            METRIC_TRANSPORT_DEGRADED,
            "1 when the configured transport is not the one in use (e.g. RDMA requested, TCP used)",
            ["requested", "effective", "reason"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            METRIC_QUEUE_DEPTH,
            "Requests accepted by a worker and waiting in its local queue",
            ["role", "deployment"],
            registry=registry,
        )
        self.in_flight = Gauge(
            METRIC_IN_FLIGHT,
            "Requests a worker is running now",
            ["role", "deployment"],
            registry=registry,
        )
        self.rejected = Counter(
            METRIC_REQUESTS_REJECTED,
            "Requests turned away because the worker's queue was full",
            ["role", "deployment"],
            registry=registry,
        )
