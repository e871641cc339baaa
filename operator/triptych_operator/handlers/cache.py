"""What kopf's watches delivered, kept in memory: every MultimodalDeployment, and per MultimodalDeployment
its children and pods (an informer's store, fed by the handlers in `handlers/__init__.py` and by the
Reconciler's own writes). A status refresh reads here instead of the API, so a burst of pod events costs
no round trips, only the status patch when the status changed.

- Fed from two sides: watch events (kopf's bodies) and the responses of our own writes (server-side apply,
  status patches). Whichever is newer wins by resourceVersion, so an event that was already in flight
  when our write returned cannot put an older object back.
- Bodies are slimmed to what the operator reads (`_slim`): no managedFields, no pod template of a
  Deployment, a pod's spec only as far as node and affinity. Memory per object stays small and flat.
- Thread-safe: the handlers write from kopf's event loop, the Reconciler reads from its worker threads.
  Stored bodies are never mutated (a newer one replaces the old), so readers may keep what they got.
- Reads may be a moment behind the API (the watch's latency). That is what a refresh is for: the event that
  makes the cache current also requests the next refresh. Pruning does not trust it: a reconcile that may
  delete children lists them from the API (`Paths.full`, `plan.children_to_read`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

Json = dict[str, Any]
Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment

# Fields of a pod's spec the operator reads (role_pods: fake nodes; pod_blockers: the GPU product asked for).
_POD_SPEC_FIELDS = ("nodeName", "affinity")


def _slim(kind: str, body: Mapping[str, Any]) -> Json:
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    slim: Json = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind") or kind, "metadata": meta}
    spec = body.get("spec")
    if isinstance(spec, Mapping):
        if kind == "Pod":
            slim["spec"] = {k: spec[k] for k in _POD_SPEC_FIELDS if k in spec}
        elif kind == "Deployment":  # the pod template is what we applied; status reads replicas only
            slim["spec"] = {k: v for k, v in spec.items() if k != "template"}
        else:
            slim["spec"] = spec
    for k, v in body.items():
        if k not in slim and k != "spec":
            slim[k] = v  # status, and a ConfigMap's data or a NetworkPolicy's nothing-else
    return slim


def _version(body: Mapping[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion", ""))
    except ValueError:
        return None


def _older(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether `new` is an older version of the object than the stored `old` (a late event). Versions that
    are not integers (another storage than etcd) are not compared: the later arrival wins."""
    if old is None:
        return False
    if (new.get("metadata") or {}).get("uid") != (old.get("metadata") or {}).get("uid"):
        return False  # another object of the same name (deleted and created again)
    new_v, old_v = _version(new), _version(old)
    return new_v is not None and old_v is not None and new_v < old_v


class ObjectCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[Key, Json] = {}
        self._objects: dict[tuple[str, str, str], dict[str, Json]] = {}  # (kind, ns, owner) -> name -> body
        # (kind, ns, owner) whose objects were listed from the API once: only those are read from here (an
        # empty store could otherwise mean "none" or "not heard of yet").
        self._synced: set[tuple[str, str, str]] = set()
        # uids seen deleted, per store: a listing that was on its way while the deletion came in cannot
        # bring the object back (uids are never reused).
        self._deleted: dict[tuple[str, str, str], set[str]] = {}

    # ------------------------------------------------------------------------------------------ owners

    def owner(self, key: Key) -> Json | None:
        with self._lock:
            return self._owners.get(key)

    def put_owner(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        slim = _slim(str(body.get("kind", "")), body)
        with self._lock:
            if not _older(slim, self._owners.get(key)):
                self._owners[key] = slim

    def forget(self, key: Key) -> None:
        """The MultimodalDeployment is gone: drop it and everything stored under it."""
        with self._lock:
            self._owners.pop(key, None)
            for index in [i for i in self._objects if i[1:] == key]:
                del self._objects[index]
            self._synced = {i for i in self._synced if i[1:] != key}
            for index in [i for i in self._deleted if i[1:] == key]:
                del self._deleted[index]

    def unsync(self) -> None:
        """Trust nothing until it is listed again (this process stood by, and missed events meanwhile)."""
        with self._lock:
            self._synced.clear()

    # ------------------------------------------------------------------------------------------ children

    def items(self, kind: str, key: Key) -> list[Json] | None:
        """The objects of `kind` under one MultimodalDeployment; None until they were listed (`replace`)."""
        index = (kind, *key)
        with self._lock:
            if index not in self._synced:
                return None
            return list(self._objects.get(index, {}).values())

    def get(self, kind: str, key: Key, name: str) -> Json | None:
        with self._lock:
            return self._objects.get((kind, *key), {}).get(name)

    def put(self, kind: str, key: Key, body: Mapping[str, Any]) -> None:
        slim = _slim(kind, body)
        name = str(slim["metadata"].get("name", ""))
        index = (kind, *key)
        with self._lock:
            if slim["metadata"].get("uid") in self._deleted.get(index, ()):
                return
            stored = self._objects.setdefault(index, {})
            if not _older(slim, stored.get(name)):
                stored[name] = slim

    def remove(self, kind: str, key: Key, body: Mapping[str, Any]) -> None:
        """A DELETED event (or our own delete): drop the object unless a newer one of that name is stored."""
        meta = body.get("metadata") or {}
        name, uid = str(meta.get("name", "")), meta.get("uid")
        index = (kind, *key)
        with self._lock:
            if uid:
                self._deleted.setdefault(index, set()).add(str(uid))
            stored = self._objects.get(index, {})
            old = stored.get(name)
            if old is None or _older(body, old):
                return
            if uid is None or uid == (old.get("metadata") or {}).get("uid"):  # not a successor's
                del stored[name]

    def replace(self, kind: str, key: Key, listed: list[dict[str, Any]]) -> None:
        """What a list from the API returned for one MultimodalDeployment becomes the store (trusted from
        now on). When the listing says which snapshot it is (`kube.Listing`), an object stored with a later
        resourceVersion was created after it was taken and stays; deletions seen meanwhile stay deleted."""
        index = (kind, *key)
        snapshot = _version({"metadata": {"resourceVersion": getattr(listed, "resource_version", "")}})
        slims = [_slim(kind, body) for body in listed]
        with self._lock:
            deleted = self._deleted.pop(index, set())
            stored = self._objects.get(index, {})
            fresh: dict[str, Json] = (
                {} if snapshot is None else {n: b for n, b in stored.items() if (_version(b) or 0) > snapshot}
            )
            for slim in slims:
                name = str(slim["metadata"].get("name", ""))
                if slim["metadata"].get("uid") in deleted or _older(slim, fresh.get(name)):
                    continue
                fresh[name] = slim
            self._objects[index] = fresh
            self._synced.add(index)

    def sizes(self) -> dict[str, int]:
        """Objects stored per kind ("MultimodalDeployment" for the owners), for the operator's metrics."""
        with self._lock:
            sizes = {"MultimodalDeployment": len(self._owners)}
            for (kind, _, _), objects in self._objects.items():
                sizes[kind] = sizes.get(kind, 0) + len(objects)
            return sizes


__all__ = ["ObjectCache"]
