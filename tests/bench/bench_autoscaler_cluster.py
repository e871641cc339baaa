"""The autoscaler's evaluation latency in the operator running in the local cluster, with 1 and then 50 live
autoscaled MultimodalDeployments side by side.

Each object is bench_operator's smallest one (reference backend, frontend + decode pinned to the kwok nodes,
tiny requests) with decode autoscaled (inFlight 4 per replica, 1..2 replicas, evaluated every 5 s). Its pods
are kwok's, so the autoscaler reads no metrics from them (it never connects to a fake IP): what is measured is
the evaluation loop's own cost -- reading the MultimodalDeployment, its Deployments, ReplicaSets, pods and
nodes, deciding, writing status when it changed -- which is what grows with the number of objects. Figures
come from the operator's own histogram (`triptych_operator_autoscaler_evaluation_seconds`, read through the
API server's pod proxy) over a 60 s steady window after every object is Ready: evaluations done vs due, the
mean, and p50/p99 as bucket upper bounds.

Needs the local cluster (`hack/cluster up`); installs or upgrades the chart like `make deploy`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.bench.bench_operator import _deploy, _kube, _object
from tests.e2e.operator.conftest import OPERATOR_NS
from tests.kube import Kube, wait_for

HISTOGRAM = "triptych_operator_autoscaler_evaluation_seconds"
INTERVAL_S = 5
WINDOW_S = 60.0
COUNTS = (1, 50)


def _autoscaled(name: str) -> dict[str, Any]:
    obj = _object(name)
    obj["spec"]["roles"]["decode"]["autoscaling"] = {
        "enabled": True, "minReplicas": 1, "maxReplicas": 2, "targets": {"inFlight": 4},
    }  # fmt: skip
    obj["spec"]["autoscaling"] = {"evaluationIntervalSeconds": INTERVAL_S}
    return obj


def _histogram(kube: Kube, pod: str) -> tuple[dict[float, float], float, float]:
    """(cumulative bucket counts by upper bound, sum, count) of the evaluation histogram."""
    text = kube.run("get", "--raw", f"/api/v1/namespaces/{OPERATOR_NS}/pods/{pod}:8081/proxy/metrics").stdout
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{HISTOGRAM}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{HISTOGRAM}_sum":
                total = sample.value
            elif sample.name == f"{HISTOGRAM}_count":
                count = sample.value
    return buckets, total, count


def _quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound holding at least q of the window's evaluations."""
    bounds = sorted(after)
    n = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= q * n:
            return bound
    return float("inf")


def _phase(kube: Kube, pod: str, count: int) -> dict[str, float]:
    namespace = f"bench-as-{uuid.uuid4().hex[:8]}"
    kube.run("create", "namespace", namespace)
    try:
        doc = json.dumps({"apiVersion": "v1", "kind": "List",
                          "items": [_autoscaled(f"a-{i:03d}") for i in range(count)]})  # fmt: skip
        kube.run("apply", "-n", namespace, "-f", "-", stdin=doc, timeout=120)

        def all_ready() -> bool:
            items = kube.items("mmdeploy", namespace)
            ready = [
                o for o in items
                if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (o.get("status") or {}).get("conditions") or [])
            ]  # fmt: skip
            return len(ready) == count

        wait_for(f"{count} Ready", all_ready, timeout=600, interval=2)
        time.sleep(2 * INTERVAL_S)  # every object tracked and evaluated at least once
        before, sum0, n0 = _histogram(kube, pod)
        time.sleep(WINDOW_S)
        after, sum1, n1 = _histogram(kube, pod)
    finally:
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)
    done = n1 - n0
    return {
        "done": done,
        "due": count * WINDOW_S / INTERVAL_S,
        "mean_ms": 1000 * (sum1 - sum0) / done if done else float("nan"),
        "p50_ms": 1000 * _quantile(before, after, 0.5),
        "p99_ms": 1000 * _quantile(before, after, 0.99),
    }


def main() -> None:
    kube = _kube()
    pod = _deploy(kube)
    results = {count: _phase(kube, pod, count) for count in COUNTS}
    print(f"operator: in-cluster pod {pod}; evaluation every {INTERVAL_S} s; {WINDOW_S:.0f} s steady window; "
          "kwok pods (no metrics read: the loop's own cost)")  # fmt: skip
    one, many = results[COUNTS[0]], results[COUNTS[1]]
    print(f"{'':32}{COUNTS[0]:>10}{COUNTS[1]:>10}  ratio")
    for key, label in (("done", "evaluations done"), ("due", "evaluations due"),
                       ("mean_ms", "latency mean (ms)"), ("p50_ms", "latency p50 <= (ms)"),
                       ("p99_ms", "latency p99 <= (ms)")):  # fmt: skip
        ratio = many[key] / one[key] if one[key] else float("nan")
        print(f"{label:32}{one[key]:>10.1f}{many[key]:>10.1f}  {ratio:.2f}")


if __name__ == "__main__":
    main()
