"""What the operator knows of the cluster, in the shape every layer passes it around: the kinds of child it
manages, a listed child, the facts read off the nodes, and the node labels and resources it reads.

Below the builders, the planner and the kube module alike, so that the one I/O module (`kube.py`) can
return these without importing the planner or the builders, and the planner can decide on them without
importing the I/O module.
"""

from __future__ import annotations

from dataclasses import dataclass

from triptych_operator.api import ROLE_KIND
from triptych_operator.naming import API_VERSION_FULL

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"

# The (apiVersion, kind) of every child the builders produce, in the order the kube module lists them.
DEPLOYMENT = ("apps/v1", "Deployment")
ROLE_SCALE = (API_VERSION_FULL, ROLE_KIND)
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    DEPLOYMENT,
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ROLE_SCALE,
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


@dataclass(frozen=True)
class NodeFacts:
    """What the planner needs to know about nodes: extended resources any node can allocate (RDMA for
    transport auto) and the GPU products present (to explain an unschedulable gpuProduct)."""

    resources: frozenset[str]
    gpu_products: frozenset[str]
    fake_nodes: frozenset[str] = frozenset()  # kwok's: their pods are never connected to


@dataclass(frozen=True)
class ChildRef:
    """One existing child as listed: enough to tell whether it is still desired and to delete it."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller_uid: str | None


__all__ = [
    "CHILD_KINDS",
    "DEPLOYMENT",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "ROLE_SCALE",
    "ChildRef",
    "NodeFacts",
]
