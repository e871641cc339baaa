"""The frontend for real: uvicorn on 127.0.0.1 with the in-process reference pipeline, driven by the
official ``openai`` client (text, image data URL, image http URL from a loopback server, video, audio), plus
errors (bad media, deadline), client disconnects and metrics."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("torch")

from triptych_workers.config import WorkerConfig
from triptych_workers.engines.reference.engine import ReferenceEngine
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.prompt import ReferencePrompter
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir
from triptych_workers.metrics import WorkerMetrics
from triptych_workers.roles.common import CachedEncoder
from triptych_workers.roles.frontend import create_app
from triptych_workers.roles.pipeline import InProcessPipeline
from triptych_workers.roles.server import HttpServer, probe_app

from tests.integration.workers.conftest import LoopbackHTTPServer, RouteContext
from tests.media_factory import encode_image, gradient_array, indexed_video, sine, wav_bytes
from tests.reference_answers import greedy_answers, streamed_answer

MODEL = "triptych-tiny"
pytestmark = pytest.mark.timeout(120)


@dataclass
class Served:
    api: str
    metrics_url: str
    metrics: WorkerMetrics
    model_dir: Path
    encoder: CachedEncoder

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api}/v1", api_key="unused", max_retries=0, **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


def _config(model_dir: Path, **serving: Any) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "deployment": "test",
            "namespace": "default",
            "role": "frontend",
            "backend": "reference",
            "model": {"name": MODEL, "path": str(model_dir)},
            "media": {"allow_private_networks": True, "fetchTimeoutSeconds": 5},
            "encoderCache": {"capacityBytes": 64 << 20},
            "serving": {"requestTimeoutSeconds": 30, **serving},
        }
    )


def _serve(config: WorkerConfig, model_dir: Path) -> Iterator[Served]:
    """The app and its probes on free loopback ports, in a thread with its own event loop."""
    started = threading.Event()
    stopping = threading.Event()
    box: dict[str, Any] = {}

    async def run() -> None:
        engine = await ReferenceEngine.load(model_dir, num_threads=1)
        encoder = CachedEncoder(engine, config.encoder_cache.capacity_bytes)
        metrics = WorkerMetrics("frontend", config.deployment)
        metrics.watch_encoder_cache(encoder.stats)
        app = create_app(
            config,
            pipeline=InProcessPipeline(engine, encoder),
            prompter=ReferencePrompter(model_dir),
            metrics=metrics,
        )
        api = HttpServer(app, "127.0.0.1", 0, graceful_timeout_s=2)
        probes = HttpServer(probe_app(metrics, lambda: True), "127.0.0.1", 0, graceful_timeout_s=1)
        await api.start(timeout_s=20)
        await probes.start(timeout_s=20)
        box.update(api=api.port, probes=probes.port, metrics=metrics, encoder=encoder)
        started.set()
        await asyncio.to_thread(stopping.wait, 600)
        await api.stop(timeout_s=5)
        await probes.stop(timeout_s=5)
        await engine.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    assert started.wait(60), "frontend did not start"
    try:
        yield Served(
            f"http://127.0.0.1:{box['api']}",
            f"http://127.0.0.1:{box['probes']}/metrics",
            box["metrics"],
            model_dir,
            box["encoder"],
        )
    finally:
        stopping.set()
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return prepare_model(default_model_dir(ReferenceSpec()))


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[Served]:
    yield from _serve(_config(model_dir), model_dir)


def _png_data_url(seed: int = 0) -> str:
    return (
        "data:image/png;base64,"
        + base64.b64encode(encode_image(gradient_array(64, 48, seed), "PNG")).decode()
    )


def _chat(client: openai.OpenAI, content: Any, **kwargs: Any) -> tuple[str, str | None]:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        stream=True,
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 8),
        **kwargs,
    )
    text, finish = [], None
    for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def test_models_and_text_chat_streams(served: Served) -> None:
    client = served.client()
    assert [m.id for m in client.models.list()] == [MODEL]
    text, finish = _chat(client, "Hello, world! How are you today?")
    assert finish in ("stop", "length")
    expected = greedy_answers(served.model_dir, {"t": ("Hello, world! How are you today?", [])}, max_tokens=8)
    assert text == expected["t"].text
    # Not streamed: the same text, with usage.
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello, world! How are you today?"}],
        temperature=0,
        max_tokens=8,
    )
    assert reply.choices[0].message.content == text
    assert reply.usage is not None
    assert reply.usage.completion_tokens >= 1
    # The legacy endpoint.
    completion = client.completions.create(
        model=MODEL, prompt="The quick brown fox", max_tokens=5, temperature=0
    )
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_return_token_ids_gives_the_engines_exact_tokens(served: Served) -> None:
    """vLLM's ``return_token_ids``: the prompt's ids (media placeholders expanded) and the generated ids,
    streamed and not, equal to what the engine itself produces; and absent unless asked for (OpenAI's
    shape)."""
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": _png_data_url(5)}},
    ]
    png = base64.b64decode(_png_data_url(5).split(",", 1)[1])
    expected = greedy_answers(served.model_dir, {"image": (content, [png])}, max_tokens=8)["image"]
    assert len(expected.token_ids) == 8
    client = served.client()
    assert streamed_answer(client, MODEL, content, max_tokens=8) == expected
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],  # type: ignore[misc, list-item]
        temperature=0,
        max_tokens=8,
        extra_body={"return_token_ids": True},
    )
    assert (reply.choices[0].model_extra or {})["token_ids"] == expected.token_ids
    assert (reply.model_extra or {})["prompt_token_ids"] == expected.prompt_token_ids
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    # Not asked for: the fields are not there at all (not even as null).
    raw = httpx.post(
        f"{served.api}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=30,
    ).json()
    assert "prompt_token_ids" not in raw
    assert "token_ids" not in raw["choices"][0]
    # The legacy endpoint: token ids in, the same ids back as the prompt.
    completion = httpx.post(
        f"{served.api}/v1/completions",
        json={
            "model": MODEL,
            "prompt": [1, 2, 3, 4],
            "max_tokens": 3,
            "temperature": 0,
            "return_token_ids": True,
        },
        timeout=30,
    ).json()
    assert completion["prompt_token_ids"] == [1, 2, 3, 4]
    assert len(completion["choices"][0]["token_ids"]) == completion["usage"]["completion_tokens"]


def test_sampling_parameters_take_effect_and_out_of_range_is_a_400(served: Served) -> None:
    """vLLM's sampling fields reach the engine through the HTTP API (the same tokens as the engine given
    them directly, and not the plain greedy ones), and a value out of range is a 400 naming the field, from
    the protocol's ranges or, for a token id outside the vocabulary, from the engine."""
    text = "Hello, world! How are you today?"
    client = served.client()
    plain = greedy_answers(served.model_dir, {"t": (text, [])}, max_tokens=8)["t"]
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"logit_bias": {"7": 100}}, {"logit_bias": ((7, 100.0),)}),
        (
            {"repetition_penalty": 1.5, "presence_penalty": 1.0},
            {"repetition_penalty": 1.5, "presence_penalty": 1.0},
        ),
    ]
    for request_fields, engine_fields in cases:
        expected = greedy_answers(served.model_dir, {"t": (text, [])}, max_tokens=8, **engine_fields)["t"]
        assert expected.token_ids != plain.token_ids
        assert streamed_answer(client, MODEL, text, max_tokens=8, sampling=request_fields) == expected
    refused: list[tuple[dict[str, Any], str]] = [
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"logit_bias": {"512": 1}}, "logit_bias"),  # the tiny model's vocabulary is 512 tokens
    ]
    for fields, param in refused:
        response = httpx.post(
            f"{served.api}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2, **fields},
            timeout=30,
        )
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["param"] == param, fields


def test_image_data_url_and_encoder_cache_hit(served: Served) -> None:
    client = served.client()
    content = [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": _png_data_url(1)}},
    ]
    before = served.encoder.stats()
    first, _ = _chat(client, content)
    second, _ = _chat(client, content)
    after = served.encoder.stats()
    assert first == second
    assert after.misses == before.misses + 1
    assert after.hits == before.hits + 1


def test_image_http_url(served: Served, http_server: LoopbackHTTPServer) -> None:
    png = encode_image(gradient_array(64, 48, 2), "PNG")

    @http_server.route("/cat.png")
    def _(ctx: RouteContext) -> None:
        ctx.send(200, png, "image/png")

    text, finish = _chat(
        served.client(),
        [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": http_server.url("/cat.png")}},
        ],
    )
    assert finish in ("stop", "length")
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    same, _finish = _chat(
        served.client(),
        [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": data_url}},
        ],
    )
    assert text == same  # the same bytes, whatever the source


def test_video_and_audio(served: Served) -> None:
    client = served.client()
    video = "data:video/mp4;base64," + base64.b64encode(indexed_video(6, width=64, height=48)).decode()
    _, finish = _chat(
        client,
        [
            {"type": "text", "text": "What happens in this video?"},
            {"type": "video_url", "video_url": {"url": video}},
        ],
    )
    assert finish in ("stop", "length")
    wav = base64.b64encode(wav_bytes(sine(440, 0.5, 16_000), 16_000)).decode()
    _text, finish = _chat(
        client,
        [
            {"type": "text", "text": "Transcribe the audio clip."},
            {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        ],
    )
    assert finish in ("stop", "length")


def test_bad_media_is_a_4xx_with_the_reason(served: Served) -> None:
    client = served.client()
    bogus = "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode()
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(client, [{"type": "image_url", "image_url": {"url": bogus}}])
    assert 400 <= caught.value.status_code < 500
    assert "image" in str(caught.value.message).lower()
    # A refused destination (a metadata address) is a 403 naming the refusal.
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(client, [{"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}])
    assert refused.value.status_code == 403
    # Validation errors name the parameter.
    response = httpx.post(
        f"{served.api}/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    response = httpx.post(
        f"{served.api}/v1/chat/completions",
        json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_client_disconnect_frees_the_slot_and_metrics_move(served: Served) -> None:
    before_ok = served.metric("triptych_requests_total", role="frontend", deployment="test", outcome="ok")
    before_cancelled = served.metric(
        "triptych_requests_total", role="frontend", deployment="test", outcome="cancelled"
    )
    stream = served.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        temperature=0,
        max_tokens=2000,
        extra_body={"ignore_eos": True},
    )
    next(iter(stream))
    assert served.metric("triptych_requests_in_flight", role="frontend", deployment="test") == 1
    stream.close()
    deadline = time.monotonic() + 10
    while served.metric("triptych_requests_in_flight", role="frontend", deployment="test") != 0:
        assert time.monotonic() < deadline, "the slot was not freed after the client left"
        time.sleep(0.05)
    assert (
        served.metric("triptych_requests_total", role="frontend", deployment="test", outcome="cancelled")
        == before_cancelled + 1
    )
    _chat(served.client(), "Hello")
    deadline = time.monotonic() + 10  # the outcome is counted once the response has been sent
    while (
        served.metric("triptych_requests_total", role="frontend", deployment="test", outcome="ok")
        < before_ok + 1
    ):
        assert time.monotonic() < deadline, "a finished request was not counted"
        time.sleep(0.05)
    scraped = httpx.get(served.metrics_url, timeout=10).text
    assert "triptych_time_to_first_token_seconds_count" in scraped
    assert "triptych_encoder_cache_hit_rate" in scraped


def test_deadline(model_dir: Path) -> None:
    for served in _serve(_config(model_dir, requestTimeoutSeconds=0.5), model_dir):
        with pytest.raises(openai.APIStatusError) as caught:
            served.client().chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Hello"}],
                temperature=0,
                max_tokens=3000,
                extra_body={"ignore_eos": True},
            )
        assert caught.value.status_code == 504  # the 3000 tokens would have been a 200: the deadline ended it
        assert served.metric("triptych_requests_in_flight", role="frontend", deployment="test") == 0


def test_frontend_imports_no_torch() -> None:
    code = (
        "import sys, triptych_workers.roles.frontend, triptych_workers.main\n"
        "assert 'torch' not in sys.modules, 'the frontend imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
