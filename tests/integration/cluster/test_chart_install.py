"""The Helm chart as Helm and the API server judge it: ``helm lint --strict``, ``values.schema.json`` refusing
a wrong value at install with its path named, and the PodMonitors rendered only where the Prometheus
Operator's API exists and accepted by that API's own CRD (the Prometheus Operator's published
``monitoring.coreos.com_podmonitors.yaml``, from its Go module through the module proxy; no Prometheus
Operator runs here, so nothing scrapes through them).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.kube import Kube

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "triptych"
# The Prometheus Operator module whose example/ holds its CRDs (the newest one the module proxy serves here).
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
PODMONITOR_API = "monitoring.coreos.com/v1/PodMonitor"


def _render(kube: Kube, *args: str) -> list[dict[str, Any]]:
    out = kube.helm("template", "t", str(CHART), "--namespace", "triptych-system", *args)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_helm_lint_strict_passes(cluster: Kube) -> None:
    lint = cluster.helm("lint", "--strict", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout


@pytest.mark.parametrize(
    ("setting", "path", "reason"),
    [
        (("--set", "replicas=two"), "/replicas", "got string, want integer"),
        (("--set", "autoscaler.metricsSource=kafka"), "/autoscaler/metricsSource", "must be one of"),
        (("--set", "podMonitor.interval=soon"), "/podMonitor/interval", "does not match pattern"),
        (("--set", "nats.enabled=maybe"), "/nats/enabled", "got string, want boolean"),
        (("--set", "replcas=2"), "", "additional properties 'replcas' not allowed"),
        (("--set", "reconcile.concurrency=0"), "/reconcile/concurrency", "minimum: got 0, want 1"),
    ],
    ids=["wrong-type", "not-an-option", "bad-duration", "not-a-boolean", "misspelt-key", "no-concurrency"],
)
def test_helm_install_refuses_a_wrong_value_naming_it(
    cluster: Kube, namespace: str, setting: tuple[str, str], path: str, reason: str
) -> None:
    """A real ``helm install`` against the cluster: refused by the schema before anything is created."""
    release = "schema-check"
    install = cluster.helm("install", release, str(CHART), "--namespace", namespace, *setting)
    try:
        assert install.returncode != 0, "helm installed a chart with a wrong value"
        assert "values don't meet the specifications of the schema" in install.stderr, install.stderr
        assert f"at '{path}': " in install.stderr, install.stderr
        assert reason in install.stderr, install.stderr
        assert cluster.helm("status", release, "--namespace", namespace).returncode != 0
    finally:
        if install.returncode == 0:
            cluster.helm("uninstall", release, "--namespace", namespace, "--wait")


@pytest.fixture(scope="module")
def podmonitor_crd(cluster: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The Prometheus Operator's own PodMonitor CRD in the cluster for the module's tests, removed after
    (unless it was there before). The module comes into Go's module cache (4 MB, once per machine)."""
    download = subprocess.run(
        ["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path_factory.mktemp("gomod"),  # outside any module: a plain download into the cache
    )
    assert download.returncode == 0, download.stdout + download.stderr
    crd = Path(json.loads(download.stdout)["Dir"]) / "example/prometheus-operator-crd"
    crd /= "monitoring.coreos.com_podmonitors.yaml"
    existed = cluster.run("get", "crd", "podmonitors.monitoring.coreos.com", check=False).returncode == 0
    cluster.run("apply", "--server-side", "-f", str(crd))
    cluster.run(
        "wait", "--for=condition=Established", "crd/podmonitors.monitoring.coreos.com", "--timeout=60s",
        timeout=70,
    )  # fmt: skip
    yield
    if not existed:
        cluster.run("delete", "crd", "podmonitors.monitoring.coreos.com", "--wait=true", timeout=120)


def test_podmonitors_only_where_the_api_exists(cluster: Kube) -> None:
    assert [d["kind"] for d in _render(cluster) if d["kind"] == "PodMonitor"] == []
    monitors = [d for d in _render(cluster, "--api-versions", PODMONITOR_API) if d["kind"] == "PodMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == ["t-operator", "t-workers"]
    off = _render(cluster, "--api-versions", PODMONITOR_API, "--set", "podMonitor.enabled=false")
    assert [d for d in off if d["kind"] == "PodMonitor"] == []


def test_podmonitors_select_what_the_operator_and_workers_expose(cluster: Kube) -> None:
    """The selectors and ports match the pods as the chart and the operator make them (the operator's
    labels, the ``metrics`` container port), not just any labels."""
    docs = _render(cluster, "--api-versions", PODMONITOR_API, "--set", "podMonitor.labels.release=prom")
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-operator")
    pod_labels = operator["spec"]["template"]["metadata"]["labels"]
    ops = monitors["t-operator"]["spec"]
    assert ops["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"] for c in operator["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {e["port"] for e in ops["podMetricsEndpoints"]} <= ports
    workers = monitors["t-workers"]["spec"]
    assert workers["namespaceSelector"] == {"any": True}
    assert workers["selector"]["matchLabels"] == {
        "app.kubernetes.io/part-of": "triptych",
        "app.kubernetes.io/managed-by": "triptych-operator",
    }
    assert all(m["metadata"]["labels"]["release"] == "prom" for m in monitors.values())


def test_the_api_server_accepts_the_podmonitors(cluster: Kube, namespace: str, podmonitor_crd: None) -> None:
    """Validated by the real CRD's schema (a dry run: no Prometheus Operator would act on them)."""
    docs = _render(cluster, "--api-versions", PODMONITOR_API, "--namespace", namespace)
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    for monitor in monitors:
        monitor["metadata"]["namespace"] = namespace
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": monitors})
    applied = cluster.run("apply", "--dry-run=server", "-f", "-", "-o", "json", stdin=doc)
    kinds = [item["kind"] for item in json.loads(applied.stdout)["items"]]
    assert kinds == ["PodMonitor", "PodMonitor"]
    # The schema is really applied: a field the CRD does not know is refused by the same API server.
    monitors[0]["spec"]["podMetricsEndpoints"][0]["interval"] = "soon"
    bad = cluster.run("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(monitors[0]), check=False)
    assert bad.returncode != 0, "the API server took a PodMonitor its CRD refuses"
    assert "interval" in bad.stderr, bad.stderr
