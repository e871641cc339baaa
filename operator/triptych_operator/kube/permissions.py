"""RBAC: exactly what the kube module requests, rendered with kopf's own needs into the chart's ClusterRole
by `hack/gen-rbac` (tests/unit/operator/test_rbac.py drives every method and checks both ways)."""

from __future__ import annotations

from dataclasses import dataclass

from triptych_contract import API_GROUP, PLURAL

from triptych_operator.api import ROLE_PLURAL
from triptych_operator.kube.paths import PATHS

# The verbs an RBAC rule may grant here, in the order the generated ClusterRole lists them. No wildcards.
VERBS: tuple[str, ...] = ("get", "list", "watch", "create", "patch", "update", "delete")


@dataclass(frozen=True)
class Permission:
    """One RBAC grant: `verbs` on `resource` (a plural, or `plural/subresource`) in API group `group` ("" is
    core), and `why` the operator needs it (a comment above the rule in the chart's ClusterRole)."""

    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


# Exactly what this module's methods request (tests/unit/operator/test_rbac.py drives every method and checks
# both ways); `hack/gen-rbac` renders it, with kopf's own needs (`handlers.KOPF_PERMISSIONS`), into the chart.
API_PERMISSIONS: tuple[Permission, ...] = (
    Permission(API_GROUP, PLURAL, ("get",), "The reconciler reads the MultimodalDeployment (get_owner)."),
    Permission(
        API_GROUP, f"{PLURAL}/status", ("patch",), "The reconciler merge-patches its /status (patch_status)."
    ),
    *(
        Permission(
            "" if prefix == "/api/v1" else prefix.split("/")[2],
            plural,
            ("list", "create", "patch", "delete"),
            "Children: server-side apply (patch; create when new), listed by owner label, pruned (delete).",
        )
        for prefix, plural in PATHS.values()
    ),
    Permission(
        API_GROUP,
        ROLE_PLURAL,
        ("patch",),
        "A new MultimodalRole's first spec.replicas, under its own field manager (seed_replicas).",
    ),
    Permission(
        API_GROUP,
        f"{ROLE_PLURAL}/status",
        ("patch",),
        "A MultimodalRole's /status carries the replicas and selector its /scale reports "
        "(patch_child_status).",
    ),
    Permission("", "pods", ("list",), "Status is computed from pods (scheduling, image pulls, crash loops)."),
    Permission(
        "apps",
        "replicasets",
        ("list",),
        "The autoscaler reads the Ready pods of each role's current ReplicaSet.",
    ),
    Permission(
        "",
        "nodes",
        ("list",),
        "transport auto (does any node advertise the RDMA resource?) and GPU products.",
    ),
    Permission("", "events", ("create",), "Our Events on the MultimodalDeployment (emit_event)."),
    Permission(
        "kopf.dev",
        "clusterkopfpeerings",
        ("get",),
        "The autoscaler reads the peering object: it runs only in the peer kopf lets work (peering).",
    ),
)
