"""Pure builders: a parsed spec in, the desired child objects out (plain dicts for server-side apply).

No I/O here: everything a builder needs from the cluster (whether nodes advertise RDMA, the autoscaler's
replica decisions) is passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from triptych_operator.api import MultimodalDeploymentSpec
from triptych_operator.builders.network_policy import build_network_policy
from triptych_operator.builders.objects import (
    RoleBuild,
    build_config_map,
    build_deployment,
    build_role,
    build_service,
    config_hash,
    worker_config,
)
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings


def build_children(
    owner: Owner,
    spec: MultimodalDeploymentSpec,
    settings: OperatorSettings,
    *,
    rdma_available: bool = False,
    replicas: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Every desired child of one MultimodalDeployment: per present role (pipeline order) its ConfigMap,
    Service and Deployment, then the deployment's egress NetworkPolicy (unless spec.networkPolicy.egress is
    Unrestricted), each with a controller owner reference to `owner`.

    `rdma_available` resolves `networking.transport: auto` (does any node advertise the RDMA resource?).
    `replicas` maps role -> replica count decided by the autoscaler; roles not in it use the spec's.
    """
    out: list[dict[str, Any]] = []
    for role in spec.present_roles():
        out += build_role(
            owner,
            spec,
            role,
            settings,
            rdma_available=rdma_available,
            replicas=None if replicas is None else replicas.get(role),
        )
    if spec.network_policy.egress == "Restricted":
        out.append(build_network_policy(owner, spec, settings))
    return out


__all__ = [
    "RoleBuild",
    "build_children",
    "build_config_map",
    "build_deployment",
    "build_network_policy",
    "build_role",
    "build_service",
    "config_hash",
    "worker_config",
]
