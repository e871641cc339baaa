"""`Kube`: what the operator asks of the API server, one method a request (or a list): the owner and its
status, server-side apply of children with ONE field manager and ``force=True``, listing, deleting and
seeding children, what status is computed from (Deployments, ReplicaSets, pods, nodes), the peering
object, and Events."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from triptych_contract import API_GROUP, API_VERSION, KIND, LABEL_DEPLOYMENT, PLURAL

from triptych_operator.cluster import CHILD_KINDS, GPU_PRODUCT_LABEL, ChildRef, NodeFacts
from triptych_operator.kube.errors import NotFound
from triptych_operator.kube.paths import CR_PREFIX, collection
from triptych_operator.kube.transport import ApiTransport, RequestObserver, selector
from triptych_operator.naming import FIELD_MANAGER, MANAGED_BY, SEED_FIELD_MANAGER

NODE_FACTS_TTL = 10.0  # seconds; nodes change rarely, and every reconcile would otherwise list them
# kwok marks the nodes it simulates; their pods' IPs are fake and must never be connected to.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass
class _Cached:
    value: NodeFacts | None = None
    at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Kube(ApiTransport):
    """Synchronous access to the API for one operator process. Thread-safe (urllib3's pool is)."""

    def __init__(self, api_client: client.ApiClient, *, observe: RequestObserver | None = None) -> None:
        super().__init__(api_client, observe=observe)
        self._nodes = _Cached()

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

    # ------------------------------------------------------------------------------------------ owner

    def get_owner(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MultimodalDeployment, or None when it does not exist (any more)."""
        try:
            obj: dict[str, Any] = self._request(
                "GET",
                f"{CR_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}",
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
            f"{CR_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body={"status": dict(patch)},
            content_type="application/merge-patch+json",
            what=f"patch {KIND} {namespace}/{name} status",
        )
        return result

    # ------------------------------------------------------------------------------------------ children

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one child as the operator's field manager, taking over conflicting fields."""
        meta = obj["metadata"]
        path = f"{collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
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
        owned = selector({LABEL_DEPLOYMENT: owner, "app.kubernetes.io/managed-by": MANAGED_BY})
        return {
            (av, kind): self._list(
                collection(av, kind, namespace), owned, f"list {kind}s of {namespace}/{owner}"
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
                f"{collection(ref.api_version, ref.kind, namespace)}/{ref.name}",
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
        path = f"{collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
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
        path = f"{collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}/status"
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
            selector({LABEL_DEPLOYMENT: owner}),
            f"list replicasets of {namespace}/{owner}",
        )

    def pods(self, namespace: str, owner: str) -> list[dict[str, Any]]:
        return self._list(
            f"/api/v1/namespaces/{namespace}/pods",
            selector({LABEL_DEPLOYMENT: owner}),
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


__all__ = ["KWOK_NODE_ANNOTATION", "NODE_FACTS_TTL", "Kube"]
