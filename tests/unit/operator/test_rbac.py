"""The chart's ClusterRole is generated from the permission tables, and kube.API_PERMISSIONS is exactly what
the kube module requests: every public `Kube` method is driven once against a recording stand-in for the
`kubernetes` ApiClient, each request is mapped to (group, resource, verb), and the table must cover every one
and grant nothing else. kopf's needs (watches, peering, its Events) are in handlers.KOPF_PERMISSIONS, and a
server-side apply counts as create too (it creates the object when it is new)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import yaml
from triptych_contract import API_GROUP, API_VERSION, PLURAL
from triptych_operator import kube
from triptych_operator.api import ROLE_KIND
from triptych_operator.cluster import CHILD_KINDS, ChildRef
from triptych_operator.handlers import CHILDREN, KOPF_PERMISSIONS

ROOT = Path(__file__).resolve().parents[3]
GEN_RBAC = ROOT / "hack" / "gen-rbac"
RBAC = ROOT / "charts" / "triptych" / "templates" / "rbac.yaml"
NS = "ns"
APPLY_PATCH = "application/apply-patch+yaml"

Grant = tuple[str, str, str]  # (api group, resource, verb)


class _Response:
    status = 200
    reason = "OK"
    headers: dict[str, str] = {}  # noqa: RUF012 - read only

    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self) -> bytes:
        return self._body


class _RecordingApiClient:
    """The two ApiClient methods `Kube._request` uses; records each request's method, path, content type."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []

    def param_serialize(
        self,
        *,
        method: str,
        resource_path: str,
        query_params: list[tuple[str, str]],
        header_params: dict[str, str],
        body: Any,
        auth_settings: list[str],
    ) -> tuple[str, str, dict[str, str], Any, dict[str, Any]]:
        self.requests.append((method, resource_path, header_params["Content-Type"]))
        return method, f"https://api.invalid{resource_path}", header_params, body, {}

    def call_api(
        self, method: str, url: str, *, header_params: dict[str, str], body: Any, _request_timeout: Any
    ) -> _Response:
        return _Response(b'{"items": []}' if method == "GET" else b"{}")


def _child(api_version: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": "c", "namespace": NS}}


_ROLE = _child(f"{API_GROUP}/{API_VERSION}", ROLE_KIND)
_OWNER = {"metadata": {"name": "mm", "namespace": NS, "uid": "u"}}

# Every public method, with the arguments the reconciler and autoscaler give it (seed_replicas and
# patch_child_status are only ever called on a MultimodalRole); apply and delete for every child kind.
DRIVERS: dict[str, Callable[[kube.Kube], object]] = {
    "get_owner": lambda k: k.get_owner(NS, "mm"),
    "patch_status": lambda k: k.patch_status(NS, "mm", {"mode": "EPD"}),
    "apply": lambda k: [k.apply(_child(av, kind)) for av, kind in CHILD_KINDS],
    "list_children": lambda k: k.list_children(NS, "mm"),
    "delete": lambda k: [k.delete(ChildRef(av, kind, "c", "uid", None), NS) for av, kind in CHILD_KINDS],
    "seed_replicas": lambda k: k.seed_replicas(_ROLE, 1),
    "patch_child_status": lambda k: k.patch_child_status(_ROLE, {"replicas": 1}),
    "replica_sets": lambda k: k.replica_sets(NS, "mm"),
    "pods": lambda k: k.pods(NS, "mm"),
    "node_facts": lambda k: k.node_facts(),
    "peering": lambda k: k.peering("triptych"),
    "emit_event": lambda k: k.emit_event(_OWNER, "Normal", "Applied", "children applied"),
}
NOT_REQUESTS = {"close", "from_environment"}  # no API request: the client's lifecycle


def _grants(method: str, path: str, content_type: str) -> set[Grant]:
    """What RBAC checks for one request: GET on a collection is list, on a name get; PATCH patch (and create
    for a server-side apply, which creates a new object); POST create; DELETE on a name delete."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":  # /api/v1/...
        group, rest = "", parts[2:]
    else:  # /apis/<group>/<version>/...
        assert parts[0] == "apis", path
        group, rest = parts[1], parts[3:]
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])  # plural, or plural/subresource
    named = len(rest) > 1
    verbs = {
        "GET": {"get" if named else "list"},
        "PATCH": {"patch", "create"} if content_type == APPLY_PATCH else {"patch"},
        "POST": {"create"},
        "PUT": {"update"},
        "DELETE": {"delete" if named else "deletecollection"},
    }[method]
    return {(group, resource, verb) for verb in verbs}


def _flat(table: tuple[kube.Permission, ...]) -> set[Grant]:
    return {(p.group, p.resource, verb) for p in table for verb in p.verbs}


@pytest.fixture(scope="module")
def requested() -> dict[str, set[Grant]]:
    """The grants each public Kube method needs, from the requests it really makes."""
    by_method: dict[str, set[Grant]] = {}
    for name, drive in DRIVERS.items():
        api = _RecordingApiClient()
        drive(kube.Kube(cast(Any, api)))  # the stand-in has only what Kube._request uses
        assert api.requests, f"Kube.{name} made no request"
        by_method[name] = set().union(*(_grants(*request) for request in api.requests))
    return by_method


def _gen_rbac() -> ModuleType:
    if "gen_rbac" not in sys.modules:  # registered first: its dataclass looks its module up there
        loader = importlib.machinery.SourceFileLoader("gen_rbac", str(GEN_RBAC))
        spec = importlib.util.spec_from_loader("gen_rbac", loader)
        assert spec is not None
        sys.modules["gen_rbac"] = module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    return sys.modules["gen_rbac"]


def _committed() -> list[dict[str, Any]]:
    """The committed rbac.yaml with its Helm template expressions replaced by a plain string."""
    text = re.sub(r"\{\{-?[^}]*\}\}", "templated", RBAC.read_text())
    return list(yaml.safe_load_all(text))


def test_committed_rbac_matches_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(GEN_RBAC), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr


def test_every_public_method_is_driven() -> None:
    public = {name for name in vars(kube.Kube) if not name.startswith("_")}
    assert public - NOT_REQUESTS == set(DRIVERS)


def test_every_request_is_granted(requested: dict[str, set[Grant]]) -> None:
    granted = _flat(kube.API_PERMISSIONS)
    missing = {name: sorted(needs - granted) for name, needs in requested.items() if needs - granted}
    assert missing == {}, "add these to kube.API_PERMISSIONS"


def test_nothing_granted_is_unused(requested: dict[str, set[Grant]]) -> None:
    used = set().union(*requested.values())
    assert sorted(_flat(kube.API_PERMISSIONS) - used) == [], "no Kube method requests these"


def test_kopf_can_watch_what_it_handles() -> None:
    granted = _flat(kube.API_PERMISSIONS) | _flat(KOPF_PERMISSIONS)
    watched = [(API_GROUP, PLURAL), *((group, plural) for group, _, plural, _ in CHILDREN)]
    for group, plural in watched:
        assert {(group, plural, "list"), (group, plural, "watch")} <= granted
    assert (API_GROUP, PLURAL, "patch") in granted  # kopf's annotations


def test_merge_unions_verbs_in_fixed_order_and_refuses_wildcards() -> None:
    gen = _gen_rbac()
    rules = gen.merge(
        [kube.Permission("apps", "deployments", ("patch", "get"), "a")],
        [kube.Permission("apps", "deployments", ("delete", "list", "get"), "b")],
    )
    assert [(r.resource, r.verbs, r.why) for r in rules] == [
        ("deployments", ("get", "list", "patch", "delete"), ("a", "b"))
    ]
    for bad in (
        kube.Permission("apps", "*", ("get",), "x"),
        kube.Permission("*", "deployments", ("get",), "x"),
        kube.Permission("apps", "deployments", ("*",), "x"),
        kube.Permission("apps", "deployments", ("escalate",), "x"),
        kube.Permission("apps", "deployments", (), "x"),
    ):
        with pytest.raises(ValueError, match=r"deployments|\*"):
            gen.merge([bad])


def test_cluster_role_grants_no_secrets_and_only_lists_nodes() -> None:
    role, binding = _committed()
    assert role["kind"] == "ClusterRole"
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "templated", "namespace": "templated"}]
    by_resource: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no nonResourceURLs, resourceNames
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                by_resource.setdefault((group, resource), []).extend(rule["verbs"])
    assert not any("*" in f"{group}{resource}" for group, resource in by_resource)
    assert not any("*" in verbs for verbs in by_resource.values())
    assert not [key for key in by_resource if key[1].split("/")[0] == "secrets"]
    assert {key: verbs for key, verbs in by_resource.items() if key[1].split("/")[0] == "nodes"} == {
        ("", "nodes"): ["list"]
    }
