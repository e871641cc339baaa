"""The CPU reference backend: triptych-worker runs the tiny fixed-seed Qwen2-VL-shaped model in its own
process, so every pod is one container; the frontend loads the same model directory for its tokenizer and
chat template.

The model: without a PVC, an init container `prepare-model` writes it (a few MB, seconds) into an emptyDir
at MODEL_MOUNT; the fixed-seed weights are the same in every pod, so each pod writes its own copy and no
shared volume is needed. A `model.source.pvc` is mounted instead when given.
"""

from __future__ import annotations

from triptych_operator.api import REFERENCE_BUILTIN, MultimodalDeploymentSpec
from triptych_operator.builders.backends.base import (
    BUILTIN_MODEL_DIR,
    FRONTEND_REQUESTS,
    BackendProfile,
    EngineCommand,
    PodContext,
    PodParts,
    main_worker_container,
)

# The reference model is tiny: a small CPU request lets a demo and a test deployment share the 2-core node.
REFERENCE_WORKER_REQUESTS = {"cpu": "100m", "memory": "1Gi"}


class ReferenceProfile(BackendProfile):
    name = "reference"

    def model_ref(self, spec: MultimodalDeploymentSpec) -> str:
        src = spec.model.source
        if src is not None and src.pvc is not None:
            return super().model_ref(spec)
        return BUILTIN_MODEL_DIR

    def pod_parts(self, ctx: PodContext, engine: EngineCommand | None) -> PodParts:
        # Every role reads the model, the frontend too (it renders the chat template with the tokenizer).
        volumes, mounts, init = ctx.local_model(builtin=REFERENCE_BUILTIN)
        requests = FRONTEND_REQUESTS if ctx.worker is None else REFERENCE_WORKER_REQUESTS
        return PodParts([main_worker_container(ctx, requests, mounts)], init, volumes)


__all__ = ["ReferenceProfile"]
