"""Operator benchmark: the operator running in the local cluster, against the API server's own floor.

Each object is the smallest useful one (reference backend, frontend + decode, pinned to the kwok nodes with
tiny requests): 7 children each (a ConfigMap, Service and Deployment per role, and the egress NetworkPolicy).
Printed, one block per phase:

- floor: the children the operator would create for BURST objects, rendered here by its own builders
  (`triptych_operator.plan.plan_children` with the settings the installed operator reads from its env) and
  applied directly in one `kubectl apply --server-side` into a fresh namespace, without owner references
  (no owner exists); the time until that command returns and until a watch has seen every child;
- burst: BURST MultimodalDeployments applied at once (one client-side `kubectl apply`): apply -> all
  children created p50/p99 and the wall time until every child of every object exists (/ the floor's),
  apply -> Ready p50/p99 and the wall time until all are Ready;
- steady (with those objects live and Ready): STEADY new objects applied one at a time (each waited for: its
  children exist and status.observedGeneration == metadata.generation) and STEADY edits of existing ones (the
  decode role's replicas 1 <-> 2, which changes exactly that role's Deployment): apply -> children created or
  updated (the Deployment's metadata.generation moved) and apply -> status.observedGeneration, p50/p99;
- live: grown to LIVE objects (in batches), their children and Ready waited for, the operator's memory, and
  the steady phase again (STEADY_LIVE of each);
- per phase, the operator's CPU seconds (utime+stime of /proc/1 in its pod, where kopf runs as PID 1) and
  memory (VmRSS, VmHWM: the peak since the restart `_deploy` does), per 100 objects; and, where the operator
  exposes them on its /metrics (port 8081, read through the API server's pod proxy), deltas of its API
  request, reconcile, skipped-apply and status-write counters and reconcile wait/work histograms.

"apply ->" times start when a watch (`kubectl get --watch`, timestamped on this machine) first sees the
object at its new generation; children are seen by watches of their kinds in the namespace.

Scale (environment): TRIPTYCH_BENCH_OPERATOR_BURST (200), _STEADY (50), _LIVE (1000; 0 skips the live
phase), _STEADY_LIVE (= _STEADY), _IDLE_S (15: a quiet window before each steady phase, CPU and reconciles
in it). Every wait has a deadline; a phase that misses one prints what it saw and says so. The 4 kwok GPU
nodes hold 440 pods (each object has 2): when the run needs more, fake nodes `bench-kwok-<i>` like
hack/lib/localcluster/configs.py's gpu_node are added for it and deleted at the end.

Needs the local cluster (`hack/cluster up`); installs or upgrades the chart like `make deploy`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import HACK, REPO, _tool_dirs
from tests.e2e.operator.conftest import KWOK, KWOK_TOLERATION, OPERATOR_NS, OPERATOR_SELECTOR, SMALL
from tests.kube import Kube


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(f"TRIPTYCH_BENCH_OPERATOR_{name}", "")
    return int(value) if value.strip() else default


BURST = _env_int("BURST", 200)
STEADY = _env_int("STEADY", 50)
LIVE = _env_int("LIVE", 1000)
STEADY_LIVE = _env_int("STEADY_LIVE", STEADY)
IDLE_S = float(_env_int("IDLE_S", 15))
CHILDREN_PER_OBJECT = 7  # replaced by what the builders render for one object, when they can
BATCH = 100  # objects per kubectl apply while growing to LIVE
OP_DEADLINE_S = 60.0  # one steady apply or edit
STEADY_BUDGET_S = 900.0  # one steady phase, all its operations
GOAL_STEADY_P99_S = 2.0
GOAL_BURST_RATIO = 1.5
GOAL_MEMORY_RATIO = 1.25  # per-object memory at LIVE over that at BURST: "flat"
KWOK_NODE_PODS = 110
CHILD_KINDS = ("deployments", "services", "configmaps", "networkpolicies")
NO_METRICS = "n/a (operator exposes no such metrics)"


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


def _object(name: str, decode_replicas: int = 1) -> dict[str, Any]:
    pin = {"nodeSelector": dict(KWOK), "tolerations": [dict(KWOK_TOLERATION)], "resources": dict(SMALL)}
    return {
        "apiVersion": "triptych.dev/v1alpha1",
        "kind": "MultimodalDeployment",
        "metadata": {"name": name},
        "spec": {
            "backend": "reference",
            "model": {"name": "triptych/tiny-qwen2-vl"},
            "networking": {"transport": "tcp"},
            "roles": {"frontend": {"replicas": 1, **pin}, "decode": {"replicas": decode_replicas, **pin}},
        },
    }


def _doc(items: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _until(deadline: float, probe: Callable[[], bool], interval: float = 0.05) -> bool:
    """Poll `probe` until it holds (True) or `deadline` (monotonic) passes (False)."""
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ------------------------------------------------------------------------------------- operator's figures


@dataclass(frozen=True)
class _Snap:
    """The operator at one moment: CPU seconds, VmRSS and VmHWM bytes of its PID 1, its /metrics samples."""

    at: float
    cpu: float
    rss: int
    hwm: int
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] | None


def _proc(kube: Kube, pod: str) -> tuple[float, int, int]:
    """(CPU seconds, resident bytes now, peak resident bytes) of PID 1 in the operator pod."""
    out = kube.run("-n", OPERATOR_NS, "exec", pod, "--", "cat", "/proc/1/stat", "/proc/1/status").stdout
    stat, _, status = out.partition("\n")
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of proc(5))
    memory = {
        line.split(":")[0]: int(line.split()[1]) * 1024
        for line in status.splitlines()
        if line.startswith(("VmRSS:", "VmHWM:"))
    }
    return cpu, memory["VmRSS"], memory["VmHWM"]


def _metrics(kube: Kube, pod: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    proc = kube.run(
        "get", "--raw", f"/api/v1/namespaces/{OPERATOR_NS}/pods/{pod}:8081/proxy/metrics", check=False
    )
    if proc.returncode != 0:
        return None
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(proc.stdout):
        if family.name.startswith("triptych_operator_"):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _snap(kube: Kube, pod: str) -> _Snap:
    cpu, rss, hwm = _proc(kube, pod)
    return _Snap(time.monotonic(), cpu, rss, hwm, _metrics(kube, pod))


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _by(
    before: _Snap, after: _Snap, sample: str, keys: tuple[str, ...]
) -> dict[tuple[str, ...], float] | None:
    """Deltas of one sample (a counter's `_total`, a histogram's `_sum`/`_count`) summed by `keys` labels;
    None when the operator does not expose it."""
    if after.metrics is None or not any(name == sample for name, _ in after.metrics):
        return None
    old = before.metrics or {}
    out: dict[tuple[str, ...], float] = {}
    for (name, labels), value in after.metrics.items():
        if name == sample:
            group = tuple(dict(labels).get(k, "") for k in keys)
            out[group] = out.get(group, 0.0) + value - old.get((name, labels), 0.0)
    return out


def _metric_lines(before: _Snap, after: _Snap, per: int, unit: str) -> list[str]:
    """The operator's own counters over a phase, per `unit` (`per` of them in the phase)."""
    per = max(per, 1)
    requests = _by(before, after, "triptych_operator_api_requests_total", ("operation", "resource"))
    reconciles = _by(before, after, "triptych_operator_reconciles_total", ("path",))
    skipped = _by(before, after, "triptych_operator_applies_skipped_total", ())
    writes = _by(before, after, "triptych_operator_status_writes_total", ())
    if requests is None:
        lines = [f"API requests per {unit} by operation/resource: {NO_METRICS}"]
    else:
        parts = [f"{op} {res} {n / per:.2f}" for (op, res), n in sorted(requests.items()) if n]
        total = sum(requests.values()) / per
        lines = [f"API requests per {unit} ({total:.1f} in all): {', '.join(parts) or 'none'}"]
    if reconciles is None:
        lines.append(f"reconciles per {unit} by path: {NO_METRICS}")
    else:
        parts = []
        for (path,), n in sorted(reconciles.items()):
            text = f"{path} {n / per:.2f}"
            extra = []
            for metric, what in (("reconcile_wait_seconds", "wait"), ("reconcile_seconds", "work")):
                sums = _by(before, after, f"triptych_operator_{metric}_sum", ("path",)) or {}
                counts = _by(before, after, f"triptych_operator_{metric}_count", ("path",)) or {}
                count = counts.get((path,), 0.0)
                if count:
                    extra.append(f"{what} {1000 * sums.get((path,), 0.0) / count:.0f} ms")
            parts.append(text + (f" (mean {', '.join(extra)})" if extra else ""))
        lines.append(f"reconciles per {unit} by path: {'; '.join(parts) or 'none'}")
    lines.append(
        f"applies skipped per {unit}: "
        + (NO_METRICS if skipped is None else f"{sum(skipped.values()) / per:.2f}")
        + f"; status writes per {unit}: "
        + (NO_METRICS if writes is None else f"{sum(writes.values()) / per:.2f}")
    )
    return lines


def _cpu_line(before: _Snap, after: _Snap, objects: int, unit: str = "objects") -> str:
    cpu = after.cpu - before.cpu
    return (
        f"operator CPU {cpu:.1f} s = {100 * cpu / max(objects, 1):.2f} s per 100 {unit}; "
        f"VmRSS {_mib(after.rss)}, VmHWM {_mib(after.hwm)}"
    )


# ---------------------------------------------------------------------------------------------- watching


class _Watch:
    """One `kubectl get --watch` stream (restarted if it ends early); `on_line(text, now)` gets each line
    with its arrival time."""

    def __init__(self, kube: Kube, args: list[str], on_line: Callable[[str, float], None]) -> None:
        self.command = [str(kube.kubectl_bin), "--kubeconfig", str(kube.kubeconfig), "get", *args, "--watch"]
        self.on_line = on_line
        self.stopping = threading.Event()
        self.proc = self._start()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def _pump(self) -> None:
        while True:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.on_line(line.strip(), time.monotonic())
            self.proc.wait()
            if self.stopping.wait(1.0):  # the API server closes a watch after 30-60 min: watch again
                return
            self.proc = self._start()

    def stop(self) -> None:
        self.stopping.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.thread.join(timeout=10)


@dataclass
class _Owner:
    first: float
    gens: dict[int, float] = field(default_factory=dict)  # metadata.generation -> first seen
    observed: dict[int, float] = field(default_factory=dict)  # status.observedGeneration -> first seen
    ready: float | None = None


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


class _Tracker:
    """What the watches of one namespace saw, with first-seen times."""

    OWNER_PATH = (
        "{.metadata.name}|{.metadata.generation}|{.status.observedGeneration}|"
        '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}'
    )
    CHILD_PATH = (
        "{.metadata.labels.triptych\\.dev/deployment}|{.kind}/{.metadata.name}|{.metadata.generation}|"
        '{.metadata.labels.triptych\\.dev/role}{"\\n"}'
    )

    def __init__(self, kube: Kube, namespace: str, *, owners: bool) -> None:
        self.lock = threading.Lock()
        self.owners: dict[str, _Owner] = {}
        self.children: dict[str, dict[str, float]] = {}  # owner -> "Kind/name" -> first seen
        self.child_gens: dict[str, dict[int, float]] = {}  # "Kind/name" -> generation -> first seen
        self.roles: dict[str, str] = {}  # "Kind/name" -> role label
        self.watches: list[_Watch] = []
        if owners:
            args = ["mmdeploy", "-n", namespace, "-o", f"jsonpath={self.OWNER_PATH}"]
            self.watches.append(_Watch(kube, args, self._on_owner))
        for kind in CHILD_KINDS:
            args = [
                kind,
                "-n",
                namespace,
                "-l",
                "triptych.dev/deployment",
                "-o",
                f"jsonpath={self.CHILD_PATH}",
            ]
            self.watches.append(_Watch(kube, args, self._on_child))

    def _on_owner(self, line: str, now: float) -> None:
        parts = line.split("|")
        if len(parts) != 4 or not parts[0]:
            return
        name, gen, observed, ready = parts
        with self.lock:
            owner = self.owners.setdefault(name, _Owner(now))
            if (g := _int(gen)) is not None:
                owner.gens.setdefault(g, now)
            if (o := _int(observed)) is not None:
                owner.observed.setdefault(o, now)
            if ready == "True" and owner.ready is None:
                owner.ready = now

    def _on_child(self, line: str, now: float) -> None:
        parts = line.split("|")
        if len(parts) != 4 or not parts[0]:
            return
        owner, child, gen, role = parts
        with self.lock:
            self.children.setdefault(owner, {}).setdefault(child, now)
            if (g := _int(gen)) is not None:
                self.child_gens.setdefault(child, {}).setdefault(g, now)
            self.roles[child] = role

    def stop(self) -> None:
        for w in self.watches:
            w.stop()

    def count(self) -> int:
        with self.lock:
            return sum(len(c) for c in self.children.values())

    def times(self) -> list[float]:
        with self.lock:
            return [t for c in self.children.values() for t in c.values()]

    # --- queries (take the lock)

    def children_done(self, name: str, per_object: int) -> float | None:
        """When the last of `name`'s children was first seen, once all `per_object` have been."""
        with self.lock:
            seen = self.children.get(name, {})
            return max(seen.values()) if len(seen) >= per_object else None

    def generation_seen(self, name: str, generation: int) -> float | None:
        with self.lock:
            owner = self.owners.get(name)
            return None if owner is None else owner.gens.get(generation)

    def observed_at(self, name: str, generation: int) -> float | None:
        """When status.observedGeneration first read `generation` or later."""
        with self.lock:
            owner = self.owners.get(name)
            times = [t for g, t in (owner.observed if owner else {}).items() if g >= generation]
            return min(times) if times else None

    def ready_at(self, name: str) -> float | None:
        with self.lock:
            owner = self.owners.get(name)
            return None if owner is None else owner.ready

    def first_seen(self, name: str) -> float | None:
        with self.lock:
            owner = self.owners.get(name)
            return None if owner is None else owner.first

    def deployment(self, name: str, role: str) -> str | None:
        with self.lock:
            for child in self.children.get(name, {}):
                if child.startswith("Deployment/") and self.roles.get(child) == role:
                    return child
        return None

    def child_generation_after(self, child: str, generation: int) -> float | None:
        """When `child` was first seen at a generation later than `generation`."""
        with self.lock:
            times = [t for g, t in self.child_gens.get(child, {}).items() if g > generation]
            return min(times) if times else None

    def child_generation(self, child: str) -> int:
        with self.lock:
            return max(self.child_gens.get(child, {0: 0.0}))


# ------------------------------------------------------------------------------------------------ floor


def _floor_children(kube: Kube, names: Iterable[str], namespace: str) -> list[dict[str, Any]]:
    """The children the operator would create for `names` in `namespace`, from its own (pure) builders with
    the settings the installed operator reads from its Deployment's env; owner references removed (no owner
    exists)."""
    from triptych_operator.api import parse_resource
    from triptych_operator.cluster import NodeFacts
    from triptych_operator.naming import Owner
    from triptych_operator.plan import plan_children
    from triptych_operator.settings import OperatorSettings

    operator = kube.json("get", "deployment", "triptych-operator", "-n", OPERATOR_NS)
    containers = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for c in containers for e in c.get("env") or [] if "value" in e}
    try:
        settings = OperatorSettings.from_env(env)
    except ValueError:
        settings = OperatorSettings()
    facts = NodeFacts(frozenset(), frozenset())  # transport tcp: no node fact changes these children
    out: list[dict[str, Any]] = []
    for name in names:
        obj = _object(name)
        spec = parse_resource(obj)
        plan = plan_children(Owner(name, namespace, str(uuid.uuid4())), spec, settings, facts)
        for desired in plan.desired:
            child = json.loads(json.dumps(desired))
            child["metadata"].pop("ownerReferences", None)
            out.append(child)
    return out


def _delete_namespace(kube: Kube, namespace: str, deadline_s: float) -> str:
    started = time.monotonic()
    kube.run("delete", "namespace", namespace, "--wait=false", check=False)
    gone = _until(
        started + deadline_s,
        lambda: kube.run("get", "namespace", namespace, check=False).returncode != 0,
        interval=1.0,
    )
    took = time.monotonic() - started
    return (
        f"namespace {namespace} deleted in {took:.1f} s"
        if gone
        else (f"namespace {namespace} still terminating after {took:.0f} s (deadline missed; left to finish)")
    )


# ------------------------------------------------------------------------------------------------ nodes


def _bench_node(index: int) -> dict[str, Any]:
    """A fake GPU node for kwok: the local cluster's own (hack/lib/localcluster/configs.py's gpu_node),
    renamed `bench-kwok-<index>` and labelled as the bench's (so the rest of the cluster is told apart)."""
    if str(HACK / "lib") not in sys.path:  # hack/lib is not an installed package (as tests/unit/hack does)
        sys.path.insert(0, str(HACK / "lib"))
    from localcluster.configs import gpu_node

    node: dict[str, Any] = json.loads(json.dumps(gpu_node(index)))
    name = f"bench-kwok-{index}"
    labels = node["metadata"]["labels"]
    labels.update({"kubernetes.io/hostname": name, "triptych.dev/bench": "true"})
    labels["triptych.dev/rack"] = f"rack-bench-{index // 2}"
    node["metadata"]["name"] = name
    node["status"]["nodeInfo"].update(machineID=name, systemUUID=name, bootID=name)
    for quantities in (node["status"]["allocatable"], node["status"]["capacity"]):
        quantities["pods"] = str(KWOK_NODE_PODS)
    return node


def _ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _kwok_capacity(kube: Kube) -> tuple[int, int, int]:
    """(Ready kwok nodes, their pods capacity, pods bound to them and not finished)."""
    nodes = [n for n in kube.json("get", "nodes", "-l", "type=kwok")["items"] if _ready(n)]
    names = {n["metadata"]["name"] for n in nodes}
    capacity = sum(int((n["status"].get("allocatable") or {}).get("pods", "0")) for n in nodes)
    pods = kube.json("get", "pods", "-A")["items"]
    used = sum(
        1
        for p in pods
        if p["spec"].get("nodeName") in names and p["status"].get("phase") not in ("Succeeded", "Failed")
    )
    return len(nodes), capacity, used


def _add_nodes(kube: Kube, pods_needed: int) -> tuple[list[str], str]:
    """Fake kwok nodes so `pods_needed` more pods fit (10 % spare); their names and a line saying so."""
    count, capacity, used = _kwok_capacity(kube)
    missing = math.ceil(1.1 * pods_needed) - (capacity - used)
    base = f"{count} kwok GPU nodes, {capacity} pods capacity, {used} in use; this run needs {pods_needed}"
    if missing <= 0:
        return [], base
    nodes = [_bench_node(i) for i in range(math.ceil(missing / KWOK_NODE_PODS))]
    names = [n["metadata"]["name"] for n in nodes]
    started = time.monotonic()
    kube.run("apply", "--server-side", "--field-manager", "triptych-bench", "-f", "-", stdin=_doc(nodes))

    def all_ready() -> bool:
        listed = kube.json("get", "nodes", "-l", "triptych.dev/bench=true")["items"]
        return sum(1 for n in listed if n["metadata"]["name"] in names and _ready(n)) == len(names)

    if not _until(started + 120, all_ready, interval=1.0):
        kube.run("delete", "node", *names, "--wait=false", check=False, timeout=120)
        raise RuntimeError(f"kwok did not make {names} Ready within 120 s")
    took = time.monotonic() - started
    return names, f"{base}: added {len(names)} fake nodes bench-kwok-* (kwok: Ready in {took:.1f} s)"


# ------------------------------------------------------------------------------------------------ phases


def _stats(values: list[float]) -> str:
    if not values:
        return "p50    -    p99    -    max    -"
    return (
        f"p50 {statistics.median(values):6.2f} s  p99 {_pct(values, 0.99):6.2f} s  max {max(values):6.2f} s"
    )


@dataclass
class _Run:
    kube: Kube
    pod: str
    namespace: str
    tracker: _Tracker
    per_object: int
    decode: dict[str, int] = field(default_factory=dict)  # object -> decode replicas, as last applied
    edit_cursor: int = 0
    p99s: list[tuple[str, float]] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def apply(self, objects: list[dict[str, Any]], timeout: float = 300) -> float:
        started = time.monotonic()
        self.kube.run("apply", "-n", self.namespace, "-f", "-", stdin=_doc(objects), timeout=timeout)
        for obj in objects:
            self.decode[obj["metadata"]["name"]] = obj["spec"]["roles"]["decode"]["replicas"]
        return time.monotonic() - started

    def wait_all(
        self, names: list[str], started: float, deadline_s: float, *, ready: bool
    ) -> tuple[bool, float]:
        """Until every one of `names` has all children (and is Ready); (in time?, when the last one was)."""

        def done(name: str) -> float | None:
            children = self.tracker.children_done(name, self.per_object)
            if not ready or children is None:
                return children
            return self.tracker.ready_at(name)

        ok = _until(started + deadline_s, lambda: all(done(n) is not None for n in names), interval=0.5)
        times = [t for n in names if (t := done(n)) is not None]
        return ok, (max(times) - started if times else float("nan"))

    def one_new(self, name: str) -> tuple[float | None, float | None]:
        """Apply one new object; (apply -> its children, apply -> observedGeneration), None when missed."""
        sent = time.monotonic()
        out = self.kube.run(
            "apply", "-n", self.namespace, "-f", "-", "-o", "jsonpath={.metadata.generation}",
            stdin=json.dumps(_object(name)),
        )  # fmt: skip
        self.decode[name] = 1
        generation = int(out.stdout.strip() or "1")
        deadline = sent + OP_DEADLINE_S
        t = self.tracker
        ok = _until(
            deadline,
            lambda: (
                t.children_done(name, self.per_object) is not None
                and t.observed_at(name, generation) is not None
            ),
        )
        t0 = t.generation_seen(name, generation) or t.first_seen(name) or sent
        children, observed = t.children_done(name, self.per_object), t.observed_at(name, generation)
        if not ok:
            self.missed.append(f"new {name}")
        return (None if children is None else children - t0), (None if observed is None else observed - t0)

    def one_edit(self, names: list[str]) -> tuple[float | None, float | None]:
        """Toggle one existing object's decode replicas (1 <-> 2); (apply -> its decode Deployment's
        generation moved, apply -> observedGeneration), None when missed."""
        name = names[self.edit_cursor % len(names)]
        self.edit_cursor += 1
        t = self.tracker
        child = t.deployment(name, "decode")
        before = t.child_generation(child) if child else 0
        replicas = 2 if self.decode.get(name, 1) == 1 else 1
        sent = time.monotonic()
        out = self.kube.run(
            "apply", "-n", self.namespace, "-f", "-", "-o", "jsonpath={.metadata.generation}",
            stdin=json.dumps(_object(name, replicas)),
        )  # fmt: skip
        self.decode[name] = replicas
        generation = int(out.stdout.strip() or "0")

        def moved() -> float | None:
            return t.child_generation_after(child, before) if child else None

        ok = _until(
            sent + OP_DEADLINE_S, lambda: moved() is not None and t.observed_at(name, generation) is not None
        )
        t0 = t.generation_seen(name, generation) or sent
        updated, observed = moved(), t.observed_at(name, generation)
        if not ok:
            self.missed.append(f"edit {name} (generation {generation})")
        return (None if updated is None else updated - t0), (None if observed is None else observed - t0)

    def idle(self, live: int) -> None:
        if IDLE_S <= 0:
            return
        before = _snap(self.kube, self.pod)
        time.sleep(IDLE_S)
        after = _snap(self.kube, self.pod)
        cpu = after.cpu - before.cpu
        per_min = 60 * cpu / (after.at - before.at)
        reconciles = _by(before, after, "triptych_operator_reconciles_total", ("path",))
        text = NO_METRICS if reconciles is None else f"{sum(reconciles.values()):.0f}"
        print(
            f"[idle @{live}] {after.at - before.at:.0f} s quiet: operator CPU {cpu:.2f} s "
            f"({per_min:.2f} s per minute, {100 * per_min / max(live, 1):.3f} per 100 objects); "
            f"reconciles in it: {text}",
            flush=True,
        )

    def steady(self, live: int, new_names: list[str], edit_names: list[str]) -> None:
        """`new_names` applied, then as many edits of `edit_names` (cycling), one at a time; prints the
        block."""
        budget = time.monotonic() + STEADY_BUDGET_S
        s0 = _snap(self.kube, self.pod)
        new: list[tuple[float | None, float | None]] = []
        for name in new_names:
            if time.monotonic() > budget:
                self.missed.append(f"steady @{live}: phase budget {STEADY_BUDGET_S:.0f} s spent (new)")
                break
            new.append(self.one_new(name))
        s1 = _snap(self.kube, self.pod)
        edits: list[tuple[float | None, float | None]] = []
        for _ in range(len(new_names) if edit_names else 0):
            if time.monotonic() > budget:
                self.missed.append(f"steady @{live}: phase budget {STEADY_BUDGET_S:.0f} s spent (edits)")
                break
            edits.append(self.one_edit(edit_names))
        s2 = _snap(self.kube, self.pod)
        print(f"[steady @{live} live] one at a time, each waited for ({s2.at - s0.at:.0f} s)", flush=True)
        rows = (
            (f"new: apply -> all {self.per_object} children", [a for a, _ in new]),
            ("new: apply -> observedGeneration", [b for _, b in new]),
            ("edit: apply -> decode Deployment generation", [a for a, _ in edits]),
            ("edit: apply -> observedGeneration", [b for _, b in edits]),
        )
        for label, values in rows:
            got = [v for v in values if v is not None]
            print(f"  {label:46} n={len(got):<4} {_stats(got)}  missed {len(values) - len(got)}")
            if got:
                self.p99s.append((f"{label} @{live}", _pct(got, 0.99)))
        print(f"  new objects: {_cpu_line(s0, s1, len(new))}")
        for line in _metric_lines(s0, s1, len(new), "new object"):
            print(f"    {line}")
        print(f"  edits: {_cpu_line(s1, s2, len(edits), 'edits')}")
        for line in _metric_lines(s1, s2, len(edits), "edit"):
            print(f"    {line}", flush=True)


def _floor(kube: Kube, pod: str, count: int) -> tuple[float | None, int]:
    """Phase (a); the wall time until every child was seen (None when unmeasured) and children per object."""
    try:
        namespace = f"bench-floor-{uuid.uuid4().hex[:8]}"
        names = [f"b-{i:04d}" for i in range(count)]
        children = _floor_children(kube, names, namespace)
    except Exception as err:  # the builders' API changed: measure the rest anyway
        print(f"[floor] n/a: rendering the children failed ({type(err).__name__}: {err})", flush=True)
        return None, CHILDREN_PER_OBJECT
    per_object = len(children) // max(count, 1)
    kinds = sorted({c["kind"] for c in children})
    kube.run("create", "namespace", namespace)
    tracker = _Tracker(kube, namespace, owners=False)
    try:
        time.sleep(2)  # let the watches start before anything exists
        s0 = _snap(kube, pod)
        started = time.monotonic()
        proc = kube.run(
            "apply", "--server-side", "-n", namespace, "-f", "-", stdin=_doc(children),
            check=False, timeout=120 + 0.5 * len(children),
        )  # fmt: skip
        returned = time.monotonic() - started
        ok = _until(
            started + 120 + 0.5 * len(children),
            lambda: tracker.count() >= len(children),
            interval=0.2,
        )
        seen = tracker.times()
        s1 = _snap(kube, pod)
    finally:
        tracker.stop()
        deleted = _delete_namespace(kube, namespace, 300)
    wall = max(seen) - started if seen else None
    print(
        f"[floor] {count} objects' children rendered by triptych_operator's builders: {len(children)} "
        f"({per_object} per object: {', '.join(kinds)}), applied directly WITHOUT owner references (no owner "
        "exists)",
        flush=True,
    )
    status = "" if proc.returncode == 0 else f" (FAILED rc {proc.returncode}: {proc.stderr.strip()[:200]})"
    print(f"  one kubectl apply --server-side returned after {returned:.1f} s{status}")
    print(
        f"  all {len(children)} seen by watch after "
        + (f"{wall:.1f} s" if wall is not None else "-")
        + ("" if ok else f" (deadline MISSED: saw {len(seen)})")
    )
    print(f"  operator CPU meanwhile {s1.cpu - s0.cpu:.1f} s (it sees the labelled children); {deleted}")
    return (wall if ok else None), per_object


def _burst(run: _Run, names: list[str], floor_wall: float | None) -> float | None:
    """Phase (b): `names` applied at once, waited for (children, Ready); prints the block, returns the ratio
    of its all-children wall time to the floor's."""
    tracker, per_object, count = run.tracker, run.per_object, len(names)
    s0 = _snap(run.kube, run.pod)
    started = time.monotonic()
    applied = run.apply([_object(n) for n in names])
    deadline_s = 120 + 3.0 * count
    children_ok, all_children = run.wait_all(names, started, deadline_s, ready=False)
    ready_ok, all_ready = run.wait_all(names, started, deadline_s, ready=True)
    s1 = _snap(run.kube, run.pod)
    to_children, to_ready = [], []
    for n in names:
        t0 = tracker.first_seen(n)
        if t0 is not None and (c := tracker.children_done(n, per_object)) is not None:
            to_children.append(c - t0)
        if t0 is not None and (r := tracker.ready_at(n)) is not None:
            to_ready.append(r - t0)
    ratio = all_children / floor_wall if floor_wall and children_ok else None
    print(f"[burst] {count} MultimodalDeployments in one kubectl apply (returned after {applied:.1f} s)")
    print(f"  apply -> all {per_object} children   n={len(to_children):<4} {_stats(to_children)}")
    miss = "" if children_ok else f" (deadline {deadline_s:.0f} s MISSED)"
    versus = f"{floor_wall:.1f} s" if floor_wall else "n/a"
    print(
        f"  all {count * per_object} children exist after {all_children:.1f} s{miss}; floor {versus}"
        + (f": {ratio:.2f}x (goal <= {GOAL_BURST_RATIO}x)" if ratio else "")
    )
    print(f"  apply -> Ready            n={len(to_ready):<4} {_stats(to_ready)}")
    miss = "" if ready_ok else f" (deadline {deadline_s:.0f} s MISSED)"
    print(f"  all Ready after {all_ready:.1f} s{miss}")
    print(f"  {_cpu_line(s0, s1, count)}")
    for line in _metric_lines(s0, s1, count, "object"):
        print(f"  {line}", flush=True)
    return ratio


def _grow(run: _Run, live: list[str], grow: list[str]) -> None:
    """Phase (e)'s growth: `grow` applied in batches on top of `live`; waits for their children and for
    everyone Ready; prints the block."""
    g0 = _snap(run.kube, run.pod)
    started = time.monotonic()
    for i in range(0, len(grow), BATCH):
        run.apply([_object(n) for n in grow[i : i + BATCH]])
    applied = time.monotonic() - started
    deadline_s = 300 + 1.5 * len(grow)
    children_ok, all_children = run.wait_all(grow, started, deadline_s, ready=False)
    everyone = [*live, *grow]
    ready_ok, all_ready = run.wait_all(everyone, started, deadline_s, ready=True)
    g1 = _snap(run.kube, run.pod)
    print(
        f"[live] grown {len(live)} -> {len(everyone)} ({len(grow)} in kubectl applies of {BATCH}, "
        f"{applied:.1f} s): all their children after {all_children:.1f} s"
        + ("" if children_ok else f" (deadline {deadline_s:.0f} s MISSED)")
        + f", all {len(everyone)} Ready after {all_ready:.1f} s"
        + ("" if ready_ok else f" (deadline {deadline_s:.0f} s MISSED)")
    )
    print(f"  {_cpu_line(g0, g1, len(grow))}")
    for line in _metric_lines(g0, g1, len(grow), "object"):
        print(f"  {line}", flush=True)


def _goals(run: _Run, ratio: float | None, memory: list[tuple[int, _Snap]]) -> None:
    base = memory[0][1]
    print("[memory] objects     VmRSS     VmHWM   (VmRSS - VmRSS at 0) per 100 objects")
    per_100: dict[int, float] = {}
    for objects, snap in memory:
        extra = ""
        if objects:
            per_100[objects] = 100 * (snap.rss - base.rss) / objects
            extra = f"{per_100[objects] / 2**20:8.1f} MiB"
        print(f"  {objects:>14} {_mib(snap.rss):>9} {_mib(snap.hwm):>9}   {extra}")
    print("goals:")
    worst = max(run.p99s, key=lambda p: p[1]) if run.p99s else None
    if worst:
        verdict = "met" if worst[1] < GOAL_STEADY_P99_S and not run.missed else "MISSED"
        print(f"  steady p99 < {GOAL_STEADY_P99_S:.0f} s: {verdict} (worst p99 {worst[1]:.2f} s: {worst[0]})")
    else:
        print(f"  steady p99 < {GOAL_STEADY_P99_S:.0f} s: not measured")
    if run.missed:
        print(f"  deadlines missed: {len(run.missed)} ({'; '.join(run.missed[:5])})")
    if ratio:
        verdict = "met" if ratio <= GOAL_BURST_RATIO else "MISSED"
        print(f"  burst children within {GOAL_BURST_RATIO}x of the floor: {verdict} ({ratio:.2f}x)")
    else:
        print(f"  burst children within {GOAL_BURST_RATIO}x of the floor: not measured")
    if len(per_100) >= 2:
        (low, a), (high, b) = sorted(per_100.items())[0], sorted(per_100.items())[-1]
        rss = {objects: snap.rss for objects, snap in memory}
        marginal = 100 * (rss[high] - rss[low]) / (high - low)  # the first objects also pay warm-up
        growth = marginal / a if a > 0 else float("inf")
        verdict = "met" if growth <= GOAL_MEMORY_RATIO else "MISSED"
        print(
            f"  memory flat per object: {verdict} ({marginal / 2**20:.1f} MiB per 100 from {low} to {high} "
            f"vs {a / 2**20:.1f} per 100 from 0 to {low}: {growth:.2f}x, goal <= {GOAL_MEMORY_RATIO}x; "
            f"{b / 2**20:.1f} per 100 from 0 to {high})"
        )
    else:
        print("  memory flat per object: not measured (no live phase)")


def main() -> None:
    kube = _kube()
    pod = _deploy(kube)
    base = _snap(kube, pod)
    elsewhere = len(kube.json("get", "mmdeploy", "-A")["items"])
    print(
        f"operator: in-cluster pod {pod} (kopf, 1 replica); CPU/memory from its /proc/1, counters from its "
        f"/metrics; at 0 objects VmRSS {_mib(base.rss)}; MultimodalDeployments elsewhere: {elsewhere}",
        flush=True,
    )
    print(
        f"scale: burst {BURST}; steady {STEADY} new + {STEADY} edits; live {LIVE} "
        f"({STEADY_LIVE} + {STEADY_LIVE})"
    )
    live_total = LIVE if LIVE > BURST + STEADY else 0
    objects_max = max(BURST + STEADY, live_total + STEADY_LIVE if live_total else 0)
    pods_needed = 2 * objects_max + STEADY + (STEADY_LIVE if live_total else 0)
    nodes: list[str] = []
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    memory: list[tuple[int, _Snap]] = [(0, base)]
    tracker: _Tracker | None = None
    try:
        nodes, line = _add_nodes(kube, pods_needed)
        print(f"cluster: {line}", flush=True)
        floor_wall, per_object = _floor(kube, pod, BURST)
        kube.run("create", "namespace", namespace)
        tracker = _Tracker(kube, namespace, owners=True)
        run = _Run(kube, pod, namespace, tracker, per_object)
        time.sleep(2)  # let the watches start before anything exists
        names = [f"b-{i:04d}" for i in range(BURST)]
        ratio = _burst(run, names, floor_wall)
        run.idle(BURST)
        memory.append((BURST, _snap(kube, pod)))
        steady = [f"s-{i:04d}" for i in range(STEADY)]
        run.steady(BURST, steady, names)
        if live_total:
            live = [*names, *steady]
            grow = [f"g-{i:04d}" for i in range(live_total - len(live))]
            _grow(run, live, grow)
            run.idle(live_total)
            memory.append((live_total, _snap(kube, pod)))
            run.steady(live_total, [f"u-{i:04d}" for i in range(STEADY_LIVE)], [*live, *grow])
    finally:
        if tracker is not None:
            tracker.stop()
        print(f"cleanup: {_delete_namespace(kube, namespace, 600)}", flush=True)
        if nodes:
            kube.run("delete", "node", *nodes, "--wait=false", check=False, timeout=120)
            print(f"cleanup: deleted nodes {', '.join(nodes)}", flush=True)
    _goals(run, ratio, memory)


if __name__ == "__main__":
    main()
