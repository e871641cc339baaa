"""Builders against expected objects written by hand, and golden whole manifests for every example."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from triptych_operator.api import Role, parse_resource, parse_spec
from triptych_operator.builders import RoleBuild, build_children, build_role, build_service
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SETTINGS = OperatorSettings.from_env({})
DEMO = Owner("demo", "ns", "u1")
OWNER = [
    {
        "apiVersion": "triptych.dev/v1alpha1",
        "kind": "MultimodalDeployment",
        "name": "demo",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
]


def _labels(role: str, backend: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "triptych",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/part-of": "triptych",
        "app.kubernetes.io/managed-by": "triptych-operator",
        "triptych.dev/backend": backend,
        "triptych.dev/deployment": "demo",
        "triptych.dev/role": role,
    }


def _spec(backend: str = "vllm", **extra: Any) -> Any:
    raw: dict[str, Any] = {"backend": backend, "model": {"name": "m"}, "roles": {"decode": {}}}
    raw.update(extra)
    return parse_spec(raw)


def _deployment(
    spec: Any, role: Role, *, rdma_available: bool, replicas: int | None = None
) -> dict[str, Any]:
    """The role's Deployment as build_children makes it (with its ConfigMap's hash and engine command)."""
    children = build_role(DEMO, spec, role, SETTINGS, rdma_available=rdma_available, replicas=replicas)
    return next(c for c in children if c["kind"] == "Deployment")


def _container(dep: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_frontend_service() -> None:
    assert build_service(RoleBuild.of(DEMO, _spec(), "frontend", SETTINGS, rdma_available=False)) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "demo-frontend",
            "namespace": "ns",
            "labels": _labels("frontend", "vllm"),
            "ownerReferences": OWNER,
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"triptych.dev/deployment": "demo", "triptych.dev/role": "frontend"},
            "ports": [
                {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def test_worker_service_is_headless() -> None:
    svc = build_service(RoleBuild.of(DEMO, _spec("reference"), "decode", SETTINGS, rdma_available=False))
    assert svc["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": False,
        "selector": {"triptych.dev/deployment": "demo", "triptych.dev/role": "decode"},
        "ports": [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}],
    }


def test_reference_decode_deployment() -> None:
    dep = _deployment(_spec("reference"), "decode", rdma_available=True)
    assert dep["metadata"]["name"] == "demo-decode"
    assert dep["metadata"]["ownerReferences"] == OWNER
    assert dep["spec"]["selector"] == {
        "matchLabels": {"triptych.dev/deployment": "demo", "triptych.dev/role": "decode"}
    }
    pod = dep["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert "affinity" not in pod
    worker = _container(dep, "worker")
    assert worker["command"] == ["triptych-worker", "decode", "--config", "/etc/triptych/config.yaml"]
    assert worker["image"] == "localhost/triptych/worker-reference:dev"
    assert worker["resources"] == {"requests": {"cpu": "100m", "memory": "1Gi"}}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert _env(worker)["UCX_TLS"] == "tcp"  # reference never uses RDMA, even when nodes have it
    assert _env(worker)["TRIPTYCH_POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}} in pod["volumes"]
    assert "nvidia.com/gpu" not in str(worker["resources"])
    # The model: written once into an emptyDir by the init container, read-only for the worker.
    assert {"name": "model", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in worker["volumeMounts"]
    (init,) = pod["initContainers"]
    assert init["image"] == worker["image"]
    assert init["command"] == [
        "python", "-m", "triptych_workers.engines.reference.prepare", "--out", "/models/reference"
    ]  # fmt: skip
    assert init["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]


def test_reference_frontend_has_the_model_and_every_role_reads_it() -> None:
    spec = _spec("reference", roles={"encode": {}, "prefill": {}, "decode": {}})
    children = build_children(DEMO, spec, SETTINGS)
    for cm in (c for c in children if c["kind"] == "ConfigMap"):
        config = yaml.safe_load(cm["data"]["config.yaml"])
        assert config["model"]["path"] == "/models/reference", cm["metadata"]["name"]
        assert config["nats"]["url"] == "nats://triptych-nats.triptych-system.svc:4222"
    deps = {c["metadata"]["name"]: c for c in children if c["kind"] == "Deployment"}
    assert set(deps) == {"demo-frontend", "demo-encode", "demo-prefill", "demo-decode"}
    for dep in deps.values():
        pod = dep["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["initContainers"]] == ["prepare-model"]
    frontend = _container(deps["demo-frontend"], "worker")
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in frontend["volumeMounts"]
    assert frontend["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "shm" not in str(frontend["volumeMounts"])


def test_gpu_backends_have_no_prepare_step() -> None:
    children = build_children(DEMO, _spec(), SETTINGS)
    for dep in (c for c in children if c["kind"] == "Deployment"):
        assert "initContainers" not in dep["spec"]["template"]["spec"]


def test_vllm_prefill_rdma() -> None:
    spec = _spec(
        roles={"encode": {}, "prefill": {"tensorParallel": 2}, "decode": {}},
        networking={"transport": "rdma", "rdma": {"networks": ["roce"], "ucx": {"UCX_IB_GID_INDEX": "0"}}},
        topology={"gpuProduct": "NVIDIA-H100-80GB-HBM3"},
    )
    dep = _deployment(spec, "prefill", rdma_available=False)
    engine = _container(dep, "engine")
    assert engine["command"] == [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "m",
        "--host",
        "0.0.0.0",
        "--port",
        "8001",
        "--served-model-name",
        "m",
        "--tensor-parallel-size",
        "2",
        "--enable-scale-out",
        "--ec-transfer-config",
        '{"ec_connector":"ECCPUConnector","ec_role":"ec_consumer"}',
        "--kv-transfer-config",
        '{"kv_connector":"NixlConnector","kv_role":"kv_producer"}',
        "--max-num-seqs",
        "256",
    ]
    assert engine["resources"] == {
        "requests": {"nvidia.com/gpu": 2, "rdma/ib": 1},
        "limits": {"nvidia.com/gpu": 2, "rdma/ib": 1},
    }
    assert engine["securityContext"] == {"capabilities": {"add": ["IPC_LOCK"]}}
    env = _env(engine)
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["UCX_TLS"] == "rc_x,rc,dc_x,dc,cuda_copy,cuda_ipc"
    assert env["UCX_IB_GID_INDEX"] == "0"
    assert env["UCX_RNDV_SCHEME"] == "get_zcopy"
    assert env["UCX_RNDV_THRESH"] == "0"
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "roce"
    pod = template["spec"]
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    assert pod["affinity"]["nodeAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {
                            "key": "nvidia.com/gpu.product",
                            "operator": "In",
                            "values": ["NVIDIA-H100-80GB-HBM3"],
                        }
                    ]
                }
            ]
        }
    }
    assert _container(dep, "worker")["command"] == [
        "triptych-worker",
        "prefill",
        "--config",
        "/etc/triptych/config.yaml",
    ]


def test_tcp_pins_ucx_and_requests_no_rdma() -> None:
    spec = _spec(networking={"transport": "tcp"})
    engine = _container(_deployment(spec, "decode", rdma_available=True), "engine")
    assert _env(engine)["UCX_TLS"] == "tcp,cuda_copy"
    assert engine["resources"] == {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}


def test_auto_follows_rdma_available() -> None:
    spec = _spec(networking={"transport": "auto", "rdma": {"resource": "rdma/roce", "count": 2}})
    with_rdma = _deployment(spec, "decode", rdma_available=True)
    assert _container(with_rdma, "engine")["resources"]["limits"]["rdma/roce"] == 2
    without = _deployment(spec, "decode", rdma_available=False)
    assert "rdma/roce" not in _container(without, "engine")["resources"]["limits"]


@pytest.mark.parametrize(
    ("backend", "roles", "role", "flags"),
    [
        ("vllm", {"encode": {}, "decode": {}}, "encode", ["--mm-encoder-only", "--ec-transfer-config"]),
        (
            "vllm",
            {"prefill": {}, "decode": {}},
            "decode",
            ['{"kv_connector":"NixlConnector","kv_role":"kv_consumer"}'],
        ),
        (
            "sglang",
            {"prefill": {}, "decode": {}},
            "prefill",
            ["--disaggregation-mode", "prefill", "--disaggregation-transfer-backend", "nixl"],
        ),
        (
            "sglang",
            {"encode": {}, "prefill": {}, "decode": {}},
            "decode",
            ["--disaggregation-mode", "decode"],
        ),
        ("sglang", {"encode": {}, "decode": {}}, "encode", ["--encoder-only"]),
        ("trtllm", {"prefill": {}, "decode": {}}, "prefill", ["--server_role", "CONTEXT"]),
        ("trtllm", {"prefill": {}, "decode": {}}, "decode", ["--server_role", "GENERATION"]),
        ("trtllm", {"encode": {}, "decode": {}}, "encode", ["mm_embedding_serve"]),
    ],
)
def test_disaggregation_flags(backend: str, roles: dict[str, Any], role: str, flags: list[str]) -> None:
    spec = _spec(backend, roles=roles)
    cmd = _container(
        _deployment(spec, cast("Role", role), rdma_available=False),
        "engine",
    )["command"]
    joined = " ".join(cmd)
    assert " ".join(flags) in joined


def test_aggregated_vllm_has_no_connectors() -> None:
    cmd = _container(_deployment(_spec(), "decode", rdma_available=False), "engine")["command"]
    assert not any("transfer-config" in part for part in cmd)


def test_colocate_required_term_includes_own_role() -> None:
    spec = _spec(
        roles={"prefill": {}, "decode": {}},
        topology={"colocate": {"roles": ["prefill", "decode"], "mode": "required"}},
    )
    pod = _deployment(spec, "decode", rdma_available=False)["spec"]["template"]["spec"]
    assert pod["affinity"]["podAffinity"] == {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {
                    "matchLabels": {"triptych.dev/deployment": "demo"},
                    "matchExpressions": [
                        {"key": "triptych.dev/role", "operator": "In", "values": ["prefill", "decode"]}
                    ],
                },
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }


def test_replicas_override_and_user_env_wins() -> None:
    spec = _spec(roles={"decode": {"replicas": 2, "env": [{"name": "UCX_TLS", "value": "tcp"}]}})
    dep = _deployment(spec, "decode", rdma_available=True, replicas=5)
    assert dep["spec"]["replicas"] == 5
    assert [e for e in _container(dep, "engine")["env"] if e["name"] == "UCX_TLS"] == [
        {"name": "UCX_TLS", "value": "tcp"}
    ]


def test_children_order_and_kinds() -> None:
    spec = _spec(roles={"encode": {}, "decode": {}})
    got = [(o["kind"], o["metadata"]["name"]) for o in build_children(DEMO, spec, SETTINGS)]
    assert got == [
        (kind, f"demo-{role}")
        for role in ("frontend", "encode", "decode")
        for kind in ("ConfigMap", "Service", "Deployment")
    ] + [("NetworkPolicy", "demo-egress")]


def test_config_changes_roll_pods() -> None:
    a = _deployment(_spec("reference"), "decode", rdma_available=False)
    b = _deployment(
        parse_spec({"backend": "reference", "model": {"name": "other"}, "roles": {"decode": {}}}),
        "decode",
        rdma_available=False,
    )
    key = "triptych.dev/config-sha256"
    assert (
        a["spec"]["template"]["metadata"]["annotations"][key]
        != b["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env(
        {"TRIPTYCH_OPERATOR_IMAGE_VLLM": "reg/vllm:1", "TRIPTYCH_OPERATOR_NATS_URL": "nats://x:4222"}
    )
    assert s.image_for("vllm") == "reg/vllm:1"
    assert s.nats_url == "nats://x:4222"
    assert s.image_for("sglang") == "localhost/triptych-worker-sglang:0.1.0"


def _render(example: Path) -> str:
    obj = yaml.safe_load(example.read_text())
    spec = parse_resource(obj)
    children = build_children(
        Owner(obj["metadata"]["name"], "default", "00000000-0000-0000-0000-000000000000"),
        spec,
        SETTINGS,
        rdma_available=True,
    )
    return yaml.safe_dump_all(children, sort_keys=True, width=120)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_golden(example: Path) -> None:
    golden = GOLDEN / f"{example.stem}.yaml"
    text = _render(example)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {example.name}: run with UPDATE_GOLDEN=1 and review it"
    assert golden.read_text() == text, f"{golden.name} differs: review the change, then UPDATE_GOLDEN=1"


def test_every_example_has_a_golden_file() -> None:
    assert {p.stem for p in GOLDEN.glob("*.yaml")} == {e.stem for e in EXAMPLES}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_worker_config_is_what_the_workers_read(example: Path) -> None:
    """The contract between worker_config() and the workers' WorkerConfig: every role's file validates."""
    worker_config_model = pytest.importorskip("triptych_workers.config").WorkerConfig
    resource = parse_resource(yaml.safe_load(example.read_text()))
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    for cm in (
        c for c in build_children(Owner(name, "ns", "u1"), resource, SETTINGS) if c["kind"] == "ConfigMap"
    ):
        config = worker_config_model.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
        media = resource.media
        assert config.media.allow_private_networks is media.allow_private_networks
        assert list(config.media.allowed_domains) == list(media.allowed_domains)


def test_the_serving_block_reaches_every_role() -> None:
    """spec.serving is the API for the frontend's routing policy and image placement (README): every role's
    config carries it, and the workers read it as their ServingConfig."""
    worker_config_model = pytest.importorskip("triptych_workers.config").WorkerConfig
    spec = _spec("reference", roles={"encode": {}, "decode": {}}, serving={"encodeRouting": "round-robin"})
    for child in build_children(DEMO, spec, SETTINGS):
        if child["kind"] == "ConfigMap":
            config = worker_config_model.model_validate(yaml.safe_load(child["data"]["config.yaml"]))
            assert config.serving.encode_routing == "round-robin"
            assert config.serving.decode_images_on == "encode"  # the default, written out


def test_local_media_pvc_is_mounted_read_only_in_the_frontend_only() -> None:
    media = {"allowedLocalMediaPath": "/media", "localMediaPVC": "photos"}
    spec = _spec("reference", roles={"encode": {}, "decode": {}}, media=media)
    children = build_children(DEMO, spec, SETTINGS)
    for dep in (c for c in children if c["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        has_volume = {
            "name": "local-media",
            "persistentVolumeClaim": {"claimName": "photos", "readOnly": True},
        }
        mount = {"name": "local-media", "mountPath": "/media", "readOnly": True}
        if dep["metadata"]["name"] == "demo-frontend":
            assert has_volume in pod["volumes"]
            assert mount in _container(dep, "worker")["volumeMounts"]
        else:  # only the frontend fetches media
            assert "local-media" not in {v["name"] for v in pod["volumes"]}
    frontend_config = yaml.safe_load(
        next(c for c in children if c["kind"] == "ConfigMap")["data"]["config.yaml"]
    )
    assert frontend_config["media"]["allowedLocalMediaPath"] == "/media"
    assert "localMediaPVC" not in frontend_config["media"]  # the operator's to mount, not the fetcher's


# ------------------------------------------------------------------------------------------------ egress


def _network_policy(spec: Any, settings: OperatorSettings = SETTINGS) -> dict[str, Any] | None:
    children = build_children(DEMO, spec, settings)
    policies = [c for c in children if c["kind"] == "NetworkPolicy"]
    assert len(policies) <= 1
    return policies[0] if policies else None


def _blocks(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        peer["ipBlock"]
        for rule in policy["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]


def test_the_egress_policy_selects_every_pod_of_the_deployment_and_only_restricts_egress() -> None:
    policy = _network_policy(_spec())
    assert policy is not None
    assert policy["metadata"]["name"] == "demo-egress"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert policy["spec"]["podSelector"] == {"matchLabels": {"triptych.dev/deployment": "demo"}}
    assert policy["spec"]["policyTypes"] == ["Egress"]
    rules = policy["spec"]["egress"]
    assert {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]} in rules
    assert {"to": [{"podSelector": {"matchLabels": {"triptych.dev/deployment": "demo"}}}]} in rules


def test_private_ranges_are_closed_unless_the_media_spec_opens_them() -> None:
    closed = _blocks(_network_policy(_spec()) or {})
    v4 = next(b for b in closed if b["cidr"] == "0.0.0.0/0")
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"} <= set(
        v4["except"]
    )
    opened = _blocks(_network_policy(_spec(media={"allowPrivateNetworks": True})) or {})
    v4 = next(b for b in opened if b["cidr"] == "0.0.0.0/0")
    assert "10.0.0.0/8" not in v4["except"]
    assert "169.254.169.254/32" in v4["except"]  # metadata endpoints stay closed
    assert {"cidr": "fc00::/7", "except": ["fd00:ec2::254/128", "fd00:ec2::23/128"]} in opened


def test_allowed_cidrs_are_added_and_unrestricted_means_no_policy() -> None:
    spec = _spec(networkPolicy={"allowedCIDRs": ["10.20.0.0/16", "fd00:1::/64"]})
    assert {"cidr": "10.20.0.0/16"} in _blocks(_network_policy(spec) or {})
    assert {"cidr": "fd00:1::/64"} in _blocks(_network_policy(spec) or {})
    assert _network_policy(_spec(networkPolicy={"egress": "Unrestricted"})) is None


@pytest.mark.parametrize(
    ("nats_url", "expected"),
    [
        (
            "nats://triptych-nats.triptych-system.svc:4222",
            [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "triptych-system"}}}],
        ),
        (
            "nats://nats.messaging.svc.cluster.local",
            [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "messaging"}}}],
        ),
        ("nats://10.9.8.7:4333", [{"ipBlock": {"cidr": "10.9.8.7/32"}}]),
        ("nats://[fd00::5]:4222", [{"ipBlock": {"cidr": "fd00::5/128"}}]),
    ],
)
def test_the_nats_servers_are_reachable(nats_url: str, expected: list[dict[str, Any]]) -> None:
    settings = OperatorSettings.from_env({"TRIPTYCH_OPERATOR_NATS_URL": nats_url})
    policy = _network_policy(_spec(), settings)
    assert policy is not None
    port = 4333 if ":4333" in nats_url else 4222
    assert {"to": expected, "ports": [{"protocol": "TCP", "port": port}]} in policy["spec"]["egress"]


def test_every_server_of_a_nats_cluster_url_is_reachable_and_a_public_name_adds_no_rule() -> None:
    url = "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://nats.example.com:4222"
    settings = OperatorSettings.from_env({"TRIPTYCH_OPERATOR_NATS_URL": url})
    policy = _network_policy(_spec(), settings)
    assert policy is not None
    nats = [r for r in policy["spec"]["egress"] if r.get("ports") == [{"protocol": "TCP", "port": 4222}]]
    assert [r["to"] for r in nats] == [
        [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        [{"ipBlock": {"cidr": "10.0.0.2/32"}}],
    ]
