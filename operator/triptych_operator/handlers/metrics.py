"""The operator's own metrics about reconciling (beside the autoscaler's, on the same registry, served by
main on --metrics-port): where the time goes. Every API request by operation and resource, how long a
reconcile waited for a worker and then worked, how many applies were skipped as unchanged, how many status
writes were made, and how many objects the cache holds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From 1 ms (a refresh from the cache) to 30 s (a reconcile queued behind a burst).
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CACHED_KINDS = (
    "MultimodalDeployment",
    "Deployment",
    "Service",
    "ConfigMap",
    "NetworkPolicy",
    "MultimodalRole",
    "Pod",
)
RECONCILE_PATHS = ("full", "refresh")  # the paths counted as reconciles (beside evaluate, invalid, ...)


class ReconcileMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.api_requests = Counter(
            "triptych_operator_api_requests_total",
            "Requests to the Kubernetes API by operation (get, list, apply, patch, create, delete) and "
            "resource",
            ["operation", "resource"],
            registry=self.registry,
        )
        self.api_seconds = Histogram(
            "triptych_operator_api_request_seconds",
            "Wall time of one Kubernetes API request, by operation",
            ["operation"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.reconciles = Counter(
            "triptych_operator_reconciles_total",
            "Reconciles run, by path: full (apply the desired children) or refresh (status only)",
            ["path"],
            registry=self.registry,
        )
        self.wait = Histogram(
            "triptych_operator_reconcile_wait_seconds",
            "From the request (an event, a handler) until a worker thread started it, by path",
            ["path"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.work = Histogram(
            "triptych_operator_reconcile_seconds",
            "Wall time of one reconcile in its worker thread, by path",
            ["path"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.applies_skipped = Counter(
            "triptych_operator_applies_skipped_total",
            "Children not applied because the desired object equals what this process last applied and the "
            "child has not changed since",
            registry=self.registry,
        )
        self.status_writes = Counter(
            "triptych_operator_status_writes_total",
            "Status patches of MultimodalDeployments (only written when the status changed)",
            registry=self.registry,
        )
        self.cached = Gauge(
            "triptych_operator_cached_objects",
            "Objects held in the operator's cache, by kind",
            ["kind"],
            registry=self.registry,
        )

    @contextmanager
    def timed(self, path: str, since: float) -> Iterator[None]:
        """Around one piece of work in a worker thread: how long it waited since it was asked for (`since`,
        a perf_counter reading), then how long it ran; `full` and `refresh` count as reconciles."""
        started = time.perf_counter()
        self.wait.labels(path).observe(started - since)
        if path in RECONCILE_PATHS:
            self.reconciles.labels(path).inc()
        try:
            yield
        finally:
            self.work.labels(path).observe(time.perf_counter() - started)

    def observe_request(self, operation: str, resource: str, seconds: float) -> None:
        """The kube module's RequestObserver."""
        self.api_requests.labels(operation, resource).inc()
        self.api_seconds.labels(operation).observe(seconds)

    def watch_cache(self, sizes: Callable[[], dict[str, int]]) -> None:
        """Report the cache's sizes at every scrape."""

        def size_of(kind: str) -> Callable[[], float]:
            return lambda: float(sizes().get(kind, 0))

        for kind in CACHED_KINDS:
            self.cached.labels(kind).set_function(size_of(kind))


__all__ = ["CACHED_KINDS", "RECONCILE_PATHS", "ReconcileMetrics"]
