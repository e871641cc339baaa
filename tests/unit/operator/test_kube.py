"""The kube module's pure parts: error mapping, merge patches, pruning choices, blockers from pods."""

from __future__ import annotations

from typing import Any

import pytest
from triptych_operator import kube
from triptych_operator.kube import ChildRef, NodeFacts, merge_patch, pod_blockers, stale_children


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [
        (404, kube.NotFound, False),
        (409, kube.Conflict, True),
        (422, kube.Invalid, False),
        (403, kube.Forbidden, False),
        (429, kube.TooManyRequests, True),
        (500, kube.ServerError, True),
        (503, kube.ServerError, True),
        (400, kube.KubeError, False),
    ],
)
def test_status_codes_map_to_types(status: int, kind: type[kube.KubeError], transient: bool) -> None:
    body = '{"kind":"Status","message":"' + "x" * 5000 + '"}'
    err = kube._status_error(status, "Reason", body, "apply Deployment ns/n", {"Retry-After": "7"})
    assert type(err) is kind
    assert err.transient is transient
    assert len(err.body) == kube.BODY_LIMIT
    assert len(str(err)) < kube.BODY_LIMIT + 100
    if isinstance(err, kube.TooManyRequests):
        assert err.retry_after == 7


def test_merge_patch_nulls_removed_keys() -> None:
    old = {"a": 1, "roles": {"encode": {"queueDepth": 3, "ready": 1}}, "gone": True}
    new = {"a": 1, "roles": {"encode": {"ready": 2}}}
    assert merge_patch(old, new) == {"roles": {"encode": {"queueDepth": None, "ready": 2}}, "gone": None}
    assert merge_patch(new, new) == {}


def test_stale_children_only_ours_and_undesired() -> None:
    desired = [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x-decode"}}]
    existing = [
        ChildRef("apps/v1", "Deployment", "x-decode", "u1", "owner"),
        ChildRef("apps/v1", "Deployment", "x-prefill", "u2", "owner"),
        ChildRef("apps/v1", "Deployment", "x-encode", "u3", "someone-else"),
    ]
    assert [r.name for r in stale_children(existing, desired, "owner")] == ["x-prefill"]


def _pod(role: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"triptych.dev/role": role}},
        "spec": {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["B200"]}
                                ]
                            }
                        ]
                    }
                }
            }
        },
        "status": status,
    }


def test_blockers_from_pods() -> None:
    unschedulable = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5"}
    pulling = {"name": "worker", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}
    pods = [
        _pod("decode", conditions=[unschedulable]),
        _pod("decode", conditions=[unschedulable]),
        _pod("frontend", containerStatuses=[pulling]),
        _pod("prefill", containerStatuses=[{"name": "w", "state": {"running": {}}}]),
    ]
    found = pod_blockers(pods, NodeFacts(frozenset(), frozenset({"H100"})))
    assert [(b.role, b.reason) for b in found] == [
        ("decode", "GPUProductUnavailable"),
        ("frontend", "ImagePullBackOff"),
    ]
    assert "nvidia.com/gpu.product=B200" in found[0].message
    # With the product present, the scheduler's own reason stands.
    found = pod_blockers(pods[:1], NodeFacts(frozenset(), frozenset({"B200"})))
    assert [(b.role, b.reason) for b in found] == [("decode", "Unschedulable")]
