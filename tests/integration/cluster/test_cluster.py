"""The local cluster is a real Kubernetes: scheduling, kubelet, Services, DNS, RBAC, garbage collection.

Pods on the real node run from the locally built ``echo`` image; pods on the kwok GPU nodes only pretend to
run, and nothing here ever connects to their (blackholed) IPs.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import restart_apiserver
from tests.kube import Kube, wait_for

pytestmark = pytest.mark.cluster

ECHO_IMAGE = "localhost/triptych/echo:dev"
H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
REAL_NODE_SELECTOR = {"triptych.dev/node-kind": "real"}


def deployment(name: str, *, replicas: int, pod_spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def echo_container(**extra: Any) -> dict[str, Any]:
    return {
        "name": "echo",
        "image": ECHO_IMAGE,
        "imagePullPolicy": "Never",
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        **extra,
    }


def one_shot_pod(name: str, script: str, *, service_account: str | None = None) -> dict[str, Any]:
    """A run-to-completion pod on the real node that runs a Python snippet with the echo image's python3."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "nodeSelector": REAL_NODE_SELECTOR,
        "containers": [echo_container(command=["python3", "-c", script])],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def ready_replicas(kube: Kube, name: str, namespace: str) -> int:
    dep = kube.get("deployment", name, namespace)
    return int((dep or {}).get("status", {}).get("readyReplicas") or 0)


def test_gpu_deployment_lands_on_matching_kwok_nodes(cluster: Kube, namespace: str) -> None:
    pod_spec = {
        "nodeSelector": {"nvidia.com/gpu.product": H100},
        "tolerations": [GPU_TOLERATION],
        "containers": [
            {
                "name": "engine",
                "image": "example.invalid/engine:1",
                "resources": {"limits": {"nvidia.com/gpu": "4", "rdma/ib": "1"}},
            }
        ],
    }
    cluster.apply(deployment("gpu-worker", replicas=3, pod_spec=pod_spec), namespace=namespace)
    wait_for(
        "3 GPU replicas Ready", lambda: ready_replicas(cluster, "gpu-worker", namespace) == 3, timeout=90
    )
    nodes = {n["metadata"]["name"]: n for n in cluster.json("get", "nodes")["items"]}
    pods = cluster.items("pods", namespace, "app=gpu-worker")
    assert len(pods) == 3
    for pod in pods:
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
        assert node["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"
    # 8 GPUs per node, 4 per pod: the scheduler must have spread 3 pods over at least 2 H100 nodes.
    assert len({p["spec"]["nodeName"] for p in pods}) >= 2


def test_gpu_pods_without_toleration_do_not_land_on_gpu_nodes(cluster: Kube, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "no-toleration"},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": H100},
            "containers": [{"name": "c", "image": "example.invalid/x:1"}],
        },
    }
    cluster.apply(pod, namespace=namespace)
    event = wait_for(
        "a FailedScheduling event", lambda: _scheduling_failure(cluster, namespace, "no-toleration")
    )
    assert "untolerated taint" in event


def _scheduling_failure(kube: Kube, namespace: str, pod: str) -> str | None:
    events = kube.json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={pod},reason=FailedScheduling",
    )["items"]
    return events[0]["message"] if events else None


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(cluster: Kube, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "too-big"},
        "spec": {
            "tolerations": [GPU_TOLERATION],
            "containers": [
                {
                    "name": "c",
                    "image": "example.invalid/x:1",
                    "resources": {"limits": {"nvidia.com/gpu": "16"}},
                }
            ],
        },
    }
    cluster.apply(pod, namespace=namespace)
    message = wait_for("a FailedScheduling event", lambda: _scheduling_failure(cluster, namespace, "too-big"))
    assert "Insufficient nvidia.com/gpu" in message
    assert cluster.pod_phase("too-big", namespace) == "Pending"


def _deploy_echo(cluster: Kube, namespace: str) -> dict[str, Any]:
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    pod_spec = {
        "nodeSelector": REAL_NODE_SELECTOR,
        "containers": [
            echo_container(
                env=env,
                ports=[{"containerPort": 8080}],
                readinessProbe={"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
            )
        ],
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    cluster.apply(deployment("echo", replicas=1, pod_spec=pod_spec), service, namespace=namespace)
    wait_for("echo Ready", lambda: ready_replicas(cluster, "echo", namespace) == 1, timeout=90)
    pod: dict[str, Any] = cluster.items("pods", namespace, "app=echo")[0]
    return pod


def test_real_pod_serves_http_reached_by_service_dns_name(cluster: Kube, namespace: str) -> None:
    echo = _deploy_echo(cluster, namespace)
    assert echo["spec"]["nodeName"] == "triptych-real"
    url = f"http://echo.{namespace}.svc.cluster.local/hello?from=client"
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    cluster.apply(one_shot_pod("client", script), namespace=namespace)
    answer = json.loads(cluster.wait_pod_done("client", namespace).strip().splitlines()[-1])
    assert answer["path"] == "/hello?from=client"
    assert answer["pod"] == echo["metadata"]["name"]  # the Service routed to the real pod


def test_kubectl_logs_and_exec_work_on_a_real_pod(cluster: Kube, namespace: str) -> None:
    echo = _deploy_echo(cluster, namespace)
    name = echo["metadata"]["name"]
    logs = cluster.run("logs", name, "-n", namespace).stdout
    assert "echo: listening on :8080" in logs
    out = cluster.run(
        "exec", name, "-n", namespace, "--", "python3", "-c", "import os; print(os.getuid(), 6*7)"
    )
    assert out.stdout.split() == ["65534", "42"]


RBAC_SCRIPT = r"""
import json, ssl, urllib.request, urllib.error
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ns = open(sa + "/namespace").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
def get(path):
    req = urllib.request.Request("https://kubernetes.default.svc" + path,
                                 headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
status, body = get("/api/v1/namespaces/" + ns + "/pods")
print(json.dumps({"pods_status": status, "pods": [p["metadata"]["name"] for p in body.get("items", [])]}))
status, body = get("/api/v1/namespaces/" + ns + "/secrets")
print(json.dumps({"secrets_status": status, "reason": body.get("reason")}))
"""


def test_pod_uses_its_service_account_and_rbac_is_enforced(cluster: Kube, namespace: str) -> None:
    rbac: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
    cluster.apply(*rbac, namespace=namespace)
    cluster.apply(one_shot_pod("api-client", RBAC_SCRIPT, service_account="reader"), namespace=namespace)
    lines = [json.loads(line) for line in cluster.wait_pod_done("api-client", namespace).strip().splitlines()]
    assert lines[0]["pods_status"] == 200
    assert "api-client" in lines[0]["pods"]  # it sees itself through the API
    assert lines[1] == {"secrets_status": 403, "reason": "Forbidden"}


def test_deleting_a_deployment_garbage_collects_replicasets_and_pods(cluster: Kube, namespace: str) -> None:
    pod_spec = {
        "tolerations": [GPU_TOLERATION],
        "nodeSelector": {"type": "kwok"},
        "containers": [{"name": "c", "image": "example.invalid/x:1"}],
    }
    cluster.apply(deployment("doomed", replicas=2, pod_spec=pod_spec), namespace=namespace)
    wait_for("2 replicas Ready", lambda: ready_replicas(cluster, "doomed", namespace) == 2, timeout=90)
    assert cluster.items("replicasets", namespace, "app=doomed")
    cluster.run("delete", "deployment", "doomed", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(
        "ReplicaSets and pods collected",
        lambda: (
            not cluster.items("replicasets", namespace, "app=doomed")
            and not cluster.items("pods", namespace, "app=doomed")
        ),
        timeout=90,
    )


def test_namespace_deletion_completes(cluster: Kube) -> None:
    name = "t-ns-deletion"
    cluster.run("delete", "namespace", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
    cluster.run("create", "namespace", name)
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}},
        one_shot_pod("done", "print('ok')"),
        namespace=name,
    )
    cluster.wait_pod_done("done", name)
    cluster.run("delete", "namespace", name, "--wait=true", "--timeout=120s", timeout=150)
    assert cluster.run("get", "namespace", name, check=False).returncode != 0


def test_helm_and_kubectl_match_the_server_minor_version(cluster: Kube) -> None:
    versions = json.loads(cluster.run("version", "-o", "json").stdout)
    server_minor = versions["serverVersion"]["minor"]
    assert versions["serverVersion"]["gitVersion"].startswith(f"v1.{server_minor}.")
    assert versions["clientVersion"]["minor"] == server_minor
    helm = cluster.helm("version", "--template", "{{.Version}}")
    assert helm.returncode == 0, helm.stderr
    assert re.fullmatch(r"v3\.\d+\.\d+", helm.stdout.strip()), helm.stdout
    # helm's own version line has no Kubernetes version: the client library compiled into it does.
    build_info = subprocess.run(
        ["go", "version", "-m", str(cluster.helm_bin)], capture_output=True, text=True, check=True
    ).stdout
    client_go = re.search(r"\bk8s\.io/client-go\s+v0\.(\d+)\.", build_info)
    assert client_go is not None, build_info
    assert client_go.group(1) == server_minor, f"helm uses client-go v0.{client_go.group(1)}"


def test_network_safety_blackholes_and_egress_fence_are_in_place(cluster: Kube) -> None:
    """Checked on the rules themselves: sending a packet to an outside address to prove it is dropped would
    itself be traffic this machine must never send."""
    routes = subprocess.run(
        ["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True, check=True
    ).stdout
    for cidr in ("10.88.0.0/16", "10.89.0.0/16", "10.96.0.0/16"):  # pods, kwok's fake pod IPs, Services
        assert f"blackhole {cidr}" in routes
    # The real node's pods are on the bridge: a more specific route than the blackhole.
    assert (
        "10.88.0.0/24 dev triptych0"
        in subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    )
    fence = subprocess.run(
        ["iptables", "-w", "5", "-t", "mangle", "-S", "TRIPTYCH-FORWARD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert fence[1:] == [
        "-A TRIPTYCH-FORWARD -i triptych0 -o triptych0 -j RETURN",
        "-A TRIPTYCH-FORWARD -i triptych0 -j DROP",
        "-A TRIPTYCH-FORWARD -o triptych0 -j DROP",
    ]
    # In the mangle table, which runs before the filter table's (kube-proxy's) accept rules.
    forward = subprocess.run(
        ["iptables", "-w", "5", "-t", "mangle", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert forward[1] == "-A FORWARD -j TRIPTYCH-FORWARD"
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    assert "MASQUERADE" not in "\n".join(line for line in nat.splitlines() if "KUBE-" not in line)


def test_kubelet_never_deletes_imported_images(cluster: Kube) -> None:
    """There is no registry to pull from: an image the kubelet deletes is gone until `hack/images` runs again.
    Read from the running kubelet (its /configz, through the API server's node proxy), not from our config
    builder, because what matters is what the kubelet made of it: with disk-pressure eviction on, a nearly
    full disk made it delete the pause image and then no pod could start."""
    config = json.loads(cluster.run("get", "--raw", "/api/v1/nodes/triptych-real/proxy/configz").stdout)
    kubelet = config["kubeletconfig"]
    assert kubelet["imageGCHighThresholdPercent"] == 100
    assert set(kubelet["evictionHard"]) == {"memory.available"}, kubelet["evictionHard"]
    assert not kubelet.get("evictionSoft"), kubelet.get("evictionSoft")


def test_api_server_restart_leaves_every_other_component_working(cluster: Kube, namespace: str) -> None:
    """`hack/cluster restart-apiserver` (what the operator's restart test uses): the controllers, the
    scheduler and kwok ride out the outage in the same processes (nothing supervises them here, so one that
    exits is gone for good) and then create, schedule and run a new Deployment's pods."""
    pids = cluster.kubeconfig.parent / "kwok" / "clusters" / "triptych" / "pids"

    def pid(component: str) -> int:
        return int((pids / f"{component}.pid").read_text().strip())

    survivors = {c: pid(c) for c in ("etcd", "kube-controller-manager", "kube-scheduler", "kwok-controller")}
    apiserver = pid("kube-apiserver")
    # Down for 15 s: past the controllers' leader-election renew deadline (10 s), which made them exit.
    restart_apiserver(down_s=15)
    assert pid("kube-apiserver") != apiserver
    for component, before in survivors.items():
        assert pid(component) == before, component
        assert Path(f"/proc/{before}").exists(), f"{component} exited after the API server restart"
    pod_spec = {"tolerations": [GPU_TOLERATION], "nodeSelector": {"type": "kwok"}, "containers": [
        {"name": "c", "image": "example.invalid/c:1"}
    ]}  # fmt: skip
    cluster.apply(deployment("after-restart", replicas=2, pod_spec=pod_spec), namespace=namespace)
    wait_for(
        "2 replicas Ready after the restart",
        lambda: ready_replicas(cluster, "after-restart", namespace) == 2,
        timeout=150,  # the components' watches back off while the API is away (up to ~30 s each)
    )
