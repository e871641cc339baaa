"""The kube module's error mapping (its only logic: everything else it does is I/O)."""

from __future__ import annotations

import pytest
from triptych_operator import kube
from triptych_operator.cluster import CHILD_KINDS


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
    err = kube.errors.status_error(status, "Reason", body, "apply Deployment ns/n", {"Retry-After": "7"})
    assert type(err) is kind
    assert err.transient is transient
    assert len(err.body) == kube.errors.BODY_LIMIT
    assert len(str(err)) < kube.errors.BODY_LIMIT + 100
    if isinstance(err, kube.TooManyRequests):
        assert err.retry_after == 7


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/nodes", "nodes"),
        ("/api/v1/namespaces/ns/pods", "pods"),
        ("/api/v1/namespaces/ns/events", "events"),
        ("/apis/apps/v1/namespaces/ns/deployments/x-decode", "deployments"),
        (
            "/apis/triptych.dev/v1alpha1/namespaces/ns/multimodaldeployments/x/status",
            "multimodaldeployments/status",
        ),
        (
            "/apis/triptych.dev/v1alpha1/namespaces/ns/multimodalroles/x-decode/status",
            "multimodalroles/status",
        ),
        ("/apis/kopf.dev/v1/clusterkopfpeerings/triptych", "clusterkopfpeerings"),
    ],
)
def test_request_metrics_name_the_resource_as_rbac_does(path: str, resource: str) -> None:
    assert kube.resource_of(path) == resource


def test_every_child_kind_has_an_api_path_and_nothing_else_does() -> None:
    assert tuple(kube.paths.PATHS) == CHILD_KINDS
