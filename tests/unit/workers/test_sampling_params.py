"""Sampling parameters from the request to the workers: every field the protocol accepts reaches
``SamplingParams`` (``sampling_from``), every field of it crosses the request plane (``SamplingMessage``),
and a value out of vLLM's ranges is a 400 naming the parameter. (The engine's use of them is tested in
``test_reference_engine.py``.)"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from triptych_workers.engines.errors import InvalidEngineInputError
from triptych_workers.engines.sampling import SamplingParams
from triptych_workers.errors import ClientError
from triptych_workers.protocol import ChatCompletionRequest, InvalidRequestError, parse_request
from triptych_workers.roles.frontend.serving import sampling_from
from triptych_workers.roles.messages import SamplingMessage

# Every field away from its default, so a field dropped on the way shows. These are written the same way in
# a request and in ``SamplingParams``; ``stop`` and ``logit_bias`` (string keys in a request) are not.
SAME_FORM: dict[str, Any] = {
    "temperature": 0.5,
    "top_p": 0.9,
    "seed": 3,
    "ignore_eos": True,
    "top_k": 5,
    "min_p": 0.1,
    "repetition_penalty": 1.3,
    "presence_penalty": 0.4,
    "frequency_penalty": -0.6,
}
EVERY_FIELD = SamplingParams(max_tokens=7, stop=("x",), logit_bias=((11, 5.0), (2, -100.0)), **SAME_FORM)


def _request(**fields: object) -> ChatCompletionRequest:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(ChatCompletionRequest, body)


def test_every_protocol_sampling_field_reaches_the_engine() -> None:
    body = _request(stop="x", logit_bias={"11": 5, "2": -100}, **SAME_FORM)
    assert sampling_from(body, 7) == EVERY_FIELD


def test_absent_fields_are_the_neutral_values() -> None:
    assert sampling_from(_request(), None) == SamplingParams(max_tokens=256, temperature=1.0)


def test_every_field_crosses_the_request_plane() -> None:
    assert set(SamplingMessage.model_fields) == {f.name for f in dataclasses.fields(SamplingParams)}
    wire = SamplingMessage.model_validate_json(SamplingMessage.of(EVERY_FIELD).dumps())
    assert wire.unit() == EVERY_FIELD


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -2),
        ("min_p", -0.01),
        ("min_p", 1.01),
        ("min_p", math.nan),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", math.inf),
        ("presence_penalty", 2.01),
        ("presence_penalty", -2.01),
        ("frequency_penalty", 2.5),
        ("frequency_penalty", math.nan),
        ("logit_bias", ((3, 100.5),)),
        ("logit_bias", ((3, -101.0),)),
        ("logit_bias", ((-1, 1.0),)),
    ],
)
def test_out_of_range_is_a_400_naming_the_parameter(field: str, value: object) -> None:
    with pytest.raises(InvalidEngineInputError) as caught:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert caught.value.param == field
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -1),
        ("top_k", 0),
        ("min_p", 0.0),
        ("min_p", 1.0),
        ("repetition_penalty", 1e6),
        ("presence_penalty", -2.0),
        ("frequency_penalty", 2.0),
        ("logit_bias", ((0, -100.0), (5, 100.0))),
    ],
)
def test_the_ends_of_the_ranges_are_accepted(field: str, value: object) -> None:
    assert getattr(SamplingParams(**{field: value}), field) == value  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["abc", "1.5", ""])
def test_logit_bias_keys_must_be_token_ids(key: str) -> None:
    with pytest.raises(ClientError) as caught:
        sampling_from(_request(logit_bias={key: 1}), None)
    assert isinstance(caught.value, InvalidRequestError)
    assert caught.value.param == "logit_bias"
    assert caught.value.status == 400
