"""The only package that talks to the Kubernetes API (the `kubernetes` client; no kopf here).

I/O only (what to apply, prune or write is decided by `plan.py`). What the reconciler needs and nothing
more: server-side apply of desired children with ONE field manager and
``force=True`` (the operator owns what it builds; a human's `kubectl edit` of those fields is drift that the
next apply takes back), listing and deleting owned children, reading what status is computed from
(Deployments, Pods, Nodes), a merge patch of ``/status``, and Events.

Every call is synchronous (the client is urllib3-based); the async reconciler runs them in threads. API
errors are mapped to this package's exception tree (`errors`: `KubeError` and its subclasses by status
code), with the client's exception chained as the cause and response bodies truncated, so callers decide on
retry policy by type and never parse HTTP bodies.

- `client`: `Kube`, one method per request; `transport`: one request, a paginated list, the metrics hook;
- `paths`: the API paths of the kinds the operator manages; `permissions`: the RBAC that all of it needs;
- `errors`: the exception tree.
"""

from __future__ import annotations

from triptych_operator.kube.client import Kube
from triptych_operator.kube.errors import (
    Conflict,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    ServerError,
    TooManyRequests,
    Unavailable,
)
from triptych_operator.kube.paths import resource_of
from triptych_operator.kube.permissions import API_PERMISSIONS, VERBS, Permission
from triptych_operator.kube.transport import Listing, RequestObserver

__all__ = [
    "API_PERMISSIONS",
    "VERBS",
    "Conflict",
    "Forbidden",
    "Invalid",
    "Kube",
    "KubeError",
    "Listing",
    "NotFound",
    "Permission",
    "RequestObserver",
    "ServerError",
    "TooManyRequests",
    "Unavailable",
    "resource_of",
]
