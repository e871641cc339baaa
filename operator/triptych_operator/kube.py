"""The only module that talks to the Kubernetes API (the `kubernetes` client; no kopf here).

I/O only (what to apply, prune or write is decided by `plan.py`). What the reconciler needs and nothing
more: server-side apply of desired children with ONE field manager and
``force=True`` (the operator owns what it builds; a human's `kubectl edit` of those fields is drift that the
next apply takes back), listing and deleting owned children, reading what status is computed from
(Deployments, Pods, Nodes), a merge patch of ``/status``, and Events.

Every call is synchronous (the client is urllib3-based); the async reconciler runs them in threads. API
errors are mapped to this module's exception tree (`KubeError` and its subclasses by status code), with the
client's exception chained as the cause and response bodies truncated, so callers decide on retry policy by
type and never parse HTTP bodies.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from triptych_contract import API_GROUP, API_VERSION, KIND, LABEL_DEPLOYMENT, PLURAL

from triptych_operator.api import ROLE_PLURAL
from triptych_operator.cluster import (
    CHILD_KINDS,
    DEPLOYMENT,
    GPU_PRODUCT_LABEL,
    ROLE_SCALE,
    ChildRef,
    NodeFacts,
)
from triptych_operator.naming import FIELD_MANAGER, MANAGED_BY, SEED_FIELD_MANAGER

BODY_LIMIT = 512  # characters of a response body kept in an error message
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds: no request may hang a reconcile forever
NODE_FACTS_TTL = 10.0  # seconds; nodes change rarely, and every reconcile would otherwise list them
# kwok marks the nodes it simulates; their pods' IPs are fake and must never be connected to.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


# ------------------------------------------------------------------------------------------------ errors


class KubeError(Exception):
    """An API request failed. `status` is the HTTP status (0 when no response came back)."""

    transient = False

    def __init__(self, message: str, *, status: int = 0, reason: str = "", body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body[:BODY_LIMIT]
        super().__init__(message)


class NotFound(KubeError):
    """404: the object (or its namespace, or the resource type) does not exist."""


class Conflict(KubeError):
    """409: a precondition or resourceVersion conflict (or AlreadyExists); retrying reads afresh."""

    transient = True


class Invalid(KubeError):
    """422: the API server refused the object (schema, CEL, immutable field). Permanent for that input."""


class Forbidden(KubeError):
    """401/403: RBAC does not allow the request (the chart's ClusterRole lacks a verb)."""


class TooManyRequests(KubeError):
    """429: API priority and fairness or an eviction budget said later; `retry_after` in seconds."""

    transient = True

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(KubeError):
    """5xx: the API server (or etcd, or a webhook) failed; transient."""

    transient = True


class Unavailable(KubeError):
    """No response: connection refused/reset, timeout, TLS failure (API server restarting)."""

    transient = True


def _status_error(  # noqa: PLR0911 - one return per status class
    status: int, reason: str, body: str, what: str, headers: Mapping[str, str]
) -> KubeError:
    message = f"{what}: {status} {reason}"
    try:
        detail = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        detail = ""
    if detail:
        message += f": {detail[:BODY_LIMIT]}"
    kwargs: dict[str, Any] = {"status": status, "reason": reason, "body": body}
    if status == 404:
        return NotFound(message, **kwargs)
    if status == 409:
        return Conflict(message, **kwargs)
    if status == 422:
        return Invalid(message, **kwargs)
    if status in (401, 403):
        return Forbidden(message, **kwargs)
    if status == 429:
        try:
            retry_after = float(headers.get("Retry-After", "1"))
        except ValueError:
            retry_after = 1.0
        return TooManyRequests(message, retry_after=retry_after, **kwargs)
    if status >= 500:
        return ServerError(message, **kwargs)
    return KubeError(message, **kwargs)


# ------------------------------------------------------------------------------------------------ paths

# The API paths of the kinds the builders produce (cluster.CHILD_KINDS; no discovery needed: they are core
# kinds and our own). A unit test keeps the two the same.
_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    DEPLOYMENT: ("/apis/apps/v1", "deployments"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ROLE_SCALE: (f"/apis/{API_GROUP}/{API_VERSION}", ROLE_PLURAL),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
}
_CR_PREFIX = f"/apis/{API_GROUP}/{API_VERSION}"


# ------------------------------------------------------------------------------------------------ RBAC

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
        for prefix, plural in _PATHS.values()
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


def _collection(api_version: str, kind: str, namespace: str) -> str:
    try:
        prefix, plural = _PATHS[(api_version, kind)]
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


def _operation(method: str, content_type: str) -> str:
    if method == "PATCH":
        return "apply" if content_type == "application/apply-patch+yaml" else "patch"
    return {"GET": "get", "POST": "create", "DELETE": "delete"}.get(method, method.lower())


# Told of every request: (operation, resource, seconds). main hands the operator's metrics in.
RequestObserver = Callable[[str, str, float], None]


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Listing(list[dict[str, Any]]):
    """The items of a list request, with the snapshot's resourceVersion (what a cache fed by watches needs
    to tell an object created after the listing from one deleted before it)."""

    resource_version: str = ""


@dataclass
class _Cached:
    value: NodeFacts | None = None
    at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


# ------------------------------------------------------------------------------------------------ client


class Kube:
    """Synchronous access to the API for one operator process. Thread-safe (urllib3's pool is)."""

    def __init__(self, api_client: client.ApiClient, *, observe: RequestObserver | None = None) -> None:
        self._api = api_client
        self._nodes = _Cached()
        self._observe = observe

    @classmethod
    def from_environment(cls, *, connections: int = 16, observe: RequestObserver | None = None) -> Kube:
        """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config (`make run`).
        `connections`: the pool's size, at least the reconciler's worker threads so none waits on it."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = connections
        return cls(client.ApiClient(configuration), observe=observe)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        what: str,
        operation: str = "",
    ) -> Any:
        started = time.perf_counter()
        try:
            return self._send(method, path, query=query, body=body, content_type=content_type, what=what)
        finally:
            if self._observe is not None:
                self._observe(
                    operation or _operation(method, content_type),
                    resource_of(path),
                    time.perf_counter() - started,
                )

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]],
        body: Any,
        content_type: str,
        what: str,
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        _, url, headers, body, _ = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                method, url, header_params=headers, body=body, _request_timeout=REQUEST_TIMEOUT
            )
            data = response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _status_error(
                int(exc.status or 0),
                str(exc.reason or ""),
                str(exc.body or ""),
                what,
                dict(exc.headers or {}),
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"{what}: {type(exc).__name__}: {str(exc)[:BODY_LIMIT]}") from exc
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status <= 299:
            raise _status_error(response.status, str(response.reason), text, what, dict(response.headers))
        return json.loads(text) if text else None

    def _list(self, path: str, selector: str, what: str) -> Listing:
        items = Listing()
        token = ""
        while True:  # paginated so a large namespace does not make one huge response
            query = [("labelSelector", selector), ("limit", "500")]
            if token:
                query.append(("continue", token))
            page = self._request("GET", path, query=query, what=what, operation="list")
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            if not token:  # the first page's: later pages continue the same snapshot
                items.resource_version = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or ""
            if not token:
                return items

    # ------------------------------------------------------------------------------------------ owner

    def get_owner(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MultimodalDeployment, or None when it does not exist (any more)."""
        try:
            obj: dict[str, Any] = self._request(
                "GET",
                f"{_CR_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}",
                what=f"get {KIND} {namespace}/{name}",
            )
        except NotFound:
            return None
        return obj

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch `/status` (the planner's `StatusUpdate.patch`: removed keys are sent as null); the
        object as written."""
        result: dict[str, Any] = self._request(
            "PATCH",
            f"{_CR_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": dict(patch)},
            content_type="application/merge-patch+json",
            what=f"patch {KIND} {namespace}/{name} status",
        )
        return result

    # ------------------------------------------------------------------------------------------ children

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one child as the operator's field manager, taking over conflicting fields."""
        meta = obj["metadata"]
        path = f"{_collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
        result: dict[str, Any] = self._request(
            "PATCH",
            path,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            # JSON is YAML, so the apply-patch content type takes the JSON-serialised object.
            body=dict(obj),
            content_type="application/apply-patch+yaml",
            what=f"apply {obj['kind']} {meta['namespace']}/{meta['name']}",
        )
        return result

    def list_children(
        self, namespace: str, owner: str, kinds: Iterable[tuple[str, str]] = CHILD_KINDS
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Existing children of one MultimodalDeployment by (apiVersion, kind), found by the owner label."""
        selector = _selector({LABEL_DEPLOYMENT: owner, "app.kubernetes.io/managed-by": MANAGED_BY})
        return {
            (av, kind): self._list(
                _collection(av, kind, namespace), selector, f"list {kind}s of {namespace}/{owner}"
            )
            for av, kind in kinds
        }

    def delete(self, ref: ChildRef, namespace: str) -> bool:
        """Delete one child, only if it is still the object that was listed (uid precondition). False if it
        was already gone."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": ref.uid},
            "propagationPolicy": "Background",
        }
        try:
            self._request(
                "DELETE",
                f"{_collection(ref.api_version, ref.kind, namespace)}/{ref.name}",
                body=body,
                what=f"delete {ref.kind} {namespace}/{ref.name}",
            )
        except NotFound:
            return False
        return True

    def seed_replicas(self, obj: Mapping[str, Any], replicas: int) -> dict[str, Any]:
        """Give a new MultimodalRole its first spec.replicas under a field manager of its own: the main
        apply never names the field, so whatever drives /scale afterwards (an HPA) owns it alone."""
        meta = obj["metadata"]
        path = f"{_collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
        result: dict[str, Any] = self._request(
            "PATCH",
            path,
            query=[("fieldManager", SEED_FIELD_MANAGER)],
            body={"spec": {"replicas": replicas}},
            content_type="application/merge-patch+json",
            what=f"seed replicas of {obj['kind']} {meta['namespace']}/{meta['name']}",
        )
        return result

    def patch_child_status(self, obj: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a child's /status (a MultimodalRole's replicas and selector for /scale); the object
        as written."""
        meta = obj["metadata"]
        path = f"{_collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}/status"
        result: dict[str, Any] = self._request(
            "PATCH",
            path,
            body={"status": dict(status)},
            content_type="application/merge-patch+json",
            what=f"patch {obj['kind']} {meta['namespace']}/{meta['name']} status",
        )
        return result

    # ------------------------------------------------------------------------------------------ observing

    def replica_sets(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        """The ReplicaSets of one MultimodalDeployment's Deployments (which pods are current)."""
        return self._list(
            f"/apis/apps/v1/namespaces/{namespace}/replicasets",
            _selector({LABEL_DEPLOYMENT: owner}),
            f"list replicasets of {namespace}/{owner}",
        )

    def pods(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        return self._list(
            f"/api/v1/namespaces/{namespace}/pods",
            _selector({LABEL_DEPLOYMENT: owner}),
            f"list pods of {namespace}/{owner}",
        )

    def node_facts(self) -> NodeFacts:
        """Allocatable extended resources and GPU products over all nodes, cached for NODE_FACTS_TTL."""
        cached = self._nodes
        with cached.lock:
            if cached.value is not None and time.monotonic() - cached.at < NODE_FACTS_TTL:
                return cached.value
            nodes = self._list("/api/v1/nodes", "", "list nodes")
            resources: set[str] = set()
            products: set[str] = set()
            fake: set[str] = set()
            for node in nodes:
                annotations = (node.get("metadata") or {}).get("annotations") or {}
                if annotations.get(KWOK_NODE_ANNOTATION) == "fake":
                    fake.add(str(node["metadata"].get("name")))
                for name, quantity in ((node.get("status") or {}).get("allocatable") or {}).items():
                    if str(quantity) not in ("0", "0k", "0m"):
                        resources.add(name)
                product = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_PRODUCT_LABEL)
                if product:
                    products.add(product)
            cached.value = NodeFacts(frozenset(resources), frozenset(products), frozenset(fake))
            cached.at = time.monotonic()
            return cached.value

    def peering(self, name: str) -> dict[str, Any]:
        """The status of kopf's ClusterKopfPeering `name` (peer id -> priority, lifetime, lastseen)."""
        try:
            obj = self._request(
                "GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{name}", what=f"get peering {name}"
            )
        except NotFound:
            return {}
        return dict(obj.get("status") or {})

    def emit_event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on the MultimodalDeployment (`kubectl describe mmdeploy` shows it)."""
        meta = owner["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": os.environ.get("HOSTNAME", MANAGED_BY),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._request(
            "POST",
            f"/api/v1/namespaces/{meta['namespace']}/events",
            body=event,
            what=f"create event on {meta['namespace']}/{meta['name']}",
        )


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
