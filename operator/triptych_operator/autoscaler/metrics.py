"""The operator's own metrics about autoscaling, on a registry of their own (served by main on
--metrics-port): how many decisions scaled what, how often reading pods failed, how long evaluations take."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# From 1 ms (a cached scrape of one pod) to 10 s (50 deployments behind a slow API server).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.evaluations = Counter(
            "triptych_operator_autoscaler_evaluations_total",
            "Evaluations of one MultimodalDeployment's autoscaled roles, by outcome (ok, source_error, "
            "api_error)",
            ["outcome"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "triptych_operator_autoscaler_scales_total",
            "Replica changes the autoscaler wrote, by role and direction (up, down)",
            ["role", "direction"],
            registry=self.registry,
        )
        self.scrape_errors = Counter(
            "triptych_operator_autoscaler_scrape_errors_total",
            "Pods whose metrics could not be read (they count as missing for that evaluation)",
            registry=self.registry,
        )
        self.latency = Histogram(
            "triptych_operator_autoscaler_evaluation_seconds",
            "Wall time of one evaluation: reading the cluster and the pods' metrics, deciding, writing",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )


__all__ = ["AutoscalerMetrics"]
