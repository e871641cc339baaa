"""The operator's cache (handlers/cache.py): what a watch event, our own write and a listing leave in it."""

from __future__ import annotations

from typing import Any

from triptych_operator.handlers.cache import ObjectCache
from triptych_operator.kube import Listing

KEY = ("ns", "x")


def _pod(name: str, version: int, uid: str = "", phase: str = "Pending") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "uid": uid or f"uid-{name}", "resourceVersion": str(version),
            "managedFields": [{"manager": "kubelet"}], "labels": {"triptych.dev/role": "decode"},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "w", "image": "i", "env": [{"name": "A"}]}]},
        "status": {"phase": phase},
    }  # fmt: skip


def _listing(version: int, *items: dict[str, Any]) -> Listing:
    listing = Listing(items)
    listing.resource_version = str(version)
    return listing


def test_nothing_is_read_from_a_store_until_it_was_listed() -> None:
    cache = ObjectCache()
    cache.put("Pod", KEY, _pod("a", 5))
    assert cache.items("Pod", KEY) is None  # heard of one pod, but are there others?
    cache.replace("Pod", KEY, _listing(6, _pod("a", 5), _pod("b", 6)))
    assert sorted(p["metadata"]["name"] for p in cache.items("Pod", KEY) or []) == ["a", "b"]
    cache.unsync()
    assert cache.items("Pod", KEY) is None


def test_bodies_are_slimmed_to_what_the_operator_reads() -> None:
    cache = ObjectCache()
    cache.put("Pod", KEY, _pod("a", 5))
    pod = cache.get("Pod", KEY, "a")
    assert pod is not None
    assert "managedFields" not in pod["metadata"]
    assert pod["spec"] == {"nodeName": "n1"}
    assert pod["status"] == {"phase": "Pending"}
    assert pod["metadata"]["labels"] == {"triptych.dev/role": "decode"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "x-decode", "resourceVersion": "3", "generation": 2},
        "spec": {"replicas": 2, "template": {"spec": {"containers": []}}},
        "status": {"readyReplicas": 1},
    }  # fmt: skip
    cache.put("Deployment", KEY, deployment)
    slim = cache.get("Deployment", KEY, "x-decode")
    assert slim == {**deployment, "spec": {"replicas": 2}}


def test_a_late_event_does_not_put_an_older_version_back() -> None:
    cache = ObjectCache()
    cache.put("Pod", KEY, _pod("a", 9, phase="Running"))  # our write's response, or a later event
    cache.put("Pod", KEY, _pod("a", 7, phase="Pending"))  # an event that was in flight
    assert (cache.get("Pod", KEY, "a") or {})["status"] == {"phase": "Running"}
    # Another object of the same name (deleted and created again) is never "older".
    cache.put("Pod", KEY, _pod("a", 3, uid="second"))
    assert (cache.get("Pod", KEY, "a") or {})["metadata"]["uid"] == "second"


def test_a_deletion_removes_only_the_object_it_names() -> None:
    cache = ObjectCache()
    cache.replace("Pod", KEY, _listing(10, _pod("a", 10, uid="second")))
    cache.remove("Pod", KEY, _pod("a", 4, uid="first"))  # the predecessor's DELETED, late
    assert cache.get("Pod", KEY, "a") is not None
    cache.remove("Pod", KEY, _pod("a", 11, uid="second"))
    assert cache.items("Pod", KEY) == []


def test_a_listing_keeps_later_objects_and_does_not_bring_deleted_ones_back() -> None:
    cache = ObjectCache()
    cache.put("Pod", KEY, _pod("new", 21))  # created after the snapshot below was taken
    cache.put("Pod", KEY, _pod("stale", 12))  # deleted while this process did not watch: no event came
    cache.remove("Pod", KEY, _pod("gone", 19))  # deleted after the snapshot, before its arrival
    cache.replace("Pod", KEY, _listing(20, _pod("kept", 15), _pod("gone", 18)))
    assert sorted(p["metadata"]["name"] for p in cache.items("Pod", KEY) or []) == ["kept", "new"]
    # A listing that does not say its snapshot (not a kube.Listing) is taken as it is.
    cache.replace("Pod", KEY, [_pod("only", 30)])
    assert [p["metadata"]["name"] for p in cache.items("Pod", KEY) or []] == ["only"]


def test_forget_drops_the_owner_and_everything_under_it() -> None:
    cache = ObjectCache()
    owner = {
        "kind": "MultimodalDeployment",
        "metadata": {"name": "x", "namespace": "ns", "resourceVersion": "1"},
    }
    cache.put_owner(owner)
    cache.replace("Pod", KEY, _listing(2, _pod("a", 2)))
    cache.put("Pod", ("ns", "y"), _pod("b", 3))
    assert cache.sizes() == {"MultimodalDeployment": 1, "Pod": 2}
    cache.forget(KEY)
    assert cache.owner(KEY) is None
    assert cache.items("Pod", KEY) is None
    assert cache.sizes() == {"MultimodalDeployment": 0, "Pod": 1}
