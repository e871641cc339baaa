"""Reads for a reconcile: from the cache that the watches feed (`handlers/cache.py`) where it holds what is
asked for, else from the API through the kube module (and what the API returned becomes the cache's).

Also the parsed spec of each MultimodalDeployment, kept by (uid, generation): a status refresh does not
parse the same spec again. Runs in the worker threads (the cache is thread-safe).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from triptych_operator.api import MultimodalDeploymentSpec, parse_resource
from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.kube import Kube

Key = tuple[str, str]  # (namespace, name) of a MultimodalDeployment
Kinds = list[tuple[str, str]]  # (apiVersion, kind) of children
Listed = dict[tuple[str, str], list[dict[str, Any]]]


class Reads:
    def __init__(self, kube: Kube, cache: ObjectCache | None) -> None:
        self.kube = kube
        self.cache = cache  # None: every read goes to the API
        self._specs: dict[Key, tuple[tuple[str, int], MultimodalDeploymentSpec]] = {}

    def observe_owner(self, body: Mapping[str, Any]) -> None:
        """A MultimodalDeployment as a watch event, a handler or our own status write delivered it."""
        if self.cache is not None:
            self.cache.put_owner(body)

    def owner(
        self, key: Key, *, fresh: bool = False
    ) -> tuple[dict[str, Any], MultimodalDeploymentSpec] | None:
        """The MultimodalDeployment and its parsed spec (raises SpecError); None when it is gone or being
        deleted (the caller forgets it)."""
        owner = None if fresh or self.cache is None else self.cache.owner(key)
        if owner is None:
            owner = self.kube.get_owner(*key)
            if owner is not None:
                self.observe_owner(owner)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return None
        meta = owner["metadata"]
        version = (str(meta.get("uid", "")), int(meta.get("generation", 0)))
        parsed = self._specs.get(key)
        if parsed is not None and parsed[0] == version:
            return owner, parsed[1]
        spec = parse_resource(owner)
        self._specs[key] = (version, spec)
        return owner, spec

    def children(self, key: Key, kinds: Kinds, *, fresh: bool = False) -> Listed:
        """Children by (apiVersion, kind): from the cache where it has listed them once (and not `fresh`),
        else from the API (which then becomes the cache's)."""
        listed: Listed = {}
        missing = []
        for kind in kinds:
            cached = None if fresh or self.cache is None else self.cache.items(kind[1], key)
            if cached is None:
                missing.append(kind)
            else:
                listed[kind] = cached
        if missing:
            read = self.kube.list_children(key[0], key[1], kinds=missing)
            for kind, items in read.items():
                if self.cache is not None:
                    self.cache.replace(kind[1], key, items)
                listed[kind] = items
        return listed

    def pods(self, key: Key) -> list[dict[str, Any]]:
        cached = None if self.cache is None else self.cache.items("Pod", key)
        if cached is not None:
            return cached
        pods = self.kube.pods(*key)
        if self.cache is not None:
            self.cache.replace("Pod", key, pods)
        return pods

    def forget(self, key: Key) -> None:
        if self.cache is not None:
            self.cache.forget(key)
        self._specs.pop(key, None)


__all__ = ["Kinds", "Listed", "Reads"]
