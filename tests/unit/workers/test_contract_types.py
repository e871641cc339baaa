"""The contract's Literal types name exactly the values of the tuples beside them (the operator reads the
tuples, the workers' annotations the Literals), so neither can gain or lose a name alone."""

from __future__ import annotations

from typing import get_args

from triptych_contract import (
    BACKENDS,
    ENCODE_ROUTING_POLICIES,
    IMAGE_DECODE_PLACES,
    MODALITIES,
    Backend,
    EncodeRouting,
    ImageDecodePlace,
    Modality,
)
from triptych_contract.backends import BACKEND_FACTS, BUILTIN_MODEL_PREPARE_MODULE, DEVICES, Device


def test_backend_literal_matches_backends() -> None:
    assert get_args(Backend) == BACKENDS


def test_modality_literal_matches_modalities() -> None:
    assert get_args(Modality) == MODALITIES


def test_serving_literals_match_their_tuples() -> None:
    assert get_args(EncodeRouting) == ENCODE_ROUTING_POLICIES
    assert get_args(ImageDecodePlace) == IMAGE_DECODE_PLACES


def test_device_literal_matches_devices() -> None:
    assert get_args(Device) == DEVICES


def test_backend_facts_have_one_row_per_backend_in_order() -> None:
    assert tuple(BACKEND_FACTS) == BACKENDS
    for name, facts in BACKEND_FACTS.items():
        assert facts.name == name
        assert facts.devices
        assert set(facts.devices) <= set(DEVICES)


def test_the_builtin_models_prepare_module_is_the_workers_own() -> None:
    """The operator runs it by name in an init container: it must be the module that writes the model."""
    from triptych_workers.engines.reference import prepare

    assert prepare.__name__ == BUILTIN_MODEL_PREPARE_MODULE
