"""Operator benchmark: 200 MultimodalDeployments applied at once to the operator running in the local cluster.

Each object is the smallest useful one (reference backend, frontend + decode, pinned to the kwok nodes with
tiny requests): 7 children each (a ConfigMap, Service and Deployment per role, and the egress NetworkPolicy),
1,400 objects in all. `kubectl --watch` streams timestamp, on this machine, when each MultimodalDeployment
is first seen (t0), when the last of its 7 children is first seen,
and when its Ready condition first reads True. Printed: p50/p99 of apply -> all children created and of
apply -> Ready, the wall time until all 200 are Ready, and the operator's CPU seconds and peak memory over
the run (the bench runner labels the output with the machine), read from /proc/1 inside the operator pod
(kopf runs as PID 1 there: the utime+stime delta, and VmHWM, the process's peak resident set, after a
restart so the peak belongs to this run).

Needs the local cluster (`hack/cluster up`); installs or upgrades the chart like `make deploy`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import HACK, REPO, _tool_dirs
from tests.e2e.operator.conftest import KWOK, KWOK_TOLERATION, OPERATOR_NS, OPERATOR_SELECTOR, SMALL
from tests.kube import Kube, wait_for

COUNT = 200
CHILDREN_PER_OBJECT = 7
DEADLINE_S = 600.0


def _kube() -> Kube:
    kubeconfig = Path(
        subprocess.run(
            [str(HACK / "cluster"), "kubeconfig"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    tools = _tool_dirs()
    return Kube(
        kubeconfig=kubeconfig, kubectl_bin=tools["kubernetes"] / "kubectl", helm_bin=tools["helm"] / "helm"
    )


def _deploy(kube: Kube) -> str:
    subprocess.run([str(HACK / "images"), "build", "operator"], check=True, capture_output=True)
    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "charts" / "triptych" / "crds"))
    install = kube.helm(
        "upgrade", "--install", "triptych", str(REPO / "charts" / "triptych"), "--namespace", OPERATOR_NS,
        "--create-namespace", "--wait", "--timeout", "180s", timeout=200,
    )  # fmt: skip
    if install.returncode != 0:
        raise RuntimeError(install.stderr)
    # A fresh process, so its peak memory is this run's.
    kube.run("-n", OPERATOR_NS, "rollout", "restart", "deployment/triptych-operator")
    kube.run(
        "-n", OPERATOR_NS, "rollout", "status", "deployment/triptych-operator", "--timeout=180s", timeout=200
    )
    pods = [
        p
        for p in kube.items("pods", OPERATOR_NS, OPERATOR_SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
    ]
    return str(pods[0]["metadata"]["name"])


def _proc(kube: Kube, pod: str) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of PID 1 in the operator pod."""
    out = kube.run("-n", OPERATOR_NS, "exec", pod, "--", "cat", "/proc/1/stat", "/proc/1/status").stdout
    stat, _, status = out.partition("\n")
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of proc(5))
    hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    return cpu, hwm


class _Watch:
    """One `kubectl get --watch` stream; `on_line(text, now)` gets each line with its arrival time."""

    def __init__(self, kube: Kube, args: list[str], on_line: Any) -> None:
        self.proc = subprocess.Popen(
            [str(kube.kubectl_bin), "--kubeconfig", str(kube.kubeconfig), "get", *args, "--watch"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._pump, args=(on_line,), daemon=True)
        self.thread.start()

    def _pump(self, on_line: Any) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            on_line(line.strip(), time.monotonic())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _object(name: str) -> dict[str, Any]:
    pin = {"nodeSelector": dict(KWOK), "tolerations": [dict(KWOK_TOLERATION)], "resources": dict(SMALL)}
    return {
        "apiVersion": "triptych.dev/v1alpha1",
        "kind": "MultimodalDeployment",
        "metadata": {"name": name},
        "spec": {
            "backend": "reference",
            "model": {"name": "triptych/tiny-qwen2-vl"},
            "networking": {"transport": "tcp"},
            "roles": {"frontend": {"replicas": 1, **pin}, "decode": {"replicas": 1, **pin}},
        },
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    kube = _kube()
    pod = _deploy(kube)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    kube.run("create", "namespace", namespace)
    seen: dict[str, float] = {}
    ready: dict[str, float] = {}
    children: dict[str, dict[str, float]] = {}
    lock = threading.Lock()

    def on_owner(line: str, now: float) -> None:
        name, _, status = line.partition(" ")
        with lock:
            seen.setdefault(name, now)
            if status == "True":
                ready.setdefault(name, now)

    def on_child(line: str, now: float) -> None:
        owner, _, child = line.partition(" ")
        with lock:
            children.setdefault(owner, {}).setdefault(child, now)

    ready_path = '{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}'
    child_path = '{.metadata.labels.triptych\\.dev/deployment} {.kind}/{.metadata.name}{"\\n"}'
    watches = [_Watch(kube, ["mmdeploy", "-n", namespace, "-o", f"jsonpath={ready_path}"], on_owner)]
    for kind in ("deployments", "services", "configmaps", "networkpolicies"):
        args = [kind, "-n", namespace, "-l", "triptych.dev/deployment", "-o", f"jsonpath={child_path}"]
        watches.append(_Watch(kube, args, on_child))
    try:
        time.sleep(2)  # let the watches start before anything exists
        cpu0, _ = _proc(kube, pod)
        started = time.monotonic()
        doc = json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [_object(f"b-{i:03d}") for i in range(COUNT)]}
        )
        kube.run("apply", "-n", namespace, "-f", "-", stdin=doc, timeout=120)
        applied = time.monotonic() - started
        wait_for(f"{COUNT} Ready", lambda: len(ready) >= COUNT or None, timeout=DEADLINE_S, interval=1)
        all_ready = time.monotonic() - started
        cpu1, peak = _proc(kube, pod)
    finally:
        for w in watches:
            w.stop()
        kube.run("delete", "namespace", namespace, "--wait=false", check=False)
    to_children = [
        max(c.values()) - seen[o] for o, c in children.items() if o in seen and len(c) >= CHILDREN_PER_OBJECT
    ]
    to_ready = [ready[o] - seen[o] for o in ready if o in seen]
    print(f"operator: in-cluster pod {pod} (kopf, 1 replica); figures from its /proc/1")
    print(
        f"{COUNT} objects applied in {applied:.1f} s (one kubectl apply); all Ready after {all_ready:.1f} s"
    )
    print(
        f"apply -> all {CHILDREN_PER_OBJECT} children created: p50 {statistics.median(to_children):.2f} s, "
        f"p99 {_pct(to_children, 0.99):.2f} s (n={len(to_children)})"
    )
    print(
        f"apply -> Ready: p50 {statistics.median(to_ready):.2f} s, p99 {_pct(to_ready, 0.99):.2f} s "
        f"(n={len(to_ready)})"
    )
    print(f"operator CPU over the run: {cpu1 - cpu0:.1f} s; peak memory (VmHWM): {peak / 2**20:.0f} MiB")
