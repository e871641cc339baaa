"""The chart's Argo CD health check under Debian's Lua 5.1 (the language version of Argo CD's gopher-lua),
on health_test.yaml's cases, the file Argo CD's own test harness reads. tests/e2e/argocd runs it on objects
captured from the cluster and compares with what a real Argo CD reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import lua51

ARGOCD = Path(__file__).resolve().parents[3] / "charts" / "triptych" / "argocd"

pytestmark = pytest.mark.skipif(not lua51.available(), reason="lua5.1 not installed (apt-get install lua5.1)")


def _cases() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]
    return tests


@pytest.mark.parametrize("case", _cases(), ids=lambda c: Path(c["inputPath"]).stem)
def test_health_lua_under_lua_5_1(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    status, message = lua51.health(ARGOCD / "health.lua", obj)
    assert {"status": status, "message": message} == case["healthStatus"]


def test_literals_keep_strings_numbers_and_nesting() -> None:
    obj = {
        "metadata": {"generation": 3, "name": 'a"b\\c\n\u00e9', "deletionTimestamp": None},
        "status": {
            "observedGeneration": 3,
            "conditions": [{"type": "Ready", "status": "True", "message": 'q"\n\u00e9'}],
        },
    }
    assert lua51.health(ARGOCD / "health.lua", obj) == ("Healthy", 'q"\n\u00e9')
    obj["status"]["observedGeneration"] = 2
    assert lua51.health(ARGOCD / "health.lua", obj) == (
        "Progressing",
        "Waiting for the operator to observe generation 3",
    )


def test_a_broken_script_fails_loudly(tmp_path: Path) -> None:
    script = tmp_path / "health.lua"
    script.write_text("return hs.status.nope")
    with pytest.raises(AssertionError, match=r"lua5\.1"):
        lua51.health(script, {})
