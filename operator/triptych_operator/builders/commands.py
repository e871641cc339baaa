"""Command lines of the backend engines, with each backend's own disaggregation switches.

For vllm/sglang/trtllm a worker pod runs two containers: `engine` (the backend's own server, listening on
ENGINE_PORT inside the pod, doing the KV/embedding transfers itself over NIXL) and `worker`
(`triptych-worker <role>`: probes and /metrics on METRICS_PORT, the request plane, and adapting the engine's
metrics to the contract's names). The reference backend runs only `worker`, whose engine is in-process.

Mapping of a role to each backend's switches (REFERENCE.md, "Backends' own disaggregation switches"):

- encode: vLLM `--mm-encoder-only` + ec_producer; SGLang `--encoder-only`; TRT-LLM `mm_embedding_serve`.
- prefill in E/P/D: vLLM kv_producer + ec_consumer; SGLang prefill mode + `--language-only`;
  TRT-LLM `serve --server_role CONTEXT`.
- prefill in EP/D (it also encodes): vLLM kv_producer; SGLang prefill mode; TRT-LLM CONTEXT.
- decode in E/P/D and EP/D: vLLM kv_consumer; SGLang decode mode (+ `--language-only` in E/P/D);
  TRT-LLM `serve --server_role GENERATION`.
- decode in E/PD (prefills too): vLLM ec_consumer, no KV connector; SGLang `--language-only`; TRT-LLM serve.
- decode in EPD (does everything): plain `vllm serve`, `sglang.launch_server`, `trtllm-serve serve`.

vLLM's `kv_both` is not generated: it is for a pool that is both producer and consumer beside other pools;
a decode that also prefills (E/PD, EPD) has no KV peer, so it gets no KV connector at all. KV transfers use
NIXL on every backend (vLLM NixlConnector, SGLang `--disaggregation-transfer-backend nixl`, TRT-LLM
`cache_transceiver_config.backend: NIXL`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from triptych_contract import CONFIG_DIR, ENGINE_PORT

from triptych_operator.spec import MultimodalDeploymentSpec, Role, WorkerRole

MODEL_MOUNT = "/models"
# The reference backend's model: written into an emptyDir at MODEL_MOUNT by the pod's init container (the
# fixed-seed weights are the same in every pod, so each pod writes its own copy; no shared volume needed).
REFERENCE_MODEL_DIR = f"{MODEL_MOUNT}/reference"
REFERENCE_PREPARE_COMMAND = [
    "python",
    "-m",
    "triptych_workers.engines.reference.prepare",
    "--out",
    REFERENCE_MODEL_DIR,
]
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - engines serve the pod network (the worker and the frontend call them)
ENGINE_HEALTH_PATH = "/health"  # vLLM, SGLang and trtllm-serve all serve it on their HTTP port
NIXL_SIDE_CHANNEL_PORT = 5600  # vLLM's default VLLM_NIXL_SIDE_CHANNEL_PORT (+ data-parallel rank)
EC_SIDE_CHANNEL_PORT = 5700
ENGINE_CONFIG_FILE = "engine.yaml"  # extra key of the role's ConfigMap (TRT-LLM's --config)
# vLLM's encoder-only instances batch many images per step (REFERENCE.md: a large --max-num-batched-tokens).
VLLM_ENCODER_BATCHED_TOKENS = 114688


def _pod_ip(name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


@dataclass
class EngineCommand:
    """What the engine container runs and what it needs beside the command line."""

    command: list[str]
    env: list[dict[str, Any]] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # extra ConfigMap keys mounted beside config.yaml


def model_ref(spec: MultimodalDeploymentSpec) -> str:
    """What the engine loads: a path under the PVC mount, a hub id, or (reference backend without a PVC)
    the directory its init container prepares."""
    src = spec.model.source
    if src is not None and src.pvc is not None:
        return MODEL_MOUNT + (src.path or "").rstrip("/")
    if spec.backend == "reference":
        return REFERENCE_MODEL_DIR
    if src is not None and src.hub is not None:
        return src.hub
    return spec.model.name


def _roles_flags(spec: MultimodalDeploymentSpec, role: Role) -> tuple[bool, bool, bool, bool]:
    """(encoder-only, consumes remote embeddings, produces KV, consumes KV) for a present worker role."""
    stages = spec.stages(role)
    has_encode, has_prefill = spec.roles.encode is not None, spec.roles.prefill is not None
    encoder_only = role == "encode"
    ec_consumer = has_encode and "prefill" in stages
    kv_producer = role == "prefill"
    kv_consumer = role == "decode" and has_prefill
    return encoder_only, ec_consumer, kv_producer, kv_consumer


def vllm_command(spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
    encoder_only, ec_consumer, kv_producer, kv_consumer = _roles_flags(spec, role)
    cmd = ["vllm", "serve", model_ref(spec), "--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
    cmd += ["--served-model-name", spec.model.name, "--tensor-parallel-size", str(worker.tensor_parallel)]
    if worker.data_parallel_local > 1:
        n = str(worker.data_parallel_local)
        cmd += ["--data-parallel-size", n, "--data-parallel-size-local", n]
    out = EngineCommand(cmd)
    if encoder_only:
        # Encoder disaggregation: the encoder instance produces embeddings into the EC connector's /dev/shm
        # tier; consumers pull them over NIXL from the side channel below.
        ec = {"ec_connector": "ECCPUConnector", "ec_role": "ec_producer"}
        cmd += ["--mm-encoder-only", "--ec-transfer-config", json.dumps(ec, separators=(",", ":"))]
        cmd += ["--enforce-eager", "--no-enable-prefix-caching"]
        cmd += ["--max-num-batched-tokens", str(VLLM_ENCODER_BATCHED_TOKENS)]
    if ec_consumer:
        ec = {"ec_connector": "ECCPUConnector", "ec_role": "ec_consumer"}
        cmd += ["--ec-transfer-config", json.dumps(ec, separators=(",", ":"))]
    if encoder_only or ec_consumer:
        out.env += [_pod_ip("VLLM_EC_SIDE_CHANNEL_HOST")]
        out.env += [{"name": "VLLM_EC_SIDE_CHANNEL_PORT", "value": str(EC_SIDE_CHANNEL_PORT)}]
        out.ports += [{"name": "ec-side", "containerPort": EC_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
    if kv_producer or kv_consumer:
        # Prefill/decode over NIXL: prefill produces KV (do_remote_decode), decode consumes it.
        kv = {"kv_connector": "NixlConnector", "kv_role": "kv_producer" if kv_producer else "kv_consumer"}
        cmd += ["--kv-transfer-config", json.dumps(kv, separators=(",", ":"))]
        out.env += [_pod_ip("VLLM_NIXL_SIDE_CHANNEL_HOST")]
        out.env += [{"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_CHANNEL_PORT)}]
        out.ports += [{"name": "nixl-side", "containerPort": NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
    return out


def sglang_command(spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
    encoder_only, ec_consumer, kv_producer, kv_consumer = _roles_flags(spec, role)
    cmd = ["python3", "-m", "sglang.launch_server", "--model-path", model_ref(spec)]
    cmd += ["--served-model-name", spec.model.name, "--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
    cmd += ["--tp-size", str(worker.tensor_parallel)]
    if worker.data_parallel_local > 1:
        cmd += ["--dp-size", str(worker.data_parallel_local)]
    if encoder_only:
        cmd += ["--encoder-only"]  # SGLang EPD disaggregation: a vision-encoder-only server
    if ec_consumer:
        cmd += ["--language-only"]  # the language model without its encoder; embeddings come from encode
    if kv_producer or kv_consumer:
        cmd += ["--disaggregation-mode", "prefill" if kv_producer else "decode"]
        cmd += ["--disaggregation-transfer-backend", "nixl"]
    return EngineCommand(cmd, env=[_pod_ip("SGLANG_HOST_IP")])


def trtllm_command(spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
    encoder_only, _, kv_producer, kv_consumer = _roles_flags(spec, role)
    if encoder_only:
        # TRT-LLM's multimodal encoder server (EPD): returns embeddings for the context server.
        cmd = ["trtllm-serve", "mm_embedding_serve", model_ref(spec), "--host", ALL_INTERFACES]
        return EngineCommand([*cmd, "--port", str(ENGINE_PORT)])
    cmd = ["trtllm-serve", "serve", model_ref(spec), "--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
    cmd += ["--backend", "pytorch", "--served_model_name", spec.model.name]
    cmd += ["--tp_size", str(worker.tensor_parallel * worker.data_parallel_local)]
    engine: dict[str, Any] = {}
    if worker.data_parallel_local > 1:
        engine["enable_attention_dp"] = True  # data-parallel ranks inside the pod = attention DP
    if kv_producer or kv_consumer:
        # Disaggregated context (prefill) / generation (decode) servers; KV moves through NIXL.
        cmd += ["--server_role", "CONTEXT" if kv_producer else "GENERATION"]
        engine["cache_transceiver_config"] = {"backend": "NIXL"}
        if kv_producer:
            engine["disable_overlap_scheduler"] = True
    out = EngineCommand(cmd)
    if engine:
        cmd += ["--config", f"{CONFIG_DIR}/{ENGINE_CONFIG_FILE}"]
        out.files[ENGINE_CONFIG_FILE] = json.dumps(engine, sort_keys=True, indent=2) + "\n"
    return out


def engine_command(spec: MultimodalDeploymentSpec, role: Role) -> EngineCommand | None:
    """The engine container's command for a GPU backend's worker role; None for reference and the frontend."""
    worker = spec.worker(role) if role != "frontend" else None
    if worker is None or spec.backend == "reference":
        return None
    build = {"vllm": vllm_command, "sglang": sglang_command, "trtllm": trtllm_command}[spec.backend]
    out = build(spec, role, worker)
    out.command += list(worker.extra_args)
    return out
