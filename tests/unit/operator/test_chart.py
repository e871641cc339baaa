"""The Helm chart's static parts: the CRD copy, the values schema, and the Argo CD health check.

The health check runs for real in Lua through lupa (a Lua runtime, not gopher-lua as in Argo CD; the
script uses only Lua 5.1 constructs so both agree), against the cases in health_test.yaml, the same file
Argo CD's own test harness reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "triptych"
ARGOCD = CHART / "argocd"


def test_chart_crd_is_the_generated_one() -> None:
    for crd in (REPO / "crds").glob("*.yaml"):
        copy = CHART / "crds" / crd.name
        assert copy.exists(), f"{copy} missing: cp {crd} {copy}"
        assert copy.read_bytes() == crd.read_bytes(), f"{copy} differs from {crd}: make crds"


def test_values_match_their_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])
    assert set(schema["required"]) <= set(values)
    assert set(values["workerImages"]) == {"vllm", "sglang", "trtllm", "reference"}


def _cases() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]
    return tests


@pytest.mark.parametrize("case", _cases(), ids=lambda c: Path(c["inputPath"]).stem)
def test_health_lua(case: dict[str, Any]) -> None:
    lupa = pytest.importorskip("lupa")
    lua = lupa.LuaRuntime()
    script = (ARGOCD / "health.lua").read_text()
    health = lua.eval(f"function(obj)\n{script}\nend")
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    result = health(lua.table_from(obj, recursive=True))
    assert {"status": result["status"], "message": result["message"]} == case["healthStatus"]


def test_health_cases_cover_every_status() -> None:
    assert {c["healthStatus"]["status"] for c in _cases()} == {"Healthy", "Progressing", "Degraded"}
