"""The CRD's CEL rules evaluated from their own text (api/cel_rules.py): every rule of the committed CRD
compiles, the Kubernetes library functions the rules use behave as the API server's, and a refusal carries
the rule's own message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from triptych_operator.api import SpecError, parse_spec, validate_update
from triptych_operator.api.cel_rules import KUBERNETES_FUNCTIONS, _program

CRD = Path(__file__).resolve().parents[3] / "crds" / "triptych.dev_multimodaldeployments.yaml"


def _rules(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
        return own + [r for v in node.values() for r in _rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _rules(v)]
    return []


def test_every_rule_of_the_crd_compiles() -> None:
    rules = set(_rules(yaml.safe_load(CRD.read_text())))
    assert len(rules) >= 30
    for rule in rules:
        _program(rule)


@pytest.mark.parametrize(
    ("cidr", "canonical"),
    [
        ("10.20.0.0/16", True),
        ("fd00::/8", True),
        ("10.20.0.1/16", False),
        ("FD00::/8", False),
        ("nope", False),
    ],
)
def test_the_network_library_functions(cidr: str, canonical: bool) -> None:
    masked = KUBERNETES_FUNCTIONS["masked"]
    assert KUBERNETES_FUNCTIONS["isCIDR"](cidr) == (cidr != "nope")
    assert (cidr != "nope" and masked(KUBERNETES_FUNCTIONS["cidr"](cidr)) == cidr) == canonical


def _spec(**extra: Any) -> dict[str, Any]:
    return {"backend": "vllm", "model": {"name": "m"}, "roles": {"decode": {}}, **extra}


def test_a_refusal_names_the_field_with_the_rules_own_message() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(networkPolicy={"allowedCIDRs": ["10.20.0.1/16"]}))
    (violation,) = info.value.violations
    assert violation.field == "spec.networkPolicy.allowedCIDRs"
    assert violation.message.startswith("networkPolicy.allowedCIDRs entries must be canonical CIDRs")
    with pytest.raises(SpecError, match=r"spec.model.source.path: model.source.path must not contain '..'"):
        parse_spec(_spec(model={"name": "m", "source": {"pvc": "models", "path": "/a/../b"}}))


def test_transition_rules_run_only_on_an_update() -> None:
    old, new = parse_spec(_spec()), parse_spec({**_spec(), "backend": "sglang"})
    assert validate_update(old, old) == []
    (violation,) = validate_update(old, new)
    assert violation.field == "spec.backend"
    assert "immutable" in violation.message
