"""vLLM: `vllm serve` in the engine container, with vLLM's own disaggregation switches.

- encode: `--mm-encoder-only` + ec_producer (the encoder cache leaves through the EC connector's /dev/shm
  tier; consumers pull it over NIXL from the EC side channel), eager, no prefix caching, a large batch.
- prefill (E/P/D, EP/D): kv_producer over NixlConnector; + ec_consumer when encode is its own pool.
- decode: kv_consumer when prefill is its own pool; in E/PD (it prefills too) ec_consumer and no KV
  connector; in EPD plain `vllm serve`.

`kv_both` is not generated: it is for a pool that is both producer and consumer beside other pools; a
decode that also prefills has no KV peer, so it gets no KV connector at all.
"""

from __future__ import annotations

from triptych_contract import ENGINE_PORT

from triptych_operator.builders.backends.base import (
    ALL_INTERFACES,
    EngineCommand,
    EngineServerProfile,
    compact_json,
    pod_ip_env,
)
from triptych_operator.builders.backends.disaggregation import role_flags
from triptych_operator.spec import MultimodalDeploymentSpec, Role, WorkerRole

IMAGE = "localhost/triptych-worker-vllm:0.1.0"
NIXL_SIDE_CHANNEL_PORT = 5600  # vLLM's default VLLM_NIXL_SIDE_CHANNEL_PORT (+ data-parallel rank)
EC_SIDE_CHANNEL_PORT = 5700
# vLLM's encoder-only instances batch many images per step (REFERENCE.md: a large --max-num-batched-tokens).
ENCODER_BATCHED_TOKENS = 114688


class VllmProfile(EngineServerProfile):
    name = "vllm"
    default_image = IMAGE
    shm_size = "16Gi"  # vLLM 8-16 GiB (REFERENCE.md)

    def command(self, spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
        flags = role_flags(spec, role)
        cmd = ["vllm", "serve", self.model_ref(spec), "--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
        cmd += ["--served-model-name", spec.model.name, "--tensor-parallel-size", str(worker.tensor_parallel)]
        if worker.data_parallel_local > 1:
            n = str(worker.data_parallel_local)
            cmd += ["--data-parallel-size", n, "--data-parallel-size-local", n]
        out = EngineCommand(cmd)
        if flags.encoder_only:
            ec = {"ec_connector": "ECCPUConnector", "ec_role": "ec_producer"}
            cmd += ["--mm-encoder-only", "--ec-transfer-config", compact_json(ec)]
            cmd += ["--enforce-eager", "--no-enable-prefix-caching"]
            cmd += ["--max-num-batched-tokens", str(ENCODER_BATCHED_TOKENS)]
        if flags.ec_consumer:
            ec = {"ec_connector": "ECCPUConnector", "ec_role": "ec_consumer"}
            cmd += ["--ec-transfer-config", compact_json(ec)]
        if flags.encoder_only or flags.ec_consumer:
            out.env += [pod_ip_env("VLLM_EC_SIDE_CHANNEL_HOST")]
            out.env += [{"name": "VLLM_EC_SIDE_CHANNEL_PORT", "value": str(EC_SIDE_CHANNEL_PORT)}]
            out.ports += [{"name": "ec-side", "containerPort": EC_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
        if flags.kv_producer or flags.kv_consumer:
            kv_role = "kv_producer" if flags.kv_producer else "kv_consumer"
            kv = {"kv_connector": "NixlConnector", "kv_role": kv_role}
            cmd += ["--kv-transfer-config", compact_json(kv)]
            out.env += [pod_ip_env("VLLM_NIXL_SIDE_CHANNEL_HOST")]
            out.env += [{"name": "VLLM_NIXL_SIDE_CHANNEL_PORT", "value": str(NIXL_SIDE_CHANNEL_PORT)}]
            out.ports += [{"name": "nixl-side", "containerPort": NIXL_SIDE_CHANNEL_PORT, "protocol": "TCP"}]
        return out


__all__ = ["VllmProfile"]
