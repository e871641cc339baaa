"""The operator running in the local cluster from its image (installed by the chart), end to end.

Every test here but the invalid corpus (refused by the API server itself) is named `test_kwok_plumbing_*`:
it checks the operator's plumbing (children, status, drift, scaling, rollouts, HA) with pods on kwok's fake
nodes, where no container runs, so Ready means "scheduled and reported", never "serving". Serving is tested
by tests/e2e/pipeline (the reference backend's pods on the real node) and tests/e2e/workers (the role
processes).

Every wait has a deadline; each test has its own namespace. GPU roles land on the kwok nodes; roles that
would run on the real node (frontends, the reference backend) are pinned to kwok nodes too: these tests are
about reconciling, and kwok pods are Ready at once (see conftest.on_kwok). The reference examples run for
real on the real node in tests/e2e/pipeline.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from triptych_operator.naming import FIELD_MANAGER

from tests.conftest import restart_apiserver
from tests.e2e.operator.conftest import (
    OPERATOR_NS,
    condition,
    models_volume,
    on_kwok,
    operator_pods,
)
from tests.kube import Kube, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Every example that is not the reference backend's (those run for real in tests/e2e/pipeline); the CPU
# vLLM ones run for real in tests/e2e/vllm, here all their roles are pinned to kwok (on_kwok).
GPU_EXAMPLES = [p for p in EXAMPLES if yaml.safe_load(p.read_text())["spec"]["backend"] != "reference"]
CASES: list[dict[str, Any]] = yaml.safe_load((REPO / "tests" / "data" / "invalid" / "cases.yaml").read_text())
CHILD_KINDS = "deployments,services,configmaps,networkpolicies"


def small(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """A reference-backend object in E/P/D-less EPD mode, pinned to kwok nodes with tiny requests."""
    obj = {
        "apiVersion": "triptych.dev/v1alpha1",
        "kind": "MultimodalDeployment",
        "metadata": {"name": name},
        "spec": {
            "backend": "reference",
            "model": {"name": "triptych/tiny-qwen2-vl"},
            "networking": {"transport": "tcp"},
            "roles": {"frontend": {"replicas": 1}, "decode": {"replicas": 1}},
            **spec,
        },
    }
    return on_kwok(obj, namespace, cpu_roles_small=True)


def wait_ready(kube: Kube, namespace: str, *names: str, timeout: int = 120) -> None:
    kube.run(
        "wait", "--for=condition=Ready", *[f"mmdeploy/{n}" for n in names], "-n", namespace,
        f"--timeout={timeout}s", timeout=timeout + 15,
    )  # fmt: skip


def children(kube: Kube, namespace: str, name: str) -> dict[str, dict[str, Any]]:
    items = kube.items(CHILD_KINDS, namespace, f"triptych.dev/deployment={name}")
    return {f"{i['kind']}/{i['metadata']['name']}": i for i in items}


# ------------------------------------------------------------------------------------------------ (a)


def _refused(kube: Kube, namespace: str, case: dict[str, Any]) -> str | None:
    """None when the API server refused `case` naming its field, else what happened."""
    obj = dict(case["object"], metadata={**case["object"]["metadata"], "namespace": namespace})
    if "before" in case:
        before = dict(case["before"], metadata={**case["before"]["metadata"], "namespace": namespace})
        kube.run("apply", "--server-side", "-f", "-", stdin=json.dumps(before))
    proc = kube.run("apply", "--server-side", "-f", "-", stdin=json.dumps(obj), check=False)
    if proc.returncode == 0:
        return f"{case['name']}: accepted"
    if case["expectField"] not in proc.stderr:
        return f"{case['name']}: refused without naming {case['expectField']}: {proc.stderr.strip()}"
    return None


def test_invalid_corpus_is_refused_by_the_api_server(operator: Kube, namespace: str) -> None:
    # `before` objects of different cases share names; give each case a namespace-unique object name.
    cases = []
    for i, original in enumerate(CASES):
        case = json.loads(json.dumps(original))
        if "before" in case:
            for key in ("before", "object"):
                case[key]["metadata"]["name"] = f"upd-{i}"
        cases.append(case)
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = [p for p in pool.map(lambda c: _refused(operator, namespace, c), cases) if p]
    assert not problems, "\n".join(problems)
    assert len(CASES) >= 40


# The identity the in-cluster operator runs as: the chart's ServiceAccount.
OPERATOR_IDENTITY = f"system:serviceaccount:{OPERATOR_NS}:triptych-operator"


def _as_operator(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return kube.run(*args, f"--as={OPERATOR_IDENTITY}", check=False)


def test_the_operators_service_account_may_do_only_what_the_operator_does(
    operator: Kube, namespace: str
) -> None:
    """Real requests made as the chart's ServiceAccount (impersonated), judged by the API server's RBAC
    against the generated ClusterRole: what the operator does is allowed; what it never does (delete
    Nodes, read Secrets here or in another namespace, grant itself roles, exec into pods) is refused.
    Writes are server-side dry runs, so a wrongly allowed one changes nothing."""
    node = operator.json("get", "nodes", "-l", "nvidia.com/gpu.product")["items"][0]["metadata"]["name"]
    configmap = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}})
    allowed = {
        "list MultimodalDeployments": ("get", "multimodaldeployments", "-n", namespace),
        "list Deployments": ("get", "deployments", "-n", namespace),
        "list nodes": ("get", "nodes"),
        "create a ConfigMap": ("create", "-n", namespace, "--dry-run=server", "-f", "-"),
    }
    refused = {
        "delete a node": ("delete", "node", node, "--dry-run=server"),
        "read Secrets in another namespace": ("get", "secrets", "-n", "kube-system"),
        "read Secrets in its users' namespace": ("get", "secrets", "-n", namespace),
        "delete a namespace": ("delete", "namespace", namespace, "--dry-run=server"),
        "bind itself a role": (
            "create", "clusterrolebinding", "escalate", "--clusterrole=cluster-admin",
            f"--serviceaccount={OPERATOR_NS}:triptych-operator", "--dry-run=server",
        ),
        "edit its own ClusterRole": ("label", "clusterrole", "triptych-operator", "x=y", "--dry-run=server"),
    }  # fmt: skip
    problems = []
    for what, args in allowed.items():
        result = operator.run(*args, f"--as={OPERATOR_IDENTITY}", stdin=configmap, check=False)
        if result.returncode != 0:
            problems.append(f"refused to {what}: {result.stderr.strip()}")
    for what, args in refused.items():
        result = _as_operator(operator, *args)
        if result.returncode == 0 or "forbidden" not in result.stderr.lower():
            problems.append(f"allowed to {what}: rc {result.returncode}, {result.stderr.strip()}")
    exec_allowed = _as_operator(
        operator, "auth", "can-i", "create", "pods", "--subresource=exec", "-n", namespace
    )
    if exec_allowed.stdout.strip() != "no":
        problems.append(f"may exec into pods: {exec_allowed.stdout.strip()}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------ (b)


@pytest.mark.parametrize("example", GPU_EXAMPLES, ids=[p.stem for p in GPU_EXAMPLES])
def test_kwok_plumbing_gpu_example_becomes_ready(operator: Kube, namespace: str, example: Path) -> None:
    obj = on_kwok(yaml.safe_load(example.read_text()), namespace)
    name = obj["metadata"]["name"]
    if "pvc" in json.dumps(obj["spec"]["model"]):
        models_volume(operator, namespace)
    try:
        operator.apply(obj)
        wait_ready(operator, namespace, name)
        table = operator.run("get", "mmdeploy", name, "-n", namespace).stdout
        header, row = table.splitlines()[:2]
        assert header.split()[:8] == [
            "NAME",
            "BACKEND",
            "MODE",
            "FRONTEND",
            "ENCODE",
            "PREFILL",
            "DECODE",
            "READY",
        ]
        got = operator.json("get", "mmdeploy", name, "-n", namespace)
        for role, summary in got["status"]["summary"].items():
            desired = got["status"]["roles"][role]["desired"]
            assert summary == f"{desired}/{desired}", (role, summary)
            assert summary in row.split()
        assert row.split()[1] == obj["spec"]["backend"]
        assert got["status"]["observedGeneration"] == got["metadata"]["generation"]
        pods = operator.items("pods", namespace, f"triptych.dev/deployment={name}")
        assert pods
        assert all(p["spec"]["nodeName"].startswith("gpu-") for p in pods)
    finally:
        # Free the GPUs for the next example (the kwok nodes are shared).
        operator.run("delete", "mmdeploy", name, "-n", namespace, "--wait=true", "--timeout=60s", check=False)
        operator.run("delete", "pods", "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False)
        operator.run("delete", "pv", f"{namespace}-models", "--wait=false", check=False)


# ------------------------------------------------------------------------------------------------ (c)


def test_kwok_plumbing_drift_is_repaired(operator: Kube, namespace: str) -> None:
    operator.apply(small("drift", namespace))
    wait_ready(operator, namespace, "drift")
    before = children(operator, namespace, "drift")
    operator.run("scale", "deployment/drift-decode", "--replicas=4", "-n", namespace)
    operator.run("delete", "service/drift-frontend", "-n", namespace)
    operator.run("delete", "configmap/drift-decode", "-n", namespace)
    # The egress NetworkPolicy loosened by hand (its private-range exceptions dropped) is put back.
    operator.run(
        "patch", "networkpolicy/drift-egress", "-n", namespace, "--type=json",
        "-p", '[{"op": "replace", "path": "/spec/egress", "value": [{}]}]',
    )  # fmt: skip
    wait_for(
        "decode replicas back to 1",
        lambda: (
            (operator.get("deployment", "drift-decode", namespace) or {}).get("spec", {}).get("replicas") == 1
        ),
        timeout=30,
    )
    svc = wait_for(
        "frontend Service recreated", lambda: operator.get("service", "drift-frontend", namespace), timeout=30
    )
    assert svc["metadata"]["uid"] != before["Service/drift-frontend"]["metadata"]["uid"]
    wait_for(
        "decode ConfigMap recreated", lambda: operator.get("configmap", "drift-decode", namespace), timeout=30
    )
    wait_for(
        "the NetworkPolicy's egress rules restored",
        lambda: (
            (operator.get("networkpolicy", "drift-egress", namespace) or {}).get("spec", {}).get("egress")
            == before["NetworkPolicy/drift-egress"]["spec"]["egress"]
        ),
        timeout=30,
    )
    wait_ready(operator, namespace, "drift")
    assert set(children(operator, namespace, "drift")) == set(before)


# ------------------------------------------------------------------------------------------------ (d)


def test_kwok_plumbing_scaling_one_role_changes_only_its_deployment(operator: Kube, namespace: str) -> None:
    obj = small("scale", namespace)
    obj["spec"]["roles"]["encode"] = dict(obj["spec"]["roles"]["frontend"])
    obj["spec"]["roles"]["prefill"] = dict(obj["spec"]["roles"]["frontend"])
    operator.apply(obj)
    wait_ready(operator, namespace, "scale")
    before = {k: v["metadata"] for k, v in children(operator, namespace, "scale").items()}
    obj["spec"]["roles"]["decode"]["replicas"] = 3
    operator.apply(obj)
    wait_for(
        "decode at 3/3",
        lambda: (
            (operator.get("mmdeploy", "scale", namespace) or {})
            .get("status", {})
            .get("summary", {})
            .get("decode")
            == "3/3"
        ),
        timeout=60,
    )
    wait_ready(operator, namespace, "scale")
    after = {k: v["metadata"] for k, v in children(operator, namespace, "scale").items()}
    assert (
        after["Deployment/scale-decode"]["generation"] == before["Deployment/scale-decode"]["generation"] + 1
    )
    for key, meta in before.items():
        if key != "Deployment/scale-decode":
            # What the operator wrote is untouched: the spec (generation) and its own managed fields. (Not
            # resourceVersion: the Deployment controller keeps writing the other Deployments' status.)
            assert after[key].get("generation") == meta.get("generation"), key
            assert _written_by_operator(after[key]) == _written_by_operator(meta), key
            if not key.startswith("Deployment/"):  # nobody else writes ConfigMaps and Services
                assert after[key]["resourceVersion"] == meta["resourceVersion"], key


def _written_by_operator(meta: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in meta.get("managedFields", []) if m["manager"] == FIELD_MANAGER]


# ------------------------------------------------------------------------------------------------ (e)


def test_kwok_plumbing_model_change_rolls_pods_and_reports_reconciling(
    operator: Kube, namespace: str
) -> None:
    obj = small("roll", namespace)
    obj["spec"]["roles"]["decode"]["replicas"] = 3
    operator.apply(obj)
    wait_ready(operator, namespace, "roll")
    old_pods = {p["metadata"]["name"] for p in operator.items("pods", namespace, "triptych.dev/role=decode")}
    # Watch every version of the object so a short rollout's Reconciling=True cannot slip between polls.
    watch = subprocess.Popen(
        [str(operator.kubectl_bin), "--kubeconfig", str(operator.kubeconfig), "get", "mmdeploy", "roll", "-n",
         namespace, "--watch", "-o", "json"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        obj["spec"]["model"]["name"] = "triptych/tiny-qwen2-vl-v2"
        operator.apply(obj)
        generation = operator.json("get", "mmdeploy", "roll", "-n", namespace)["metadata"]["generation"]
        wait_ready(operator, namespace, "roll")
        wait_for(
            "Ready at the new generation",
            lambda: (
                condition(operator.get("mmdeploy", "roll", namespace), "Ready").get("observedGeneration")
                == generation
            ),
            timeout=60,
        )
    finally:
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
    seen = list(_json_stream(out))
    reconciling = [
        o for o in seen
        if condition(o, "Reconciling").get("status") == "True"
        and o["status"].get("observedGeneration") == generation
    ]  # fmt: skip
    assert reconciling, "Reconciling=True was never written for the new generation"
    new_pods = {p["metadata"]["name"] for p in operator.items("pods", namespace, "triptych.dev/role=decode")}
    assert not new_pods & old_pods, "decode pods were not replaced"
    cm = operator.json("get", "configmap", "roll-decode", "-n", namespace)
    assert "tiny-qwen2-vl-v2" in cm["data"]["config.yaml"]


def _json_stream(text: str) -> Iterator[dict[str, Any]]:
    """The objects a `kubectl get --watch -o json` printed. Its last one may be cut short (the watch was
    terminated mid-write): that one is dropped; damage anywhere else still raises."""
    decoder = json.JSONDecoder()
    i = 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            if "\n}\n" not in text[i:]:  # no complete top-level object follows: the cut-off tail
                return
            raise
        yield obj


# ------------------------------------------------------------------------------------------------ (f)


def test_kwok_plumbing_missing_gpu_product_stalls(operator: Kube, namespace: str) -> None:
    obj = on_kwok(
        {
            "apiVersion": "triptych.dev/v1alpha1",
            "kind": "MultimodalDeployment",
            "metadata": {"name": "nogpu"},
            "spec": {
                "backend": "vllm",
                "model": {"name": "Qwen/Qwen2.5-VL-7B-Instruct"},
                "networking": {"transport": "tcp"},
                "topology": {"gpuProduct": "NVIDIA-B200"},
                "roles": {"decode": {"replicas": 1}},
            },
        },
        namespace,
    )
    operator.apply(obj)
    operator.run(
        "wait", "--for=condition=Stalled", "mmdeploy/nogpu", "-n", namespace, "--timeout=60s", timeout=75
    )
    got = operator.json("get", "mmdeploy", "nogpu", "-n", namespace)
    stalled, ready = condition(got, "Stalled"), condition(got, "Ready")
    assert stalled["reason"] == "GPUProductUnavailable"
    assert "NVIDIA-B200" in stalled["message"]
    assert ready["status"] == "False"
    assert condition(got, "Reconciling")["status"] == "False"
    events = operator.items("events", namespace)
    assert any(e["reason"] == "GPUProductUnavailable" and "NVIDIA-B200" in e["message"] for e in events)


# ------------------------------------------------------------------------------------------------ (g)


def test_kwok_plumbing_operator_restart_mid_rollout_converges(operator: Kube, namespace: str) -> None:
    names = [f"restart-{i}" for i in range(5)]
    objs = [small(n, namespace) for n in names]
    operator.apply(*objs)
    victims = [p["metadata"]["name"] for p in operator_pods(operator)]
    operator.run("delete", "pod", *victims, "-n", OPERATOR_NS, "--wait=false")
    wait_for(
        "a new operator pod Ready",
        lambda: [
            p for p in operator_pods(operator)
            if p["metadata"]["name"] not in victims
            and condition(p, "Ready").get("status") == "True"
        ],
        timeout=120,
    )  # fmt: skip
    wait_ready(operator, namespace, *names, timeout=120)
    _assert_children_unduplicated(operator, namespace, names, ("frontend", "decode"))
    replicasets = operator.items("replicasets", namespace)
    assert len(replicasets) == len(names) * 2


def _assert_children_unduplicated(
    kube: Kube, namespace: str, names: list[str], roles: tuple[str, ...]
) -> None:
    owners = {o["metadata"]["uid"]: o["metadata"]["name"] for o in kube.items("mmdeploy", namespace)}
    items = kube.items(CHILD_KINDS, namespace, "triptych.dev/deployment")
    expected = {f"{k}/{n}-{r}" for n in names for k in ("Deployment", "Service", "ConfigMap") for r in roles}
    expected |= {f"NetworkPolicy/{n}-egress" for n in names}
    got = [f"{i['kind']}/{i['metadata']['name']}" for i in items]
    assert sorted(got) == sorted(expected)  # nothing duplicated, nothing missing
    for item in items:
        refs = item["metadata"]["ownerReferences"]
        assert len(refs) == 1, item["metadata"]["name"]
        assert refs[0]["uid"] in owners, item["metadata"]["name"]


def test_kwok_plumbing_operator_survives_an_api_server_restart(operator: Kube, namespace: str) -> None:
    """The API server goes away for 10 s and comes back under the running operator (`hack/cluster
    restart-apiserver`): its watches break and must come back by themselves. The same operator process (no
    container restart) then reconciles a change to an existing object and a new one."""
    operator.apply(small("before", namespace))
    wait_ready(operator, namespace, "before")
    (pod,) = operator_pods(operator)
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    restart_apiserver(down_s=10)
    operator.apply(
        small("before", namespace, roles={"frontend": {"replicas": 1}, "decode": {"replicas": 2}}),
        small("after", namespace),
    )
    wait_for(
        "the existing object's decode Deployment scaled to 2",
        lambda: (operator.get("deployment", "before-decode", namespace) or {}).get("spec", {}).get("replicas")
        == 2 or None,
        timeout=180,
        interval=2,
    )  # fmt: skip
    wait_ready(operator, namespace, "before", "after", timeout=180)
    (after_pod,) = operator_pods(operator)
    assert after_pod["metadata"]["name"] == pod["metadata"]["name"]
    assert after_pod["status"]["containerStatuses"][0]["restartCount"] == restarts
    _assert_children_unduplicated(operator, namespace, ["before", "after"], ("frontend", "decode"))


def _peers(kube: Kube) -> dict[str, int]:
    """Live peers in the ClusterKopfPeering: kopf's identity (the pod's name, from POD_ID) -> priority."""
    peering = kube.json("get", "clusterkopfpeering", "triptych")
    return {
        peer: record["priority"]
        for peer, record in (peering.get("status") or {}).items()
        if isinstance(record, dict) and record.get("lifetime", 0) > 0
    }


def _log_lines(kube: Kube, pod: str) -> list[str]:
    return kube.run("-n", OPERATOR_NS, "logs", pod).stdout.splitlines()


def test_kwok_plumbing_standby_replica_takes_over_when_the_working_one_goes(
    operator: Kube, namespace: str
) -> None:
    """Two operator replicas: kopf peering lets the higher-priority one work while the other stands by (kopf
    logs only transitions, so a standby that started paused says nothing until it takes over). When the
    working pod is deleted, it removes its peering record on the way out; the highest-ranked live replica
    then works (the standby resumes and says so, unless the Deployment's replacement pod outranks it),
    what is applied next is reconciled, and nothing is duplicated. The chart's single replica is restored
    afterwards."""
    deployment = "deployment/triptych-operator"
    operator.run("-n", OPERATOR_NS, "scale", deployment, "--replicas=2")
    try:
        pods = wait_for(
            "two operator replicas Ready and both in the peering",
            lambda: (
                names
                if len(names := [p["metadata"]["name"] for p in operator_pods(operator)
                                 if condition(p, "Ready").get("status") == "True"]) == 2
                and set(names) <= set(_peers(operator))
                else None
            ),
            timeout=120,
            interval=1,
        )  # fmt: skip
        peers = _peers(operator)
        working, standby = sorted(pods, key=lambda name: peers[name], reverse=True)
        operator.apply(small("while-two", namespace))
        wait_ready(operator, namespace, "while-two")

        def resumed() -> int:
            return sum("Resuming operations" in line for line in _log_lines(operator, standby))

        # A standby that started first worked until the other joined: count, do not just look.
        resumed_before = resumed()
        operator.run("-n", OPERATOR_NS, "delete", "pod", working, "--wait=false")

        def taken_over() -> str | None:
            """Who works now: the standby, once it says it resumed, if it is the highest-ranked live peer;
            or the Deployment's replacement pod, if it registered with a higher priority before the standby
            saw the deleted pod's record go (it then works from its start, and the standby rightly stays
            paused). Deterministic either way: whichever live peer ranks highest must be working."""
            live = _peers(operator)
            if working in live or not live:
                return None  # the deleted pod's record is not gone yet
            top = max(live, key=lambda peer: live[peer])
            if top == standby:
                return "standby" if resumed() > resumed_before else None
            return "replacement"

        wait_for("the highest-ranked live replica to take over", taken_over, timeout=60)
        operator.apply(small("after-failover", namespace))
        wait_ready(operator, namespace, "while-two", "after-failover")
        _assert_children_unduplicated(
            operator, namespace, ["while-two", "after-failover"], ("frontend", "decode")
        )
    finally:
        operator.run("-n", OPERATOR_NS, "scale", deployment, "--replicas=1")
        operator.run(
            "-n", OPERATOR_NS, "rollout", "status", deployment, "--timeout=120s", timeout=130
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------ (h)


def test_kwok_plumbing_one_hundred_at_once(operator: Kube, namespace: str) -> None:
    names = [f"bulk-{i:03d}" for i in range(100)]
    started = time.monotonic()
    operator.apply(*[small(n, namespace) for n in names])
    wait_for(
        "100 MultimodalDeployments Ready",
        lambda: sum(
            condition(o, "Ready").get("status") == "True" for o in operator.items("mmdeploy", namespace)
        ) == len(names) or None,
        timeout=240,
        interval=3,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    print(f"100 MultimodalDeployments Ready {elapsed:.1f} s after apply")
    assert len(operator.items("deployments", namespace, "triptych.dev/deployment")) == 200
