"""Names and labels of the objects the operator derives from a MultimodalDeployment.

Every child of `<name>` for role `<role>` is named `<name>-<role>` (Deployment, Service and ConfigMap share
the name: they are different kinds). `spec.MAX_NAME_LENGTH` keeps the longest (`<name>-frontend`) within a
63-character DNS-1035 label. Selector labels are the contract's deployment and role labels only, so they never
change across updates (a Deployment's selector is immutable); the descriptive `app.kubernetes.io/*` labels
and the backend label go beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from triptych_contract import (
    API_GROUP,
    API_VERSION,
    KIND,
    LABEL_BACKEND,
    LABEL_DEPLOYMENT,
    LABEL_ROLE,
    Backend,
)

from triptych_operator.api import Role

APP_NAME = "triptych"
MANAGED_BY = "triptych-operator"
FIELD_MANAGER = "triptych-operator"
# Only for a new MultimodalRole's first spec.replicas (kube.seed_replicas): never used by the main apply.
SEED_FIELD_MANAGER = "triptych-operator-seed"
API_VERSION_FULL = f"{API_GROUP}/{API_VERSION}"


@dataclass(frozen=True)
class Owner:
    """The MultimodalDeployment every child belongs to: what each child's name, namespace and owner
    reference are made from."""

    name: str
    namespace: str
    uid: str


def child_name(name: str, role: Role) -> str:
    """Name of the Deployment, Service and ConfigMap of one role."""
    return f"{name}-{role}"


def service_host(name: str, role: Role, namespace: str) -> str:
    """In-cluster DNS name of a role's Service (without the cluster domain, so it works in any cluster)."""
    return f"{child_name(name, role)}.{namespace}.svc"


def selector_labels(name: str, role: Role) -> dict[str, str]:
    """Labels that select one role's pods; stable for the object's lifetime."""
    return {LABEL_DEPLOYMENT: name, LABEL_ROLE: role}


def owned_selector(name: str) -> dict[str, str]:
    """Labels shared by every child of one MultimodalDeployment (to list them, e.g. to prune)."""
    return {LABEL_DEPLOYMENT: name}


def deployment_labels(name: str, backend: Backend) -> dict[str, str]:
    """The labels of a child that belongs to the whole deployment, not one role (its NetworkPolicy)."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_BACKEND: backend,
        **owned_selector(name),
    }


def labels(name: str, role: Role, backend: Backend) -> dict[str, str]:
    """All labels of a role's objects and pods."""
    return {
        **deployment_labels(name, backend),
        "app.kubernetes.io/component": role,
        **selector_labels(name, role),
    }


def network_policy_name(name: str) -> str:
    """Name of the deployment's egress NetworkPolicy (no role is called `egress`)."""
    return f"{name}-egress"


def owner_reference(name: str, uid: str) -> dict[str, object]:
    """The controller owner reference every child carries (deleting the parent deletes the children)."""
    return {
        "apiVersion": API_VERSION_FULL,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
