"""``hack/cluster`` lifecycle: ``up`` on a running cluster is a no-op, ``down`` leaves no process, route,
interface or rule behind, and ``up`` after ``down`` works. Runs after every other test (it restarts the
cluster).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import HACK
from tests.integration.cluster.test_cluster import REAL_NODE_SELECTOR, echo_container
from tests.kube import Kube, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.cluster_lifecycle]


def hack(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, check=False
    )


def cluster_pids(state: Path) -> dict[int, str]:
    """PIDs the cluster's pidfiles name (ours and kwokctl's), plus containerd shims (found by our socket)."""
    pids: dict[int, str] = {}
    for pidfile in [*state.glob("run/*.pid"), *state.glob("kwok/clusters/*/pids/*.pid")]:
        pids[int(pidfile.read_text().strip())] = pidfile.stem
    socket = str(state / "run" / "containerd.sock")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if socket in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids[int(proc.name)] = "containerd-shim"
            except OSError:
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_up_when_up_is_a_noop_and_down_leaves_nothing_and_up_works_again(
    cluster: Kube, namespace: str
) -> None:
    # A Deployment on the real node, so `down` has running sandboxes to drain and a controller that would
    # recreate them as fast as they go (what forced `down` to cordon the node first).
    labels = {"app": "lifecycle-echo"}
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "lifecycle-echo"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": REAL_NODE_SELECTOR,
                        "containers": [echo_container()],
                    },
                },
            },
        },
        namespace=namespace,
    )
    cluster.run(
        "rollout", "status", "deployment/lifecycle-echo", "-n", namespace, "--timeout=120s", timeout=130
    )  # fmt: skip
    start = time.monotonic()
    again = hack("cluster", "up")
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stderr
    assert time.monotonic() - start < 30

    state = cluster.kubeconfig.parent
    pids = cluster_pids(state)
    assert {"containerd", "kubelet", "kube-proxy", "coredns", "kube-apiserver", "etcd"} <= set(pids.values())
    assert "containerd-shim" in pids.values()

    down = hack("cluster", "down")
    assert down.returncode == 0, down.stderr
    # Pods went through the API first, so the CNI plugin released their network: nothing was left for the
    # teardown to force-remove.
    assert "netns " not in down.stderr, down.stderr
    assert "veth " not in down.stderr, down.stderr
    survivors = {pid: name for pid, name in pids.items() if alive(pid)}
    assert survivors == {}, f"processes of the cluster survived down: {survivors}"
    status = hack("cluster", "status")
    assert status.returncode == 3, status.stdout
    assert "leftovers" not in status.stdout, status.stdout
    assert (
        subprocess.run(["ip", "link", "show", "triptych0"], capture_output=True, check=False).returncode != 0
    )
    routes = subprocess.run(
        ["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True, check=True
    ).stdout
    assert routes.strip() == ""
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    for prefix in ("KUBE-", "TRIPTYCH-", "CNI-"):
        assert prefix not in rules
    assert not list(Path("/var/run/netns").glob("cni-*"))

    up = hack("cluster", "up")
    assert up.returncode == 0, up.stderr
    wait_for(
        "5 nodes Ready",
        lambda: (
            len(
                [
                    n
                    for n in cluster.json("get", "nodes")["items"]
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
                ]
            )
            == 5
        ),
        timeout=60,
    )
