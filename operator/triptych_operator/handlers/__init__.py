"""The kopf glue (this module, the only one that registers handlers): each handler is a decorator, a docstring
and one await into the Reconciler (`handlers/reconcile.py`, whose rooms are the rest of this package).
Handlers return None (kopf would copy a return value into `.status`).

Handlers are registered on an explicit registry built by `build_registry()` (not kopf's global one at import
time), and kopf's settings come from `kopf_settings()`; `main` wires both with the Reconciler in kopf's memo.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from triptych_contract import API_GROUP, API_VERSION, KIND, LABEL_DEPLOYMENT, PLURAL

from triptych_operator.api import ROLE_KIND, ROLE_PLURAL
from triptych_operator.handlers.reconcile import Reconciler
from triptych_operator.kube import Permission
from triptych_operator.naming import MANAGED_BY

# Watched with our labels: drift in the children, and pod state (scheduling, image pulls) for status.
CHILDREN = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "pods", "Pod"),
    # A role's /scale object (autoscaling.scaler External): a user's HPA changing spec.replicas.
    (API_GROUP, API_VERSION, ROLE_PLURAL, ROLE_KIND),
    # The deployment's egress NetworkPolicy: an edit or a deletion is repaired like any child's.
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)
OUR_LABELS: dict[str, Any] = {
    LABEL_DEPLOYMENT: kopf.PRESENT,
    "app.kubernetes.io/managed-by": MANAGED_BY,
}

# What kopf itself requests with the operator's ServiceAccount (kube.API_PERMISSIONS: what our code requests);
# `hack/gen-rbac` renders both into the chart's ClusterRole.
KOPF_PERMISSIONS: tuple[Permission, ...] = (
    Permission(
        API_GROUP,
        PLURAL,
        ("list", "watch", "patch"),
        "kopf watches the MultimodalDeployments and keeps its bookkeeping in their annotations (patch).",
    ),
    *(
        Permission(group, plural, ("list", "watch"), f"kopf watches the {plural} with our labels (CHILDREN).")
        for group, _, plural, _ in CHILDREN
    ),
    *(
        Permission(
            "kopf.dev",
            plural,
            ("list", "watch", "get", "patch"),
            "kopf peering: keep-alives in the peering object's status.",
        )
        for plural in ("clusterkopfpeerings", "kopfpeerings")
    ),
    *(
        Permission(group, "events", ("create",), "kopf posts its warnings and errors as Events.")
        for group in ("", "events.k8s.io")
    ),
)


def kopf_settings() -> kopf.OperatorSettings:
    """kopf's own settings. Its bookkeeping lives in annotations under our group (a structural schema would
    prune it from `.status`, and `.status` is ours); only warnings and errors become Events (our own Events
    report the changes that matter); watches are re-established after an API server restart."""
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="kopf-last-handled-configuration"
    )
    settings.persistence.finalizer = f"{API_GROUP}/kopf-finalizer"  # unused: no handler needs one
    settings.posting.level = logging.WARNING
    # Retries of failed API calls inside kopf (watch streams, patches): quick first, then back off.
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # Watches end server-side every few minutes and are restarted, so a half-dead connection after an API
    # server restart cannot go unnoticed for long.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.reconnect_backoff = 1.0
    # A peer (another replica, a developer's `make run`) that stops renewing is presumed dead after this.
    settings.peering.lifetime = 30
    return settings


def _owner_of(body: kopf.Body, kind: str) -> str | None:
    """The MultimodalDeployment that controls a child (owner reference), or labels a pod."""
    for ref in body.metadata.get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion") == f"{API_GROUP}/{API_VERSION}"
        ):
            return str(ref["name"])
    if kind == "Pod":  # owned by a ReplicaSet; the deployment label names the MultimodalDeployment
        owner = body.metadata.labels.get(LABEL_DEPLOYMENT)
        return str(owner) if owner else None
    return None


def build_registry() -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """The pod's ServiceAccount in the cluster, else $KUBECONFIG (kopf's own readers)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(memo: kopf.Memo, **_: Any) -> None:
        """Start the autoscaler's evaluation loop and the resync (they work only while this process is the
        active peer)."""
        _reconciler(memo).start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        """The operator is stopping: stop the autoscaler, cancel re-queued requests still waiting."""
        await _reconciler(memo).close()

    @kopf.on.resume(API_GROUP, API_VERSION, PLURAL, id="kopf-resume", registry=registry)
    async def resume(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """Operator (re)started: re-apply the desired state (server-side apply makes this idempotent)."""
        await _reconciler(memo).reconcile(namespace or "", name, body)

    @kopf.on.create(API_GROUP, API_VERSION, PLURAL, id="kopf-create", registry=registry)
    async def create(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """A new MultimodalDeployment: create its children and first status."""
        await _reconciler(memo).reconcile(namespace or "", name, body)

    @kopf.on.update(API_GROUP, API_VERSION, PLURAL, id="kopf-update", registry=registry)
    async def update(namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        """The spec (or labels/annotations) changed: apply the new desired state; the Deployments roll."""
        await _reconciler(memo).reconcile(namespace or "", name, body)

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="observe", registry=registry)
    async def observe(
        type: str, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        """Keep the cache's copy current; forget a deleted MultimodalDeployment (its children go through
        owner references)."""
        if type == "DELETED":
            _reconciler(memo).forget(namespace or "", name)
        else:
            _reconciler(memo).observe_owner(body)

    def child(kind: str) -> Any:
        async def handler(
            type: str, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
        ) -> None:
            """A child or pod changed or vanished: repair drift, or refresh the owner's status."""
            owner = _owner_of(body, kind)
            if owner is not None and namespace:
                await _reconciler(memo).child_changed(namespace, owner, kind, body, deleted=type == "DELETED")

        return handler

    for group, version, plural, kind in CHILDREN:
        kopf.on.event(group, version, plural, labels=OUR_LABELS, registry=registry, id=f"child-{plural}")(
            child(kind)
        )
    return registry


def _reconciler(memo: kopf.Memo) -> Reconciler:
    reconciler: Reconciler = memo["reconciler"]
    return reconciler


__all__ = ["KOPF_PERMISSIONS", "build_registry", "kopf_settings"]
