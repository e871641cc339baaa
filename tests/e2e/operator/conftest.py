"""The operator installed in the local cluster from its image by the chart: once per session, uninstalled
at the end. Helpers to rewrite examples so they land on the kwok GPU nodes."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "triptych"
OPERATOR_NS = "triptych-system"
RELEASE = "triptych"
OPERATOR_SELECTOR = "app.kubernetes.io/name=triptych-operator"
# kwok GPU nodes: pods there become Ready without running anything.
KWOK = {"type": "kwok"}
KWOK_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


@pytest.fixture(scope="session")
def operator(cluster: Kube) -> Iterator[Kube]:
    """Build the operator image, install the chart, wait until the operator pod is Ready."""
    build = subprocess.run(
        [str(REPO / "hack" / "images"), "build", "operator"],
        stdout=sys.stderr,
        stderr=sys.stderr,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail("hack/images build operator failed (its last lines are above)", pytrace=False)
    cluster.run("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    for crd in ("multimodaldeployments.triptych.dev", "clusterkopfpeerings.kopf.dev"):
        cluster.run("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", timeout=70)
    install = cluster.helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", OPERATOR_NS, "--create-namespace",
        "--wait", "--timeout", "180s", timeout=200,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    # The image tag is reused (dev): restart so the pod runs the image just built.
    cluster.run("-n", OPERATOR_NS, "rollout", "restart", "deployment/triptych-operator")
    cluster.run(
        "-n", OPERATOR_NS, "rollout", "status", "deployment/triptych-operator", "--timeout=180s", timeout=200
    )
    yield cluster
    cluster.helm("uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", "--timeout", "120s", timeout=150)


def operator_pods(kube: Kube) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.items("pods", OPERATOR_NS, OPERATOR_SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
    ]


def on_kwok(obj: dict[str, Any], namespace: str, *, cpu_roles_small: bool = False) -> dict[str, Any]:
    """`obj` in `namespace`, with the roles that would run on the real node (the frontend; every role of the
    reference backend) pinned to the kwok nodes instead: their worker images are the next issue's work."""
    out = copy.deepcopy(obj)
    out["metadata"]["namespace"] = namespace
    roles = out["spec"]["roles"]
    cpu_roles = list(roles) if out["spec"]["backend"] == "reference" else ["frontend"]
    for role in cpu_roles:
        spec = roles.setdefault(role, {})
        spec["nodeSelector"] = dict(KWOK)
        spec["tolerations"] = [dict(KWOK_TOLERATION)]
        if cpu_roles_small:
            spec["resources"] = copy.deepcopy(SMALL)
    return out


def models_volume(kube: Kube, namespace: str) -> None:
    """A bound PVC `models` (pre-bound to a hostPath PV: nothing mounts it on kwok nodes)."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-models", "labels": {"triptych.dev/test": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": "/nonexistent/models"},
            "claimRef": {"namespace": namespace, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": f"{namespace}-models",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    kube.apply(pv, pvc)
    wait_for(
        "PVC models bound",
        lambda: (kube.get("pvc", "models", namespace) or {}).get("status", {}).get("phase") == "Bound",
        timeout=60,
    )


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c  # type: ignore[no-any-return]
    return {}
