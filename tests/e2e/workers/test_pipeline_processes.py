"""The role processes for real: a nats-server on 127.0.0.1 and ``python -m triptych_workers.main <role>``
processes in E/P/D, E/PD and EPD modes, driven by the official ``openai`` client.

Proves: the same greedy request gives the same tokens in every mode and equals one in-process engine;
images (data URL), video and audio travel the whole path; metrics move; killing an encode worker gives the
client an error within the deadline, never a hang; restarting NATS recovers without restarting workers.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

pytest.importorskip("torch")

from triptych_workers.engines.base import EncodeRequest, MediaItem, SamplingParams
from triptych_workers.engines.reference.engine import ReferenceEngine
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir
from triptych_workers.hashing import hash_media
from triptych_workers.media.image import decode_image

from tests.integration.workers.conftest import NATS_SERVER_BINARY, NatsServerProcess
from tests.media_factory import encode_image, gradient_array, indexed_video, sine, wav_bytes

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.path.exists(NATS_SERVER_BINARY), reason="nats-server is not installed"),
]

MODEL = "triptych-tiny"
PROMPT = "Describe the image."
MAX_TOKENS = 12
ROLES_BY_MODE = {
    "E/P/D": [("encode", "encode"), ("prefill", "prefill"), ("decode", "decode")],
    "E/PD": [("encode", "encode"), ("pd", "decode")],
    "EPD": [("epd", "decode")],
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    http_port: int = 0

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Deployment:
    mode: str
    frontend: Proc
    workers: dict[str, Proc] = field(default_factory=dict)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.frontend.http_port}/v1",
            api_key="unused",
            max_retries=0,
            **kwargs,
        )


def _start(tmp: Path, name: str, role: str, config: dict[str, Any]) -> Proc:
    metrics_port, http_port = _free_port(), _free_port()
    config = {**config, "ports": {"http": http_port, "metrics": metrics_port}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "triptych_workers.main",
                role,
                "--config",
                str(path),
                "--host",
                "127.0.0.1",
                "--worker-id",
                name,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
    return Proc(name, process, metrics_port, log, http_port)


def _wait_ready(procs: list[Proc], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        while not proc.ready():
            if proc.process.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} not ready:\n{proc.log.read_text()[-3000:]}")
            time.sleep(0.2)


def _stop(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait(timeout=10)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return prepare_model(default_model_dir(ReferenceSpec()))


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServerProcess]:
    server = NatsServerProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _deploy(tmp: Path, nats: NatsServerProcess, model_dir: Path, mode: str) -> Iterator[Deployment]:
    deployment = "d" + "".join(c for c in mode if c.isalpha()).lower()
    base = {
        "deployment": deployment,
        "namespace": "e2e",
        "backend": "reference",
        "mode": mode,
        "model": {"name": MODEL, "path": str(model_dir)},
        "media": {"allow_private_networks": True},
        "encoderCache": {"capacity": "64Mi", "capacityBytes": 64 << 20},
        "nats": {"url": nats.url},
        "serving": {
            "requestTimeoutSeconds": 20,
            "drainTimeoutSeconds": 5,
            "engineThreads": 1,
            "heartbeatSeconds": 0.5,
        },
        # Embeddings/KV of the tiny model are small: the NIXL threshold is lowered so they take NIXL.
        "dataPlane": {"nixlMinBytes": 4096},
    }
    workers = {
        name: _start(tmp, f"{deployment}-{name}", role, {**base, "role": k8s_role})
        for (role, k8s_role), name in ((r, r[0]) for r in ROLES_BY_MODE[mode])
    }
    frontend = _start(tmp, f"{deployment}-frontend", "frontend", {**base, "role": "frontend"})
    procs = [*workers.values(), frontend]
    try:
        _wait_ready(procs)
        yield Deployment(mode, frontend, workers)
    finally:
        _stop(procs)


def _png(seed: int) -> bytes:
    return encode_image(gradient_array(64, 48, seed), "PNG")


def _image_content(png: bytes) -> list[dict[str, Any]]:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": url}}]


def _stream_text(client: openai.OpenAI, content: Any, max_tokens: int = MAX_TOKENS) -> str:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        stream=True,
        temperature=0,
        max_tokens=max_tokens,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> dict[str, str]:
    """The greedy answers of one in-process engine (no processes, no NATS)."""

    async def run() -> dict[str, str]:
        engine = await ReferenceEngine.load(model_dir, num_threads=1)
        try:
            out = {}
            for key, content, media in (
                ("text", "Hello, world! How are you today?", []),
                (
                    "image",
                    _image_content(_png(7)),
                    [
                        MediaItem(
                            "image",
                            hash_media(_png(7)).hex,
                            __import__("numpy").asarray(decode_image(_png(7))),
                        )
                    ],
                ),
            ):
                prompt = engine.render_chat([{"role": "user", "content": content}], media)
                items = await engine.encode(
                    [EncodeRequest(m, s) for m, s in zip(media, prompt.spans, strict=True)]
                )
                steps = engine.generate(prompt, items, SamplingParams(max_tokens=MAX_TOKENS))
                out[key] = "".join([s.text async for s in steps])
            return out
        finally:
            await engine.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["EPD", "E/PD", "E/P/D"])
def test_same_tokens_in_every_mode(
    mode: str, tmp_path: Path, nats: NatsServerProcess, model_dir: Path, expected: dict[str, str]
) -> None:
    for dep in _deploy(tmp_path, nats, model_dir, mode):
        client = dep.client(timeout=30)
        assert _stream_text(client, "Hello, world! How are you today?") == expected["text"]
        assert _stream_text(client, _image_content(_png(7))) == expected["image"]
        assert _stream_text(client, _image_content(_png(7))) == expected["image"]  # an encoder-cache hit
        video = "data:video/mp4;base64," + base64.b64encode(indexed_video(6, width=64, height=48)).decode()
        assert _stream_text(
            client,
            [{"type": "text", "text": "What happens?"}, {"type": "video_url", "video_url": {"url": video}}],
        )
        wav = base64.b64encode(wav_bytes(sine(440, 0.5, 16_000), 16_000)).decode()
        _stream_text(client, [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}])
        # Metrics moved on the frontend and on the worker that encodes.
        deployment = dep.frontend.name.rsplit("-", 1)[0]
        ok = f'triptych_requests_total{{deployment="{deployment}",outcome="ok",role="frontend"}} 5.0'
        assert ok in dep.frontend.metrics()
        encoder = dep.workers.get("encode") or dep.workers["epd"]
        scraped = encoder.metrics()
        assert 'outcome="ok"' in scraped
        hit_rate = [
            line for line in scraped.splitlines() if line.startswith("triptych_encoder_cache_hit_rate{")
        ]
        assert hit_rate
        assert float(hit_rate[0].rsplit(" ", 1)[1]) > 0
        if mode != "EPD":
            assert (
                "triptych_transfer_bytes_total{" in scraped
                or "triptych_transfer_bytes_total{" in dep.frontend.metrics()
            )


def test_killed_encoder_and_nats_restart(tmp_path: Path, nats: NatsServerProcess, model_dir: Path) -> None:
    for dep in _deploy(tmp_path, nats, model_dir, "E/P/D"):
        client = dep.client(timeout=30)
        assert _stream_text(client, _image_content(_png(11)))

        # NATS restarts: workers reconnect by themselves and serve again.
        nats.restart()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _stream_text(client, "Hello, world! How are you today?")
                break
            except openai.APIError:
                assert time.monotonic() < deadline, "service did not recover after the NATS restart"
                time.sleep(0.5)
        assert all(p.process.poll() is None for p in [dep.frontend, *dep.workers.values()])

        # The encode worker dies mid-request: the client gets an error (or, if encode had finished, the
        # answer) well within the deadline, and requests needing encode fail fast afterwards.
        video = "data:video/mp4;base64," + base64.b64encode(indexed_video(48, width=320, height=240)).decode()
        outcome: list[BaseException | str] = []

        def request(
            client: openai.OpenAI = client, video: str = video, outcome: list[BaseException | str] = outcome
        ) -> None:
            try:
                outcome.append(_stream_text(client, [{"type": "video_url", "video_url": {"url": video}}]))
            except openai.APIError as exc:
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.3)  # the frontend is fetching/decoding the video or the encoder is running
        dep.workers["encode"].process.kill()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the request hung after its encode worker died"
        assert time.monotonic() - started < 25
        assert outcome, "the request never finished"
        assert isinstance(outcome[0], openai.APIError), outcome
        started = time.monotonic()
        with pytest.raises(openai.APIError):
            _stream_text(client, _image_content(_png(13)))
        assert time.monotonic() - started < 25
        # Text-only requests skip encode and still work.
        assert _stream_text(client, "Hello, world! How are you today?")
