"""TensorRT-LLM: `trtllm-serve` in the engine container; options beyond the command line go into
`engine.yaml`, an extra key of the role's ConfigMap passed with `--config`.

- encode: `trtllm-serve mm_embedding_serve` (its multimodal encoder server, EPD).
- prefill/decode pools: `--server_role CONTEXT|GENERATION` with the NIXL cache transceiver.
- data-parallel ranks inside a pod: attention DP over tp_size = TP x DP.
"""

from __future__ import annotations

import json
from typing import Any

from triptych_contract import CONFIG_DIR, ENGINE_PORT

from triptych_operator.api import MultimodalDeploymentSpec, Role, WorkerRole
from triptych_operator.builders.backends.base import ALL_INTERFACES, EngineCommand, EngineServerProfile
from triptych_operator.builders.backends.disaggregation import role_flags

ENGINE_CONFIG_FILE = "engine.yaml"


class TrtllmProfile(EngineServerProfile):
    name = "trtllm"
    max_num_seqs_flag = "--max_batch_size"  # both serve and mm_embedding_serve take it

    def command(self, spec: MultimodalDeploymentSpec, role: Role, worker: WorkerRole) -> EngineCommand:
        flags = role_flags(spec, role)
        host_port = ["--host", ALL_INTERFACES, "--port", str(ENGINE_PORT)]
        if flags.encoder_only:
            return EngineCommand(["trtllm-serve", "mm_embedding_serve", self.model_ref(spec), *host_port])
        cmd = ["trtllm-serve", "serve", self.model_ref(spec), *host_port]
        # No served-name flag: trtllm-serve serves the model under its positional MODEL (a path for a PVC),
        # and the sidecar asks the engine its name (/v1/models) rather than assuming the spec's.
        cmd += ["--backend", "pytorch"]
        cmd += ["--tp_size", str(worker.tensor_parallel * worker.data_parallel_local)]
        engine: dict[str, Any] = {}
        if worker.data_parallel_local > 1:
            engine["enable_attention_dp"] = True
        if flags.kv_producer or flags.kv_consumer:
            cmd += ["--server_role", "CONTEXT" if flags.kv_producer else "GENERATION"]
            engine["cache_transceiver_config"] = {"backend": "NIXL"}
            if flags.kv_producer:
                engine["disable_overlap_scheduler"] = True
        out = EngineCommand(cmd)
        if engine:
            cmd += ["--config", f"{CONFIG_DIR}/{ENGINE_CONFIG_FILE}"]
            out.files[ENGINE_CONFIG_FILE] = json.dumps(engine, sort_keys=True, indent=2) + "\n"
        return out


__all__ = ["TrtllmProfile"]
