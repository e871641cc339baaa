"""SGLang: `sglang.launch_server` in the engine container.

- encode: `--encoder-only` (SGLang's EPD disaggregation: a vision-encoder-only server).
- a role that consumes remote embeddings: `--language-only` (the language model without its encoder).
- prefill/decode pools: `--disaggregation-mode prefill|decode` with the NIXL transfer backend.
"""

from __future__ import annotations

from triptych_contract import ENGINE_PORT

from triptych_operator.api import MultimodalDeploymentSpec, Role, WorkerRole
from triptych_operator.builders.backends.base import (
    ALL_INTERFACES,
    EngineCommand,
    EngineServerProfile,
    pod_ip_env,
)
from triptych_operator.builders.backends.disaggregation import role_flags


class SglangProfile(EngineServerProfile):
    name = "sglang"
    max_num_seqs_flag = "--max-running-requests"

    def command(self, spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
        flags = role_flags(spec, role)
        cmd = ["python3", "-m", "sglang.launch_server", "--model-path", self.model_ref(spec)]
        cmd += ["--served-model-name", spec.model.name, "--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
        cmd += ["--tp-size", str(worker.tensor_parallel)]
        if worker.data_parallel_local > 1:
            cmd += ["--dp-size", str(worker.data_parallel_local)]
        if flags.encoder_only:
            cmd += ["--encoder-only"]
        if flags.ec_consumer:
            cmd += ["--language-only"]
        if flags.kv_producer or flags.kv_consumer:
            cmd += ["--disaggregation-mode", "prefill" if flags.kv_producer else "decode"]
            cmd += ["--disaggregation-transfer-backend", "nixl"]
        return EngineCommand(cmd, env=[pod_ip_env("SGLANG_HOST_IP")])


__all__ = ["SglangProfile"]
