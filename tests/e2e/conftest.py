"""The operator installed in the local cluster from its image by the chart (with the cluster's NATS): once
per session, shared by the operator's e2e tests and the pipeline's, uninstalled at the end."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "triptych"
OPERATOR_NS = "triptych-system"
RELEASE = "triptych"
OPERATOR_SELECTOR = "app.kubernetes.io/name=triptych-operator"


def build_images(*names: str) -> None:
    """`hack/images build NAMES` (cached by content); fails the test with a pointer to the build's output."""
    build = subprocess.run(
        [str(REPO / "hack" / "images"), "build", *names], stdout=sys.stderr, stderr=sys.stderr, check=False
    )
    if build.returncode != 0:
        pytest.fail(f"hack/images build {' '.join(names)} failed (its last lines are above)", pytrace=False)


@pytest.fixture(scope="session")
def operator(cluster: Kube) -> Iterator[Kube]:
    """Build the operator and NATS images, install the chart, wait until the operator pod is Ready.
    Uninstalled afterwards only if this session installed it (a developer's `make demo` keeps running)."""
    build_images("operator", "nats")
    installed_before = cluster.helm("status", RELEASE, "--namespace", OPERATOR_NS).returncode == 0
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
    if not installed_before:
        cluster.helm(
            "uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait", "--timeout", "120s", timeout=150
        )


@contextlib.contextmanager
def tier_up(tool: str, *, up_timeout: float, down_timeout: float = 180) -> Iterator[None]:
    """An opt-in tier's host processes (``hack/keda``, ``hack/argocd``) up for the duration: ``up`` is a
    no-op when they are up already, and ``down`` afterwards happens only if this started them."""

    def hack(command: str, timeout: float) -> int:
        return subprocess.run(
            [str(REPO / "hack" / tool), command], stdout=sys.stderr, stderr=sys.stderr, timeout=timeout,
            check=False,
        ).returncode  # fmt: skip

    started_here = hack("status", timeout=60) != 0
    if hack("up", timeout=up_timeout) != 0:
        pytest.fail(f"hack/{tool} up failed (its last lines are above)", pytrace=False)
    try:
        yield
    finally:
        if started_here:
            hack("down", timeout=down_timeout)


def externally_scaled(name: str, namespace: str) -> dict[str, Any]:
    """A MultimodalDeployment whose decode role's replicas its MultimodalRole's /scale sets (autoscaling
    scaler External): vLLM, so its pods land on kwok's fake GPU nodes and nothing connects to them."""
    return {
        "apiVersion": "triptych.dev/v1alpha1",
        "kind": "MultimodalDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backend": "vllm",
            "model": {"name": "Qwen/Qwen2.5-VL-7B-Instruct"},
            "roles": {"decode": {"replicas": 1, "autoscaling": {"enabled": True, "scaler": "External"}}},
        },
    }
