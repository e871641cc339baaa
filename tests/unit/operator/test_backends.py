"""Each backend profile's pod parts, engine command and extras, checked against hand-written expectations
(the golden manifests in test_builders cover whole examples; these name what each profile owns)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
import yaml
from triptych_contract import Backend
from triptych_contract.backends import BACKEND_FACTS
from triptych_operator.api import BUILTIN_MODELS, BuiltinModel, Role, WorkerRole, parse_spec
from triptych_operator.builders import build_role
from triptych_operator.builders.backends import PROFILES, profile_for
from triptych_operator.builders.backends.base import SIDECAR_RESOURCES, EngineServerProfile
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.from_env({})
GPU_BACKENDS = ("vllm", "sglang", "trtllm")


def _spec(backend: str, **extra: Any) -> Any:
    raw: dict[str, Any] = {
        "backend": backend,
        "model": {"name": "org/m"},
        "roles": {"encode": {}, "decode": {}},
    }
    raw.update(extra)
    return parse_spec(raw)


def _pod(spec: Any, role: Role) -> dict[str, Any]:
    children = build_role(Owner("d", "ns", "u"), spec, role, SETTINGS, rdma_available=False)
    deployment = next(c for c in children if c["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _names(items: list[dict[str, Any]]) -> list[str]:
    return [i["name"] for i in items]


def test_every_backend_of_the_api_has_a_profile() -> None:
    assert set(PROFILES) == set(get_args(Backend))
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert profile_for(name) is profile


def test_an_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match=r"'tgi' has no profile \(known: reference, sglang, trtllm, vllm\)"):
        profile_for("tgi")  # type: ignore[arg-type]


def test_settings_hold_overrides_and_defaults_come_from_the_contract() -> None:
    assert (SETTINGS.images, SETTINGS.shm_sizes) == ({}, {})
    assert SETTINGS.worker_images() == {b: f.default_image for b, f in BACKEND_FACTS.items()}
    shm = {b: SETTINGS.shm_size_for(b) for b in BACKEND_FACTS}
    assert shm == {"vllm": "16Gi", "sglang": "16Gi", "trtllm": "32Gi", "reference": "256Mi"}
    overridden = OperatorSettings.from_env({"TRIPTYCH_OPERATOR_SHM_VLLM": "8Gi"})
    assert overridden.shm_sizes == {"vllm": "8Gi"}
    assert (overridden.shm_size_for("vllm"), overridden.shm_size_for("sglang")) == ("8Gi", "16Gi")


def test_every_profile_reads_its_row_of_the_contracts_table() -> None:
    for name, profile in PROFILES.items():
        assert profile.facts is BACKEND_FACTS[name]


# ------------------------------------------------------------------------------------------------ reference


def test_reference_worker_is_one_container_with_a_prepared_model() -> None:
    pod = _pod(_spec("reference"), "encode")
    assert _names(pod["containers"]) == ["worker"]
    assert _names(pod["initContainers"]) == ["prepare-model"]
    assert pod["volumes"] == [
        {"name": "config", "configMap": {"name": "d-encode"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
        {"name": "model", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    (worker,) = pod["containers"]
    assert _names(worker["volumeMounts"]) == ["config", "shm", "model"]
    assert worker["resources"] == {"requests": {"cpu": "100m", "memory": "1Gi"}}
    assert pod["initContainers"][0]["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]


def test_reference_frontend_reads_the_model_too() -> None:
    pod = _pod(_spec("reference"), "frontend")
    (worker,) = pod["containers"]
    assert _names(pod["volumes"]) == ["config", "model"]  # no /dev/shm: the frontend moves no tensors
    assert _names(worker["volumeMounts"]) == ["config", "model"]
    assert worker["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}}
    assert _names(worker["ports"]) == ["http", "metrics"]


def test_reference_with_a_pvc_mounts_it_and_prepares_nothing() -> None:
    spec = _spec("reference", model={"name": "m", "source": {"pvc": "models", "path": "/tiny/"}})
    pod = _pod(spec, "decode")
    assert "initContainers" not in pod
    assert pod["volumes"][-1] == {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    assert PROFILES["reference"].model_ref(spec) == "/models/tiny"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"


def test_reference_adds_nothing_to_config_or_service() -> None:
    profile = PROFILES["reference"]
    assert profile.engine(_spec("reference"), "decode") is None
    assert profile.worker_config(_spec("reference"), "decode") == {}
    assert profile.service_ports("decode") == []


# ------------------------------------------------------------------------------------------- engine servers


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_engine_server_worker_pod_is_engine_plus_sidecar(backend: str) -> None:
    pod = _pod(_spec(backend), "decode")
    engine, sidecar = pod["containers"]
    assert (engine["name"], sidecar["name"]) == ("engine", "worker")
    assert "initContainers" not in pod
    assert engine["ports"][0] == {"name": "engine", "containerPort": 8001, "protocol": "TCP"}
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": "engine"}
    assert _names(engine["volumeMounts"]) == ["config", "shm"]
    assert engine["resources"]["limits"] == {"nvidia.com/gpu": 1}  # the devices go to the engine
    assert sidecar["command"] == ["triptych-worker", "decode", "--config", "/etc/triptych/config.yaml"]
    assert _names(sidecar["volumeMounts"]) == ["config"]
    assert sidecar["resources"] == SIDECAR_RESOURCES
    # The sidecar sees the engine's UCX settings: it reports whether they allow what was requested.
    ucx = {e["name"]: e["value"] for e in engine["env"] if e["name"].startswith("UCX_")}
    assert ucx == {"UCX_TLS": "tcp,cuda_copy"}
    assert {e["name"]: e["value"] for e in sidecar["env"] if e["name"].startswith("UCX_")} == ucx


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_engine_server_frontend_is_triptych_worker_alone(backend: str) -> None:
    profile = PROFILES[backend]  # type: ignore[index]
    assert isinstance(profile, EngineServerProfile)
    spec = _spec(backend)
    pod = _pod(spec, "frontend")
    (worker,) = pod["containers"]
    assert _names(pod["volumes"]) == ["config"]
    assert worker["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"}}
    assert profile.engine(spec, "frontend") is None
    assert profile.worker_config(spec, "frontend") == {}
    assert profile.service_ports("frontend") == []


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_engine_server_worker_config_and_service_name_the_engine(backend: str) -> None:
    profile = PROFILES[backend]  # type: ignore[index]
    assert profile.worker_config(_spec(backend), "decode") == {
        "engine": {"url": "http://127.0.0.1:8001", "healthPath": "/health"}
    }
    assert profile.service_ports("encode") == [
        {"name": "engine", "port": 8001, "targetPort": "engine", "protocol": "TCP"}
    ]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_engine_server_pvc_model_is_mounted_into_the_engine_only(backend: str) -> None:
    spec = _spec(backend, model={"name": "org/m", "source": {"pvc": "models", "path": "/qwen"}})
    engine, sidecar = _pod(spec, "decode")["containers"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in engine["volumeMounts"]
    assert _names(sidecar["volumeMounts"]) == ["config"]
    assert "/models/qwen" in engine["command"]


def test_user_extra_args_end_the_engine_command() -> None:
    spec = _spec("vllm", roles={"decode": {"extraArgs": ["--max-model-len", "4096"]}})
    command = PROFILES["vllm"].engine(spec, "decode")
    assert command is not None
    assert command.command[-2:] == ["--max-model-len", "4096"]


def test_trtllm_options_travel_in_the_configmap() -> None:
    spec = _spec("trtllm", roles={"prefill": {}, "decode": {}})
    children = build_role(Owner("d", "ns", "u"), spec, "prefill", SETTINGS, rdma_available=False)
    config_map = next(c for c in children if c["kind"] == "ConfigMap")
    assert set(config_map["data"]) == {"config.yaml", "engine.yaml"}
    assert '"disable_overlap_scheduler": true' in config_map["data"]["engine.yaml"]
    engine = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert engine["command"][-4:] == ["--config", "/etc/triptych/engine.yaml", "--max_batch_size", "256"]


@pytest.mark.parametrize(
    ("transport", "rdma_available", "requested"),
    [("rdma", False, "rdma"), ("auto", True, "rdma"), ("auto", False, "tcp"), ("tcp", True, "tcp")],
)
def test_the_requested_transport_is_written_for_the_worker_to_check(
    transport: str, rdma_available: bool, requested: str
) -> None:
    """What the worker compares UCX's choice against (its degraded-transport metric)."""
    rdma = {"resource": "rdma/ib", "count": 1} if transport == "rdma" else None
    networking = {"transport": transport, **({"rdma": rdma} if rdma else {})}
    spec = _spec("vllm", networking=networking, roles={"prefill": {}, "decode": {}})
    for role in ("frontend", "prefill", "decode"):
        children = build_role(Owner("d", "ns", "u"), spec, role, SETTINGS, rdma_available=rdma_available)
        config = yaml.safe_load(next(c for c in children if c["kind"] == "ConfigMap")["data"]["config.yaml"])
        assert config["dataPlane"] == {"requestedTransport": "tcp" if role == "frontend" else requested}


# ------------------------------------------------------------------------------------------- batch limit

# Each engine's option for roles.<role>.maxNumSeqs, written out by hand.
BATCH_FLAGS = {"vllm": "--max-num-seqs", "sglang": "--max-running-requests", "trtllm": "--max_batch_size"}


def _config(spec: Any, role: Role) -> dict[str, Any]:
    children = build_role(Owner("d", "ns", "u"), spec, role, SETTINGS, rdma_available=False)
    config_map = next(c for c in children if c["kind"] == "ConfigMap")
    return yaml.safe_load(config_map["data"]["config.yaml"])  # type: ignore[no-any-return]


def _engine_command(spec: Any, role: Role) -> list[str]:
    engine = _pod(spec, role)["containers"][0]
    assert engine["name"] == "engine"
    return engine["command"]  # type: ignore[no-any-return]


def _values(command: list[str], flag: str) -> list[str]:
    """Every value `flag` is given in `command`."""
    return [command[i + 1] for i, token in enumerate(command) if token == flag]


def test_the_default_batch_limits_are_the_ones_the_api_documents() -> None:
    defaults = {backend: profile.facts.default_max_num_seqs for backend, profile in PROFILES.items()}
    assert defaults == {"vllm": 256, "sglang": 256, "trtllm": 256, "reference": 8}
    description = WorkerRole.model_fields["max_num_seqs"].description or ""
    assert "256 for vllm, sglang and trtllm" in description
    assert "8 for reference" in description


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_an_engine_runs_256_requests_at_once_by_default(backend: str) -> None:
    spec = _spec(backend, roles={"encode": {}, "prefill": {}, "decode": {}})
    for role in ("encode", "prefill", "decode"):
        assert _values(_engine_command(spec, role), BATCH_FLAGS[backend]) == ["256"], role
        assert _config(spec, role)["serving"]["concurrency"] == 256, role
    # The frontend runs no engine and has its own limit (serving.maxConcurrentRequests, the worker's default).
    assert "concurrency" not in _config(spec, "frontend")["serving"]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_each_role_gives_its_engine_and_worker_its_own_max_num_seqs(backend: str) -> None:
    roles = {"encode": {"maxNumSeqs": 4}, "prefill": {"maxNumSeqs": 16}, "decode": {"maxNumSeqs": 64}}
    spec = _spec(backend, roles=roles)
    expected: list[tuple[Role, str, int]] = [("encode", "4", 4), ("prefill", "16", 16), ("decode", "64", 64)]
    for role, flag_value, concurrency in expected:
        assert _values(_engine_command(spec, role), BATCH_FLAGS[backend]) == [flag_value], role
        assert _config(spec, role)["serving"]["concurrency"] == concurrency, role


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_decode_that_also_prefills_runs_decodes_max_num_seqs(backend: str) -> None:
    """E/PD: the decode pod prefills too; roles.decode's value is the pod's, whatever encode's is."""
    spec = _spec(backend, roles={"encode": {"maxNumSeqs": 4}, "decode": {"maxNumSeqs": 32}})
    config = _config(spec, "decode")
    assert config["stages"] == ["prefill", "decode"]
    assert config["serving"]["concurrency"] == 32
    assert _values(_engine_command(spec, "decode"), BATCH_FLAGS[backend]) == ["32"]


@pytest.mark.parametrize(
    ("backend", "user_args"),
    [
        ("vllm", ["--max-model-len", "4096"]),
        ("sglang", ["--context-length", "4096"]),
        ("trtllm", ["--max_seq_len", "4096"]),
    ],
)
def test_the_users_extra_args_come_after_the_batch_limit(backend: str, user_args: list[str]) -> None:
    spec = _spec(backend, roles={"decode": {"maxNumSeqs": 12, "extraArgs": user_args}})
    assert _engine_command(spec, "decode")[-4:] == [BATCH_FLAGS[backend], "12", *user_args]


def test_vllm_e_pd_decode_command_with_max_num_seqs() -> None:
    spec = _spec("vllm", roles={"encode": {}, "decode": {"maxNumSeqs": 32}})
    assert _engine_command(spec, "decode") == [
        "python", "-m", "vllm.entrypoints.openai.api_server", "--model", "org/m", "--host", "0.0.0.0",
        "--port", "8001", "--served-model-name", "org/m", "--tensor-parallel-size", "1", "--enable-scale-out",
        "--ec-transfer-config", '{"ec_connector":"ECCPUConnector","ec_role":"ec_consumer"}',
        "--max-num-seqs", "32",
    ]  # fmt: skip


def test_reference_workers_run_8_requests_at_once_by_default_or_their_max_num_seqs() -> None:
    spec = _spec("reference", roles={"encode": {}, "prefill": {}, "decode": {}})
    for role in ("encode", "prefill", "decode"):
        assert _config(spec, role)["serving"]["concurrency"] == 8, role
    assert "concurrency" not in _config(spec, "frontend")["serving"]
    folded = _spec("reference", roles={"encode": {"maxNumSeqs": 2}, "decode": {"maxNumSeqs": 3}})
    assert _config(folded, "encode")["serving"]["concurrency"] == 2
    assert _config(folded, "decode")["serving"]["concurrency"] == 3  # E/PD: the decode pod prefills too
    # No engine command line: triptych-worker runs the engine in its own process and reads the config.
    (worker,) = _pod(folded, "decode")["containers"]
    assert worker["command"] == ["triptych-worker", "decode", "--config", "/etc/triptych/config.yaml"]


def test_the_workers_read_the_concurrency_as_their_serving_concurrency() -> None:
    worker_config_model = pytest.importorskip("triptych_workers.config").WorkerConfig
    spec = _spec("vllm", roles={"encode": {}, "decode": {"maxNumSeqs": 32}})
    assert worker_config_model.model_validate(_config(spec, "decode")).serving.concurrency == 32
    assert worker_config_model.model_validate(_config(spec, "encode")).serving.concurrency == 256


# ------------------------------------------------------------------------------------------------ builtins
def test_the_apis_builtin_models_are_the_ones_the_worker_image_writes() -> None:
    from triptych_workers.engines.builtin.catalog import BUILTINS

    assert set(BUILTIN_MODELS) == set(BUILTINS)
    assert set(get_args(BuiltinModel)) == set(BUILTINS)


@pytest.mark.parametrize("name", [n for n in BUILTIN_MODELS if n != "tiny-qwen2-vl"])
def test_a_vllm_builtin_is_written_by_its_init_container_where_engine_and_frontend_read_it(name: str) -> None:
    spec = _spec("vllm", model={"name": f"triptych/{name}", "source": {"builtin": name}})
    for role in ("frontend", "encode", "decode"):
        (prepare,) = _pod(spec, role)["initContainers"]
        assert prepare["command"] == [
            "python", "-m", "triptych_workers.engines.builtin.prepare",
            "--model", name, "--out", f"/models/{name}",
        ]  # fmt: skip
        assert _config(spec, role)["model"]["path"] == f"/models/{name}"
    assert _values(_engine_command(spec, "decode"), "--model") == [f"/models/{name}"]


def test_the_reference_builtin_keeps_its_own_writer_and_directory() -> None:
    spec = _spec("vllm", model={"name": "triptych/tiny-qwen2-vl", "source": {"builtin": "tiny-qwen2-vl"}})
    (prepare,) = _pod(spec, "decode")["initContainers"]
    assert prepare["command"] == [
        "python", "-m", "triptych_workers.engines.reference.prepare", "--out", "/models/reference"
    ]  # fmt: skip
    assert _values(_engine_command(spec, "decode"), "--model") == ["/models/reference"]
