"""One profile per serving backend, and the registry the generic builder looks them up in.

Adding a backend: write `builders/backends/<name>.py` with a `BackendProfile` subclass (an engine that is
its own server derives from `EngineServerProfile` and writes only `command` and `max_num_seqs_flag`), add
it to `PROFILES`, add its name to the contract's `Backend` and its row to the contract's table of backend
facts (`triptych_contract.backends`: devices, RDMA, default image and /dev/shm, batch default; the API's
CEL rules and the settings read it from there); on the workers' side, one entry in the engine registry.
The generic builder (`builders/objects.py`) and everything above it stay as they are.

Mapping of a role to each backend's switches (REFERENCE.md, "Backends' own disaggregation switches"; each
profile's module docstring has the details): encode -> vLLM `--mm-encoder-only` + ec_producer, SGLang
`--encoder-only`, TRT-LLM `mm_embedding_serve`; prefill -> kv_producer / `--disaggregation-mode prefill` /
`--server_role CONTEXT`; decode beside a prefill pool -> kv_consumer / decode mode / GENERATION; a pool
that does everything (EPD) -> the backend's plain server. KV moves over NIXL on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from triptych_contract import Backend

from triptych_operator.builders.backends.base import BackendProfile, EngineCommand, PodContext, PodParts
from triptych_operator.builders.backends.reference import ReferenceProfile
from triptych_operator.builders.backends.sglang import SglangProfile
from triptych_operator.builders.backends.trtllm import TrtllmProfile
from triptych_operator.builders.backends.vllm import VllmProfile

PROFILES: Mapping[Backend, BackendProfile] = MappingProxyType(
    {p.name: p for p in (VllmProfile(), SglangProfile(), TrtllmProfile(), ReferenceProfile())}
)


def profile_for(backend: Backend) -> BackendProfile:
    try:
        return PROFILES[backend]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"backend {backend!r} has no profile (known: {known})") from None


__all__ = ["PROFILES", "BackendProfile", "EngineCommand", "PodContext", "PodParts", "profile_for"]
