"""Which disaggregation switches a present worker role needs, whatever the backend calls them."""

from __future__ import annotations

from dataclasses import dataclass

from triptych_operator.api import MultimodalDeploymentSpec, Role


@dataclass(frozen=True)
class RoleFlags:
    encoder_only: bool  # the encode pool: runs only the multimodal encoder
    ec_consumer: bool  # prefills with embeddings that an encode pool produced
    kv_producer: bool  # a prefill pool: hands its KV to decode
    kv_consumer: bool  # a decode pool beside a prefill pool: receives KV


def role_flags(spec: MultimodalDeploymentSpec, role: Role) -> RoleFlags:
    stages = spec.stages(role)
    return RoleFlags(
        encoder_only=role == "encode",
        ec_consumer=spec.roles.encode is not None and "prefill" in stages,
        kv_producer=role == "prefill",
        kv_consumer=role == "decode" and spec.roles.prefill is not None,
    )


__all__ = ["RoleFlags", "role_flags"]
