"""The executor: carries out what the planner decided, through the kube module, and remembers what it did.

- `apply`: server-side apply of each desired child, unless `plan.unchanged_since_applied` says the apply
  would change nothing; a new MultimodalRole gets its first replicas under its own field manager.
- `prune`: deletes children no longer desired (uid preconditions: only the object that was listed).
- `write_status` / `write_role_scales`: a status patch, only when the planner returned one, with the Events
  its flips deserve; each MultimodalRole's /scale status, only when it changed.
- What the last apply left on each child (`plan.applied_marker`) and the digest of what it sent: a child
  event that shows another marker is drift (`drifted`), and the same digest with the marker unchanged skips
  the apply. Runs in the worker threads; what the API returns goes into the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from triptych_contract import LABEL_ROLE

from triptych_operator.api import ROLE_KIND, Role
from triptych_operator.cluster import ChildRef
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.handlers.metrics import ReconcileMetrics
from triptych_operator.kube import Kube, KubeError
from triptych_operator.naming import selector_labels
from triptych_operator.plan import (
    StatusUpdate,
    applied_marker,
    child_digest,
    drifted,
    role_scale_status,
    unchanged_since_applied,
)

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
Ref = tuple[str, str]  # (kind, name) of a child


class Executor:
    def __init__(self, kube: Kube, cache: ObjectCache | None, metrics: ReconcileMetrics) -> None:
        self.kube = kube
        self.cache = cache
        self.metrics = metrics
        self._applied: dict[Key, dict[Ref, str]] = {}  # the marker our last apply left on each child
        self._digests: dict[Key, dict[Ref, str]] = {}  # the digest of what that apply sent

    def applied(self, key: Key) -> Mapping[Ref, str]:
        return self._applied.get(key, {})

    def drifted(self, key: Key, suspects: Iterable[tuple[str, str, str]]) -> bool:
        """Some child event carried a marker other than the one our last apply of that child left (judged
        when the request runs, after any reconcile that held the gate has recorded its own)."""
        applied = self.applied(key)
        return any(drifted(applied, kind, name, marker) for kind, name, marker in suspects)

    def forget(self, key: Key) -> None:
        self._applied.pop(key, None)
        self._digests.pop(key, None)

    def apply(
        self, key: Key, desired: Sequence[Mapping[str, Any]], replicas: Mapping[Role, int]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Apply each desired child that would change; the Deployments and MultimodalRoles as they are now.
        `replicas` seeds a new MultimodalRole."""
        markers = self._applied.setdefault(key, {})
        digests = self._digests.setdefault(key, {})
        deployments, role_scales = [], []
        for child in desired:
            kind, name = ref = (child["kind"], child["metadata"]["name"])
            digest = child_digest(child)
            live = None if self.cache is None else self.cache.get(kind, key, name)
            if live is not None and unchanged_since_applied(
                kind, digest, digests.get(ref), markers.get(ref), live
            ):
                self.metrics.applies_skipped.inc()
                applied = live
            else:
                applied = self.kube.apply(child)
                if applied["kind"] == ROLE_KIND and "replicas" not in (applied.get("spec") or {}):
                    applied = self.kube.seed_replicas(
                        applied, replicas[applied["metadata"]["labels"][LABEL_ROLE]]
                    )
                markers[ref] = applied_marker(applied["kind"], applied["metadata"])
                digests[ref] = digest
                if self.cache is not None:
                    self.cache.put(kind, key, applied)
            if applied["kind"] == ROLE_KIND:
                role_scales.append(applied)
            if applied["kind"] == "Deployment":
                deployments.append(applied)
        return deployments, role_scales

    def prune(self, owner: Mapping[str, Any], refs: Sequence[ChildRef]) -> None:
        meta = owner["metadata"]
        key = (meta["namespace"], meta["name"])
        markers, digests = self._applied.get(key, {}), self._digests.get(key, {})
        for ref in refs:
            if self.kube.delete(ref, key[0]):
                markers.pop((ref.kind, ref.name), None)
                digests.pop((ref.kind, ref.name), None)
                self.event(owner, "Normal", "Pruned", f"deleted {ref.kind} {ref.name}: no longer desired")
            if self.cache is not None:
                self.cache.remove(ref.kind, key, {"metadata": {"name": ref.name, "uid": ref.uid}})

    def write_status(self, owner: Mapping[str, Any], update: StatusUpdate | None) -> None:
        """Patch the owner's status when the planner says it changed, and record the Events it lists."""
        if update is None:  # unchanged: no write, no Event
            return
        meta = owner["metadata"]
        written = self.kube.patch_status(meta["namespace"], meta["name"], update.patch)
        self.metrics.status_writes.inc()
        if written and self.cache is not None:  # the next refresh compares with what was written
            self.cache.put_owner(written)
        for event in update.events:
            self.event(owner, event.type, event.reason, event.message)

    def write_role_scales(
        self, key: Key, deployments: list[dict[str, Any]], role_scales: list[dict[str, Any]]
    ) -> None:
        """Each MultimodalRole's /scale status from its role's Deployment, written when it changed."""
        by_role = {d["metadata"]["labels"].get(LABEL_ROLE): d for d in deployments}
        for scale in role_scales:
            role: Role = scale["metadata"]["labels"][LABEL_ROLE]
            status = role_scale_status(by_role.get(role), selector_labels(key[1], role))
            if (scale.get("status") or {}) != status:
                written = self.kube.patch_child_status(scale, status)
                if self.cache is not None and written:
                    self.cache.put(ROLE_KIND, key, written)

    def event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.kube.emit_event(owner, type_, reason, message)
        except KubeError as exc:  # an Event is a courtesy: never fail a reconcile over it
            logger.info("could not record event %s: %s", reason, exc)


__all__ = ["Executor"]
