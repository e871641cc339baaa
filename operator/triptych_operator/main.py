"""`triptych-operator`: build the settings, the API client and the Reconciler once, then run kopf.

    triptych-operator --peering triptych              # in the cluster (the chart's Deployment)
    triptych-operator --peering triptych --priority 1 # a developer's `make run`: the in-cluster one pauses
    triptych-operator --standalone                    # no peering objects (no chart installed)

HA: kopf has no leader election; peers with a lower priority pause while a higher one is alive, and peers
with the SAME priority all pause. So `--priority` is a tier, and each process draws a random rank inside
it: kopf's priority is tier * PRIORITY_SPREAD + rank. Within a tier (the replicas of the chart's Deployment)
the highest rank works and the others stand by, taking over when its peering record goes (at once when it
exits cleanly, after `peering.lifetime` when it dies). Any peer of a higher tier outranks every lower one.
Two replicas draw the same rank, and both pause until one restarts, once in PRIORITY_SPREAD pairs.
"""

from __future__ import annotations

import argparse
import logging
import random

import kopf
import prometheus_client

from triptych_operator.autoscaler.evaluate import Autoscaler
from triptych_operator.autoscaler.metrics import AutoscalerMetrics
from triptych_operator.autoscaler.sources import MetricsSource, PrometheusSource, ScrapeSource
from triptych_operator.handlers import build_registry, kopf_settings
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.handlers.metrics import ReconcileMetrics
from triptych_operator.handlers.reconcile import Reconciler
from triptych_operator.kube import Kube
from triptych_operator.settings import OperatorSettings

PRIORITY_SPREAD = 1_000_000


def peering_priority(tier: int, rank: int) -> int:
    """kopf's priority for a peer of `tier` that drew `rank` (0 <= rank < PRIORITY_SPREAD)."""
    if not 0 <= rank < PRIORITY_SPREAD:
        raise ValueError(f"rank {rank} outside [0, {PRIORITY_SPREAD})")
    return tier * PRIORITY_SPREAD + rank


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="triptych-operator", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--peering", default="triptych", help="ClusterKopfPeering name (default: triptych)")
    mode.add_argument("--standalone", action="store_true", help="run without peering")
    parser.add_argument(
        "--priority", type=int, default=0, help="peering tier: higher tiers outrank lower ones (default: 0)"
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint (empty: none)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=8081, help="the operator's own /metrics (0: none; default 8081)"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    kopf.configure(verbose=args.verbose, log_prefix=True)
    if not args.verbose:
        # kopf logs every successful event handler at INFO: with hundreds of pods that is most of the CPU.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings.from_env()
    metrics = AutoscalerMetrics()
    reconcile_metrics = ReconcileMetrics(metrics.registry)
    cache = ObjectCache()
    reconcile_metrics.watch_cache(cache.sizes)
    kube = Kube.from_environment(connections=settings.concurrency, observe=reconcile_metrics.observe_request)
    logging.getLogger(__name__).info(
        "worker images: %s; concurrency %d, resync every %d s",
        settings.worker_images(), settings.concurrency, settings.resync_seconds,
    )  # fmt: skip
    priority = peering_priority(args.priority, random.randrange(PRIORITY_SPREAD))  # noqa: S311
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, registry=metrics.registry)
    source: MetricsSource = (
        PrometheusSource(settings.prometheus_url)
        if settings.metrics_source == "prometheus" and settings.prometheus_url
        else ScrapeSource()
    )
    reconciler = Reconciler(
        kube,
        settings,
        autoscaler=Autoscaler(source),
        metrics=metrics,
        reconcile_metrics=reconcile_metrics,
        peering=None if args.standalone else (args.peering, priority),
        cache=cache,
    )
    try:
        kopf.run(
            registry=build_registry(),
            settings=kopf_settings(),
            clusterwide=True,
            standalone=True if args.standalone else None,
            peering_name=None if args.standalone else args.peering,
            priority=priority,
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(reconciler=reconciler),
        )
    finally:
        kube.close()


if __name__ == "__main__":
    main()
