"""The committed CRD equals the generator's output and is a structural schema with bounded CEL inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "crds" / "triptych.dev_multimodaldeployments.yaml"
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _load() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())  # type: ignore[no-any-return]


def test_committed_crd_matches_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen-crd"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr


def _walk(node: dict[str, Any], path: str, problems: list[str]) -> None:
    if node.get("x-kubernetes-int-or-string"):
        if node.get("anyOf") not in (None, INT_OR_STRING) or "type" in node:
            problems.append(f"{path}: bad int-or-string form")
    elif "type" not in node:
        problems.append(f"{path}: no type")
    allowed = {"anyOf"} if node.get("x-kubernetes-int-or-string") else set()
    forbidden = ("anyOf", "oneOf", "allOf", "not", "$ref", "nullable", "title", "uniqueItems")
    problems.extend(f"{path}: {key}" for key in forbidden if key in node and key not in allowed)
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties false")
    if (
        node.get("type") == "string"
        and "enum" not in node
        and "maxLength" not in node
        and not path.startswith(("status", "apiVersion", "kind"))
        and path != ""
    ):
        problems.append(f"{path}: string without maxLength (CEL cost)")
    if node.get("type") == "array" and "maxItems" not in node and not path.startswith("status"):
        problems.append(f"{path}: array without maxItems (CEL cost)")
    for name, sub in (node.get("properties") or {}).items():
        _walk(sub, f"{path}.{name}".lstrip("."), problems)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[]", problems)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}{{}}", problems)


def test_schema_is_structural() -> None:
    version = _load()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    problems: list[str] = []
    for name, sub in schema["properties"].items():
        if name != "metadata":
            _walk(sub, name, problems)
    assert problems == []


def test_crd_shape() -> None:
    crd = _load()
    spec = crd["spec"]
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["mmdeploy", "mmd"]
    assert "all" not in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Decode"] == ".status.summary.decode"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["x-kubernetes-validations"][0]["rule"].startswith("self.metadata.name.size() <= 54")
    roles = schema["properties"]["spec"]["properties"]["roles"]
    assert roles["required"] == ["decode"]
    assert "description" in roles["properties"]["encode"]


def test_every_spec_field_has_a_description() -> None:
    spec = _load()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, sub in (node.get("properties") or {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(spec, "spec")
    assert missing == []


# What apiextensions accepts as a CEL rule's reason (the API server refuses the CRD otherwise).
CEL_REASONS = {"FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"}


def _reasons(node: object) -> list[str]:
    if isinstance(node, list):
        return [r for item in node for r in _reasons(item)]
    if not isinstance(node, dict):
        return []
    found = [v["reason"] for v in node.get("x-kubernetes-validations", []) if "reason" in v]
    return found + [r for value in node.values() for r in _reasons(value)]


def test_every_cel_reason_is_one_the_api_server_accepts() -> None:
    reasons = _reasons(_load()["spec"]["versions"][0]["schema"])
    assert reasons, "the schema has CEL rules with reasons"
    assert set(reasons) <= CEL_REASONS
