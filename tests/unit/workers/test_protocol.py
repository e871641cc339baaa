"""Protocol models: multimodal parts, sampling fields, unknown fields reported, errors naming the field."""

from __future__ import annotations

import json
import logging

import pytest
from triptych_workers.media.errors import MediaURLRefused
from triptych_workers.protocol import (
    SSE_DONE,
    AudioURLPart,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ImageURLPart,
    InputAudioPart,
    InvalidRequestError,
    ModelList,
    Usage,
    UserMessage,
    VideoURLPart,
    message_text,
    parse_request,
)


def chat(**fields: object) -> dict[str, object]:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return body


def test_multimodal_parts_parse_in_order() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://x/a.png", "detail": "low"},
                        "uuid": "img-1",
                    },
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "video_url", "video_url": {"url": "https://x/v.mp4"}},
                    {"type": "audio_url", "audio_url": {"url": "https://x/a.mp3"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ]
    )
    request = parse_request(ChatCompletionRequest, body)
    kinds = [type(p) for p in request.media_parts()]
    assert kinds == [ImageURLPart, InputAudioPart, VideoURLPart, AudioURLPart]
    image = request.media_parts()[0]
    assert isinstance(image, ImageURLPart)
    assert (image.image_url.detail, image.uuid) == ("low", "img-1")
    audio = request.media_parts()[1]
    assert isinstance(audio, InputAudioPart)
    assert audio.input_audio.to_data_url() == "data:audio/wav;base64,UklGRg=="
    user = request.messages[1]
    assert isinstance(user, UserMessage)
    assert message_text(user) == "what is this?"
    assert request.ignored_fields() == []


def test_sampling_fields() -> None:
    request = parse_request(
        ChatCompletionRequest,
        chat(
            temperature=0.7,
            top_p=0.9,
            max_tokens=10,
            max_completion_tokens=20,
            n=2,
            stop="END",
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logprobs=True,
            top_logprobs=3,
        ),
    )
    assert request.max_output_tokens == 20
    assert request.stop_sequences == ["END"]
    assert request.include_usage_in_stream
    assert parse_request(ChatCompletionRequest, chat(stop=["a", "b"], max_tokens=5)).max_output_tokens == 5


def test_unknown_fields_are_kept_listed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    body = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "u", "zoom": 2}, "extra": 1}],
            }
        ],
        reasoning_effort="high",
    )
    with caplog.at_level(logging.WARNING, logger="triptych_workers.protocol.base"):
        request = parse_request(ChatCompletionRequest, body)
    assert request.ignored_fields() == [
        "reasoning_effort",
        "messages[0].content[0].extra",
        "messages[0].content[0].image_url.zoom",
    ]
    assert request.model_extra == {"reasoning_effort": "high"}
    assert len(caplog.records) == 1  # once per request, not once per nested model
    assert "reasoning_effort" in caplog.records[0].getMessage()
    assert "image_url.zoom" in caplog.records[0].getMessage()
    assert json.loads(request.model_dump_json())["reasoning_effort"] == "high"  # not dropped


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[]), "messages"),
        (chat(temperature=3), "temperature"),
        (chat(top_p=0), "top_p"),
        (chat(n=0), "n"),
        (chat(stop=["x"] * 17), "stop"),
        (chat(stream_options={"include_usage": True}), "stream_options"),
        (chat(top_logprobs=2), "top_logprobs"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (chat(messages=[{"role": "user"}]), "messages[0].content"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "file", "file": {}}]}]),
            "messages[0].content[0].type",
        ),
        (
            chat(
                messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]
            ),
            "messages[0].content[1].image_url",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]),
            "messages[0].content[0].image_url.url",
        ),
        (
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}],
                    }
                ]
            ),
            "messages[0].content[0].image_url.detail",
        ),
        (
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "aac"}}],
                    }
                ]
            ),
            "messages[0].content[0].input_audio.format",
        ),
        (chat(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_errors_name_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(ChatCompletionRequest, body)
    assert caught.value.param == param
    assert caught.value.status == 400


def test_raw_json_bodies() -> None:
    assert parse_request(ChatCompletionRequest, json.dumps(chat()).encode()).model == "m"
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        parse_request(ChatCompletionRequest, b"{nope")
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(ChatCompletionRequest, json.dumps(chat(temperature=-1)))
    assert caught.value.param == "temperature"


@pytest.mark.parametrize("prompt", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_completion_prompts(prompt: object) -> None:
    request = parse_request(CompletionRequest, {"model": "m", "prompt": prompt, "logprobs": 2, "echo": True})
    assert request.prompt == prompt
    assert request.max_tokens == 16


def test_completion_logprobs_is_an_integer_with_openais_range() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(CompletionRequest, {"model": "m", "prompt": "x", "logprobs": 6})
    assert caught.value.param == "logprobs"


def test_error_response_from_a_client_error() -> None:
    error = MediaURLRefused("destination 127.0.0.1 is loopback", param="messages[0].content[1].image_url.url")
    body = ErrorResponse.from_exception(error).model_dump()
    assert body == {
        "error": {
            "message": "destination 127.0.0.1 is loopback",
            "type": "invalid_request_error",
            "param": "messages[0].content[1].image_url.url",
            "code": "media_url_refused",
        }
    }
    assert ErrorResponse.internal().error.type == "internal_server_error"


def test_stream_chunk_and_usage_serialise_as_openai_does() -> None:
    chunk = ChatCompletionChunk(id="c", model="m", choices=[], usage=Usage.of(3, 4, cached_tokens=1))
    sse = chunk.to_sse()
    assert sse.startswith("data: ")
    assert sse.endswith("\n\n")
    payload = json.loads(sse[len("data: ") :])
    assert payload["object"] == "chat.completion.chunk"
    assert payload["usage"]["total_tokens"] == 7
    assert SSE_DONE == "data: [DONE]\n\n"
    assert ModelList().model_dump()["object"] == "list"


def test_vllm_extensions_are_fields_not_ignored_extras(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="triptych_workers.protocol.base"):
        request = parse_request(ChatCompletionRequest, chat(ignore_eos=True, return_token_ids=True))
    assert request.ignore_eos is True
    assert request.return_token_ids is True
    assert request.ignored_fields() == []
    assert not caplog.records
    assert parse_request(ChatCompletionRequest, chat()).return_token_ids is False


def test_token_id_fields_appear_only_when_set() -> None:
    """OpenAI's clients must see OpenAI's shape: the token-id fields are left out, not sent as null."""
    plain = ChatCompletionChunk(id="c", model="m", choices=[]).model_dump(mode="json")
    assert "prompt_token_ids" not in plain
    asked = ChatCompletionChunk(id="c", model="m", choices=[], prompt_token_ids=[1, 2]).model_dump(
        mode="json"
    )
    assert asked["prompt_token_ids"] == [1, 2]
    assert json.loads(
        ChatCompletionChunk(id="c", model="m", choices=[]).to_sse()[len("data: ") :]
    ).keys() == (plain.keys())
