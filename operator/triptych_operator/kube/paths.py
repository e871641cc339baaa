"""The API paths of what the operator reads and writes, and the names of a request for the metrics."""

from __future__ import annotations

from triptych_contract import API_GROUP, API_VERSION

from triptych_operator.api import ROLE_PLURAL
from triptych_operator.cluster import DEPLOYMENT, ROLE_SCALE

# The API paths of the kinds the builders produce (cluster.CHILD_KINDS; no discovery needed: they are core
# kinds and our own). A unit test keeps the two the same.
PATHS: dict[tuple[str, str], tuple[str, str]] = {
    DEPLOYMENT: ("/apis/apps/v1", "deployments"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ROLE_SCALE: (f"/apis/{API_GROUP}/{API_VERSION}", ROLE_PLURAL),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
}
CR_PREFIX = f"/apis/{API_GROUP}/{API_VERSION}"


def collection(api_version: str, kind: str, namespace: str) -> str:
    try:
        prefix, plural = PATHS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"kind {api_version}/{kind} is not one the operator manages") from None
    return f"{prefix}/namespaces/{namespace}/{plural}"


def resource_of(path: str) -> str:
    """The resource an API path addresses, as RBAC names it: `deployments`, `multimodaldeployments/status`,
    `nodes` (the label of the request metrics)."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return ""
    return f"{rest[0]}/status" if len(rest) > 2 and rest[-1] == "status" else rest[0]


def operation_of(method: str, content_type: str) -> str:
    if method == "PATCH":
        return "apply" if content_type == "application/apply-patch+yaml" else "patch"
    return {"GET": "get", "POST": "create", "DELETE": "delete"}.get(method, method.lower())
