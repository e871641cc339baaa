"""Helpers of the operator's e2e tests: rewrite examples so they land on the kwok GPU nodes, a pre-bound
models PVC, conditions. The `operator` fixture is in tests/e2e/conftest.py (shared with tests/e2e/pipeline).
"""

from __future__ import annotations

import copy
from typing import Any

from tests.e2e.conftest import OPERATOR_NS, OPERATOR_SELECTOR
from tests.kube import Kube, wait_for

__all__ = ["OPERATOR_NS", "OPERATOR_SELECTOR", "condition", "models_volume", "on_kwok", "operator_pods"]
# kwok GPU nodes: pods there become Ready without running anything.
KWOK = {"type": "kwok"}
KWOK_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SMALL = {"requests": {"cpu": "10m", "memory": "16Mi"}}


def operator_pods(kube: Kube) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.items("pods", OPERATOR_NS, OPERATOR_SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
    ]


def on_kwok(obj: dict[str, Any], namespace: str, *, cpu_roles_small: bool = False) -> dict[str, Any]:
    """`obj` in `namespace`, with the roles that would run on the real node (the frontend; every role of the
    reference backend or of a CPU deployment) pinned to the kwok nodes instead. These tests are about
    reconciling, not serving (tests/e2e/pipeline and tests/e2e/vllm run those pods for real): on kwok
    nodes a pod is Ready at once, so drift, scaling, restarts and 100 objects at once stay fast and do not
    load the 2-core real node with torch."""
    out = copy.deepcopy(obj)
    out["metadata"]["namespace"] = namespace
    roles = out["spec"]["roles"]
    on_cpu = out["spec"]["backend"] == "reference" or out["spec"].get("device") == "cpu"
    cpu_roles = list(roles) if on_cpu else ["frontend"]
    for role in cpu_roles:
        spec = roles.setdefault(role, {})
        spec["nodeSelector"] = dict(KWOK)
        spec["tolerations"] = [dict(KWOK_TOLERATION)]
        if cpu_roles_small:
            spec["resources"] = copy.deepcopy(SMALL)
    return out


def models_volume(kube: Kube, namespace: str) -> None:
    """A bound PVC `models` (pre-bound to a hostPath PV: nothing mounts it on kwok nodes)."""
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-models", "labels": {"triptych.dev/test": "true"}},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": "/nonexistent/models"},
            "claimRef": {"namespace": namespace, "name": "models"},
        },
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "storageClassName": "",
            "volumeName": f"{namespace}-models",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    kube.apply(pv, pvc)
    wait_for(
        "PVC models bound",
        lambda: (kube.get("pvc", "models", namespace) or {}).get("status", {}).get("phase") == "Bound",
        timeout=60,
    )


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c  # type: ignore[no-any-return]
    return {}
