"""Spec models: defaults, aliases, modes and folding, the Python mirror of the CEL rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from triptych_operator.api import (
    MAX_NAME_LENGTH,
    MultimodalDeploymentSpec,
    SpecError,
    parse_quantity,
    parse_resource,
    parse_spec,
    validate_update,
)


def _spec(**roles: Any) -> dict[str, Any]:
    return {"backend": "vllm", "model": {"name": "m"}, "roles": roles}


def test_defaults_and_aliases() -> None:
    spec = parse_spec(_spec(decode={}))
    assert spec.roles.frontend.replicas == 1
    assert spec.media.max_file_size_mb == 50
    assert spec.media.allow_private_networks is False
    assert spec.networking.transport == "auto"
    assert spec.modalities == ["image"]
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["media"]["maxFileSizeMB"] == 50
    assert dumped["roles"]["decode"]["tensorParallel"] == 1


def test_populate_by_name() -> None:
    spec = MultimodalDeploymentSpec.model_validate(
        {"backend": "vllm", "model": {"name": "m"}, "roles": {"decode": {"tensor_parallel": 2}}}
    )
    assert spec.roles.decode.tensor_parallel == 2


@pytest.mark.parametrize(
    ("roles", "mode", "stages"),
    [
        (
            {"encode": {}, "prefill": {}, "decode": {}},
            "E/P/D",
            {"encode": ["encode"], "prefill": ["prefill"], "decode": ["decode"]},
        ),
        ({"encode": {}, "decode": {}}, "E/PD", {"encode": ["encode"], "decode": ["prefill", "decode"]}),
        ({"prefill": {}, "decode": {}}, "EP/D", {"prefill": ["encode", "prefill"], "decode": ["decode"]}),
        ({"decode": {}}, "EPD", {"decode": ["encode", "prefill", "decode"]}),
    ],
)
def test_modes_fold(roles: dict[str, Any], mode: str, stages: dict[str, list[str]]) -> None:
    spec = parse_spec(_spec(**roles))
    assert spec.mode == mode
    assert spec.present_roles() == ["frontend", *stages]
    for role, expected in stages.items():
        assert spec.stages(role) == expected  # type: ignore[arg-type]


def test_name_limit_is_exact() -> None:
    ok = {"metadata": {"name": "a" * MAX_NAME_LENGTH}, "spec": _spec(decode={})}
    parse_resource(ok)
    bad = {"metadata": {"name": "a" * (MAX_NAME_LENGTH + 1)}, "spec": _spec(decode={})}
    with pytest.raises(SpecError) as info:
        parse_resource(bad)
    assert info.value.fields == ["metadata.name"]
    assert MAX_NAME_LENGTH == 54


def test_errors_collect_pydantic_and_cross_field() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_spec(decode={"replicas": -1, "env": [{"name": "TRIPTYCH_X"}]}))
    assert "spec.roles.decode.replicas" in info.value.fields


def test_cross_field_errors_are_all_reported() -> None:
    raw = _spec(decode={"tensorParallel": 2, "gpus": 1, "autoscaling": {"minReplicas": 3, "maxReplicas": 2}})
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert set(info.value.fields) >= {"spec.roles.decode.gpus", "spec.roles.decode.autoscaling.minReplicas"}


def test_gpus_may_restate_the_product() -> None:
    spec = parse_spec(_spec(decode={"tensorParallel": 2, "dataParallelLocal": 2, "gpus": 4}))
    assert spec.roles.decode.gpus_per_pod == 4


def test_update_rules() -> None:
    old = parse_spec(_spec(encode={}, decode={}))
    assert validate_update(old, parse_spec(_spec(encode={"replicas": 3}, decode={}))) == []
    new = parse_spec({**_spec(decode={}), "backend": "sglang"})
    assert {v.field for v in validate_update(old, new)} == {"spec.backend", "spec.roles"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("8Gi", 8 * 2**30), ("500m", Decimal("0.5")), ("1.5G", 1_500_000_000), (3, 3), ("1e3", 1000)],
)
def test_parse_quantity(text: str | int, value: Decimal | int) -> None:
    assert parse_quantity(text) == value


def test_parse_quantity_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity("8 gigs")
