"""The invalid corpus (tests/data/invalid/cases.yaml) against the Python mirror of the CRD's schema + CEL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from triptych_operator.api import SpecError, parse_resource, validate_update

CASES_FILE = Path(__file__).resolve().parents[2] / "data" / "invalid" / "cases.yaml"
CASES: list[dict[str, Any]] = yaml.safe_load(CASES_FILE.read_text())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 45
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_object_names_its_field(case: dict[str, Any]) -> None:
    field = case["expectField"]
    if "before" in case:
        old = parse_resource(case["before"])
        new = parse_resource(case["object"])
        fields = [v.field for v in validate_update(old, new)]
    else:
        with pytest.raises(SpecError) as info:
            parse_resource(case["object"])
        fields = info.value.fields
    assert field in fields, f"{case['name']}: expected {field}, got {fields}"
