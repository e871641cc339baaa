"""The opt-in KEDA tier (``make test-keda``; marker ``keda``, skipped unless ``TRIPTYCH_KEDA=1``): a real KEDA
(``hack/keda``: its operator and metrics API server, built from its Go modules) drives a role of a
MultimodalDeployment through the role's MultimodalRole /scale, from a ScaledObject with a ``prometheus``
trigger.

The chain under test: a gauge this test sets -> Debian's Prometheus scraping it -> KEDA's operator querying
Prometheus -> KEDA's metrics server (external.metrics.k8s.io, through the API server's aggregation layer) ->
the HorizontalPodAutoscaler KEDA made (kube-controller-manager's) -> the MultimodalRole's /scale -> the
operator -> the role's Deployment. The role's pods are vLLM's, on kwok's fake GPU nodes: nothing connects to
them, and no metric is read from them (the gauge stands in for a load signal; what is proven is the path).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.conftest import externally_scaled, tier_up
from tests.kube import Kube, wait_for
from tests.prometheus import running_prometheus

# The first run of `hack/keda up` may build KEDA (make test-keda builds it before pytest starts).
pytestmark = [pytest.mark.keda, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

GAUGE = "triptych_keda_test_demand"
POLLING_INTERVAL = 5  # the ScaledObject's: how often KEDA's operator queries Prometheus


@pytest.fixture(scope="module")
def keda(operator: Kube) -> Iterator[Kube]:
    """KEDA on the cluster (``hack/keda up``, a no-op when it is up); stopped afterwards if started here."""
    with tier_up("keda", up_timeout=1500):
        yield operator


class Gauge:
    """A Prometheus text exposition of one gauge on a loopback port, whose value the test sets."""

    def __init__(self, value: float) -> None:
        self.value = value
        gauge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"# TYPE {GAUGE} gauge\n{GAUGE} {gauge.value}\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Gauge:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def prometheus(target: str) -> Iterator[str]:
    """Debian's Prometheus scraping ``target`` every second (a static target)."""
    with running_prometheus([{"job_name": "gauge", "static_configs": [{"targets": [target]}]}]) as url:
        yield url


def _query(url: str, promql: str) -> float | None:
    got = _get_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    result = got["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _quantity(value: str) -> float:
    """A Kubernetes quantity as KEDA writes a metric's value ("3", or "2500m")."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _replicas(kube: Kube, namespace: str, name: str) -> int | None:
    obj = kube.get("deployment", name, namespace)
    return None if obj is None else int(obj["spec"]["replicas"])


def _ready(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The ScaledObject's Ready condition once it is True."""
    obj = kube.get("scaledobject", name, namespace) or {}
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready" and c["status"] == "True":
            return dict(c)
    return None


def _scaled_object(namespace: str, target: dict[str, str], prometheus_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "decode", "namespace": namespace},
        "spec": {
            "scaleTargetRef": target,
            "pollingInterval": POLLING_INTERVAL,
            "minReplicaCount": 1,
            "maxReplicaCount": 4,
            # Down as soon as the value says so (the HPA's default waits 300 s).
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}
                }
            },
            "triggers": [{
                "type": "prometheus",
                # The HPA's target per replica is 1 (AverageValue), so replicas = the gauge's value.
                "metadata": {"serverAddress": prometheus_url, "query": f"max({GAUGE})", "threshold": "1"},
            }],
        },
    }  # fmt: skip


def test_keda_scales_a_role_through_its_scale_subresource_from_a_prometheus_trigger(
    keda: Kube, namespace: str
) -> None:
    name = "keda-driven"
    keda.apply(externally_scaled(name, namespace))
    role, deployment = f"{name}-decode", f"{name}-decode"
    target = {"apiVersion": "triptych.dev/v1alpha1", "kind": "MultimodalRole", "name": role}
    wait_for(
        "the MultimodalRole's /scale with a selector",
        lambda: ((keda.get("mmrole", role, namespace) or {}).get("status") or {}).get("selector"),
        timeout=60,
        interval=1,
    )
    wait_for("the role's Deployment", lambda: _replicas(keda, namespace, deployment) == 1, timeout=60)
    with Gauge(3) as gauge, prometheus(gauge.address) as prom:
        wait_for("Prometheus to scrape the gauge", lambda: _query(prom, f"max({GAUGE})") == 3, timeout=30)
        keda.apply(_scaled_object(namespace, target, prom))
        try:
            ready = wait_for(
                "the ScaledObject Ready", lambda: _ready(keda, namespace, "decode"), timeout=60, interval=1
            )
            print("ScaledObject Ready:", ready.get("message"))
            # The HPA KEDA made, on the same /scale.
            hpa = keda.get("hpa", "keda-hpa-decode", namespace)
            assert hpa is not None, "KEDA made no HorizontalPodAutoscaler"
            assert hpa["spec"]["scaleTargetRef"]["kind"] == "MultimodalRole"
            assert hpa["spec"]["scaleTargetRef"]["name"] == role
            assert [m["type"] for m in hpa["spec"]["metrics"]] == ["External"]

            # The value through the aggregation layer, as the HPA reads it.
            metric = hpa["spec"]["metrics"][0]["external"]["metric"]
            selector = ",".join(f"{k}={v}" for k, v in metric["selector"]["matchLabels"].items())
            raw = (
                f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric['name']}"
                f"?labelSelector={urllib.parse.quote(selector)}"
            )

            # Read until it is 3: right after the ScaledObject turns Ready, KEDA may not have asked
            # Prometheus yet and serves 0 (seen once in two runs here).
            def external_metric() -> list[float] | None:
                values = json.loads(keda.run("get", "--raw", raw).stdout)["items"]
                print("external metric:", values)
                found = [_quantity(v["value"]) for v in values]
                return found if found == [3.0] else None

            wait_for("the external metric at 3", external_metric, timeout=3 * POLLING_INTERVAL, interval=1)

            # 3 -> three replicas, through the HPA and the MultimodalRole's /scale.
            wait_for(
                "the Deployment at 3 replicas",
                lambda: _replicas(keda, namespace, deployment) == 3,
                timeout=120,
                interval=1,
            )
            assert (keda.get("mmrole", role, namespace) or {})["spec"]["replicas"] == 3
            status = (keda.get("mmdeploy", name, namespace) or {}).get("status") or {}
            assert status["roles"]["decode"]["scaler"] == "External"

            # 1 -> back to one replica.
            gauge.value = 1
            wait_for(
                "the Deployment back at 1 replica",
                lambda: _replicas(keda, namespace, deployment) == 1,
                timeout=120,
                interval=1,
            )
            assert (keda.get("mmrole", role, namespace) or {})["spec"]["replicas"] == 1
        finally:
            # KEDA's finalizer goes with KEDA's help: delete the ScaledObject while KEDA runs.
            keda.run("delete", "scaledobject", "decode", "-n", namespace, "--wait=true", "--timeout=60s",
                     check=False, timeout=90)  # fmt: skip
    keda.run("delete", "mmdeploy", name, "-n", namespace, "--wait=true", "--timeout=60s", check=False)
