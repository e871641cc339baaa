"""What the official ``openai`` client sends parses with our models, and what our models send back parses
with the client: a real uvicorn server on loopback captures the request bodies and answers with our
response, chunk, model-list and error models."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from triptych_workers.media.errors import MediaURLRefused
from triptych_workers.protocol import (
    SSE_DONE,
    AssistantResponseMessage,
    AudioURLPart,
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ImageURLPart,
    InputAudioPart,
    ModelCard,
    ModelList,
    Usage,
    VideoURLPart,
    parse_request,
)

pytestmark = pytest.mark.timeout(60)


def _app(captured: list[tuple[str, dict[str, Any]]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        captured.append(("chat", body))
        if body["model"] == "refuse-me":
            error = MediaURLRefused(
                "destination 127.0.0.1 is loopback", param="messages[0].content[1].image_url.url"
            )
            return JSONResponse(ErrorResponse.from_exception(error).model_dump(), status_code=error.status)
        if body.get("stream"):

            async def events() -> AsyncIterator[str]:
                yield ChatCompletionChunk(
                    id="c1",
                    model="m",
                    choices=[ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content="he"))],
                ).to_sse()
                yield ChatCompletionChunk(
                    id="c1",
                    model="m",
                    choices=[ChatChunkChoice(index=0, delta=ChatDelta(content="llo"), finish_reason="stop")],
                ).to_sse()
                yield ChatCompletionChunk(id="c1", model="m", choices=[], usage=Usage.of(5, 2)).to_sse()
                yield SSE_DONE

            return StreamingResponse(events(), media_type="text/event-stream")
        response = ChatCompletionResponse(
            id="c1",
            model="m",
            choices=[
                ChatCompletionChoice(
                    index=0, message=AssistantResponseMessage(content="hello"), finish_reason="stop"
                )
            ],
            usage=Usage.of(5, 1),
        )
        return Response(response.model_dump_json(), media_type="application/json")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        captured.append(("completions", await request.json()))
        response = CompletionResponse(
            id="t1",
            model="m",
            choices=[CompletionChoice(index=0, text=" world", finish_reason="length")],
            usage=Usage.of(1, 1),
        )
        return Response(response.model_dump_json(), media_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        return Response(ModelList(data=[ModelCard(id="m")]).model_dump_json(), media_type="application/json")

    return app


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    captured: list[tuple[str, dict[str, Any]]] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port chosen by the kernel, held until uvicorn takes the socket
    port = sock.getsockname()[1]
    config = uvicorn.Config(_app(captured), log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", captured
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _client(base_url: str) -> openai.OpenAI:
    # trust_env=False: a proxy from the environment must not carry loopback traffic anywhere else.
    http_client = openai.DefaultHttpxClient(trust_env=False)
    return openai.OpenAI(
        base_url=base_url, api_key="test", max_retries=0, timeout=10, http_client=http_client
    )


PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def test_chat_with_every_modality(server: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    base_url, captured = server
    with _client(base_url) as client:
        completion = client.chat.completions.create(
            model="m",
            messages=[
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "high"}},
                        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    ],
                },
            ],
            temperature=0.2,
            top_p=0.9,
            max_completion_tokens=32,
            n=1,
            stop=["\n\n"],
            seed=3,
            presence_penalty=0.1,
            frequency_penalty=0.1,
            logprobs=True,
            top_logprobs=2,
            user="u1",
            extra_body={"top_k": 20},
        )
    assert completion.choices[0].message.content == "hello"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 6
    kind, body = captured[-1]
    request = parse_request(ChatCompletionRequest, body)
    assert kind == "chat"
    assert [type(p) for p in request.media_parts()] == [ImageURLPart, InputAudioPart]
    assert request.max_output_tokens == 32
    assert request.top_k == 20
    assert request.ignored_fields() == []


def test_chat_with_video_and_audio_urls_through_extra_body(
    server: tuple[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    base_url, captured = server
    messages: Any = [
        {
            "role": "user",
            "content": [
                {"type": "video_url", "video_url": {"url": "https://media.example.com/v.mp4"}},
                {"type": "audio_url", "audio_url": {"url": "https://media.example.com/a.mp3"}},
                {"type": "text", "text": "what happens?"},
            ],
        }
    ]
    with _client(base_url) as client:
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"messages": messages, "mm_processor_kwargs": {"fps": 2}},
        )
    request = parse_request(ChatCompletionRequest, captured[-1][1])
    assert [type(p) for p in request.media_parts()] == [VideoURLPart, AudioURLPart]
    assert request.ignored_fields() == ["mm_processor_kwargs"]  # tolerated and reported


def test_streaming_chat(server: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    base_url, captured = server
    with _client(base_url) as client:
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7
    request = parse_request(ChatCompletionRequest, captured[-1][1])
    assert request.stream
    assert request.include_usage_in_stream


def test_completions(server: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    base_url, captured = server
    with _client(base_url) as client:
        result = client.completions.create(
            model="m", prompt=["hello", "bye"], max_tokens=4, logprobs=2, echo=False, stop="x", seed=1
        )
        token_result = client.completions.create(model="m", prompt=[1, 2, 3])
    assert result.choices[0].text == " world"
    assert token_result.choices[0].finish_reason == "length"
    first = parse_request(CompletionRequest, captured[-2][1])
    second = parse_request(CompletionRequest, captured[-1][1])
    assert (first.prompt, first.logprobs, first.max_tokens) == (["hello", "bye"], 2, 4)
    assert second.prompt == [1, 2, 3]
    assert first.ignored_fields() == []


def test_models_and_errors_reach_the_client_intact(
    server: tuple[str, list[tuple[str, dict[str, Any]]]],
) -> None:
    base_url, _ = server
    with _client(base_url) as client:
        assert [m.id for m in client.models.list()] == ["m"]
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="refuse-me", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 403
    assert caught.value.code == "media_url_refused"
    assert caught.value.param == "messages[0].content[1].image_url.url"
