"""Session fixtures shared by every test tier.

``cluster``: the local Kubernetes cluster. It is started if it is not running and stopped afterwards only if
this session started it (so a developer's running cluster survives a test run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube import Kube

REPO = Path(__file__).resolve().parents[1]
HACK = REPO / "hack"


def restart_apiserver(*, down_s: float) -> None:
    """`hack/cluster restart-apiserver`: the API server away for ``down_s`` seconds, then back (the other
    components keep running)."""
    restart = subprocess.run(
        [str(HACK / "cluster"), "restart-apiserver", "--down-seconds", str(down_s)],
        capture_output=True,
        text=True,
        timeout=120 + down_s,
        check=False,
    )
    assert restart.returncode == 0, restart.stderr


def _tool_dirs() -> dict[str, Path]:
    out = subprocess.run([str(HACK / "build-tools")], capture_output=True, text=True, check=True).stdout
    return {name: Path(path) for name, _, path in (line.partition("=") for line in out.splitlines())}


# (marker, the variable that turns the tier on, the make target that runs it)
OPT_IN_TIERS = (
    ("keda", "TRIPTYCH_KEDA", "test-keda"),
    ("argocd", "TRIPTYCH_ARGOCD", "test-argocd"),
    ("backends", "TRIPTYCH_BACKENDS", "test-backends"),
    ("vllm", "TRIPTYCH_VLLM", "test-vllm"),
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that take the cluster down and up again run last, after everything that shares it. The KEDA
    tier (marker ``keda``) is opt-in: on a cold machine it first builds KEDA from Go modules (about 12 min on
    2 cores, on top of the cluster's own build), so it runs only with ``TRIPTYCH_KEDA=1`` (``make
    test-keda``). So is the backends tier (marker ``backends``: SGLang's own parser in a separate venv of
    about 6 GB, torch and its CUDA libraries included): ``TRIPTYCH_BACKENDS=1`` (``make test-backends``). So
    is the vLLM tier (marker ``vllm``: the vLLM image, a ~2 GB layer over the reference one, and three vLLM
    pods of ~4 GB each on the real node): ``TRIPTYCH_VLLM=1`` (``make test-vllm``). So is the Argo CD tier
    (marker ``argocd``: Argo CD built from Go modules, 790 s cold here): ``TRIPTYCH_ARGOCD=1`` (``make
    test-argocd``)."""
    items.sort(key=lambda item: item.get_closest_marker("cluster_lifecycle") is not None)
    for marker, variable, target in OPT_IN_TIERS:
        if os.environ.get(variable) != "1":
            skip = pytest.mark.skip(reason=f"opt-in {marker} tier: make {target} (or {variable}=1)")
            for item in items:
                if item.get_closest_marker(marker) is not None:
                    item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Kube]:
    status = subprocess.run([str(HACK / "cluster"), "status"], capture_output=True, text=True, check=False)
    started_here = status.returncode != 0
    if started_here:
        up = subprocess.run([str(HACK / "cluster"), "up"], stdout=sys.stderr, stderr=sys.stderr, check=False)
        if up.returncode != 0:
            pytest.fail("hack/cluster up failed (its last lines are above)", pytrace=False)
    images = subprocess.run(
        [str(HACK / "images"), "build", "echo"], stdout=sys.stderr, stderr=sys.stderr, check=False
    )
    if images.returncode != 0:
        pytest.fail("hack/images build echo failed (its last lines are above)", pytrace=False)
    kubeconfig = Path(
        subprocess.run(
            [str(HACK / "cluster"), "kubeconfig"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    tools = _tool_dirs()
    kube = Kube(
        kubeconfig=kubeconfig, kubectl_bin=tools["kubernetes"] / "kubectl", helm_bin=tools["helm"] / "helm"
    )
    os.environ["KUBECONFIG"] = str(kubeconfig)
    yield kube
    if started_here and os.environ.get("TRIPTYCH_KEEP_CLUSTER") != "1":
        subprocess.run([str(HACK / "cluster"), "down"], stdout=sys.stderr, stderr=sys.stderr, check=False)


@pytest.fixture
def namespace(cluster: Kube) -> Iterator[str]:
    """One namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.run("create", "namespace", name)
    cluster.run("label", "namespace", name, "triptych.dev/test=true")
    yield name
    cluster.run("delete", "namespace", name, "--wait=false", check=False)
