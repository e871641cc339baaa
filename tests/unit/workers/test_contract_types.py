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


def test_backend_literal_matches_backends() -> None:
    assert get_args(Backend) == BACKENDS


def test_modality_literal_matches_modalities() -> None:
    assert get_args(Modality) == MODALITIES


def test_serving_literals_match_their_tuples() -> None:
    assert get_args(EncodeRouting) == ENCODE_ROUTING_POLICIES
    assert get_args(ImageDecodePlace) == IMAGE_DECODE_PLACES
