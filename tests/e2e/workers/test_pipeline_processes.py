"""The role processes for real: a nats-server on 127.0.0.1 and ``python -m triptych_workers.main <role>``
processes in E/P/D, E/PD and EPD modes, driven by the official ``openai`` client.

Proves: the same greedy request gives the same tokens in every mode and equals one in-process engine, with
sampling penalties too (their token history crosses the split); images (data URL), video and audio travel
the whole path; metrics move, and the cache utilizations the autoscaler reads are exact under known load;
workers that run several requests at once give each of eight concurrent streams exactly its answer alone;
killing an encode worker gives the client an error within the deadline, never a hang; restarting NATS
recovers without restarting workers; a worker told to stop (SIGTERM) drains: it finishes the answer it is
streaming while the other takes new work; an encode pool at zero replicas holds an image request (counted in
the pending gauge the autoscaler wakes the pool on) until an encode worker starts, or answers 503 after the
cold-start timeout, while text flows.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from triptych_operator.api import parse_spec
from triptych_operator.builders import build_role
from triptych_operator.naming import Owner
from triptych_operator.settings import OperatorSettings

pytest.importorskip("torch")

import numpy as np
from triptych_contract import METRIC_ITL, METRIC_PENDING_REQUESTS, METRIC_TTFT
from triptych_workers.engines.media import MediaItem
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.prompt import ReferencePrompter
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir

from tests.integration.workers.conftest import NATS_SERVER_BINARY, NatsServerProcess
from tests.kube import wait_for
from tests.media_factory import encode_image, indexed_video, noise_array, sine, wav_bytes
from tests.reference_answers import Answer, greedy_answers, streamed_answer, timed_streamed_answer
from tests.worker_processes import (
    MODEL,
    Proc,
    base_config,
    image_content,
    png,
    start_role,
    stop_procs,
    wait_ready,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not os.path.exists(NATS_SERVER_BINARY), reason="nats-server is not installed"),
]

MAX_TOKENS = 12
TEXT = "Hello, world! How are you today?"
# Penalties over the prompt and the tokens generated so far: prefill samples the first token, decode the rest.
PENALTIES = {"repetition_penalty": 1.5, "presence_penalty": 1.0}
LONG_TOKENS = 2500  # about 10 s of decoding for the tiny model on one thread: long enough to stop mid-answer
ROLES_BY_MODE = {
    "E/P/D": [("encode", "encode"), ("prefill", "prefill"), ("decode", "decode")],
    "E/PD": [("encode", "encode"), ("pd", "decode")],
    "EPD": [("epd", "decode")],
}


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


def _deploy(
    tmp: Path,
    nats: NatsServerProcess,
    model_dir: Path,
    mode: str,
    *,
    encoder_cache_bytes: int | None = None,
    **serving: Any,
) -> Iterator[Deployment]:
    deployment = "d" + "".join(c for c in mode if c.isalpha()).lower()
    base = base_config(deployment, mode, model_dir, nats.url, **serving)
    if encoder_cache_bytes is not None:
        base["encoderCache"] = {"capacity": str(encoder_cache_bytes), "capacityBytes": encoder_cache_bytes}
    workers = {
        name: start_role(tmp, f"{deployment}-{name}", role, {**base, "role": k8s_role})
        for (role, k8s_role), name in ((r, r[0]) for r in ROLES_BY_MODE[mode])
    }
    frontend = start_role(tmp, f"{deployment}-frontend", "frontend", {**base, "role": "frontend"})
    procs = [*workers.values(), frontend]
    try:
        wait_ready(procs)
        yield Deployment(mode, frontend, workers)
    finally:
        stop_procs(procs)


def _answer(
    client: openai.OpenAI, content: Any, max_tokens: int = MAX_TOKENS, sampling: dict[str, Any] | None = None
) -> Answer:
    return streamed_answer(client, MODEL, content, max_tokens=max_tokens, sampling=sampling)


def _long_answer_in_background(
    client: openai.OpenAI, max_tokens: int
) -> tuple[threading.Thread, list[Answer | BaseException]]:
    """A text answer of exactly ``max_tokens`` tokens (``ignore_eos``), streamed by a thread that is already
    running; the list receives its ``Answer``, or what it raised (for the caller's assertions)."""
    outcome: list[Answer | BaseException] = []

    def stream() -> None:
        try:
            outcome.append(
                streamed_answer(
                    client, MODEL, "Tell me a long story.", max_tokens=max_tokens, ignore_eos=True
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    return thread, outcome


def _stream_text(client: openai.OpenAI, content: Any, max_tokens: int = MAX_TOKENS) -> str:
    return _answer(client, content, max_tokens).text


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> dict[str, Answer]:
    answers = greedy_answers(
        model_dir,
        {"text": (TEXT, []), "image": (image_content(png(7)), [png(7)])},
        max_tokens=MAX_TOKENS,
    )
    penalised = greedy_answers(model_dir, {"penalised": (TEXT, [])}, max_tokens=MAX_TOKENS, **PENALTIES)
    assert penalised["penalised"].token_ids != answers["text"].token_ids  # the penalties matter here
    return {**answers, **penalised}


@pytest.mark.parametrize("mode", ["EPD", "E/PD", "E/P/D"])
def test_same_tokens_in_every_mode(
    mode: str, tmp_path: Path, nats: NatsServerProcess, model_dir: Path, expected: dict[str, Answer]
) -> None:
    for dep in _deploy(tmp_path, nats, model_dir, mode):
        client = dep.client(timeout=30)
        # Token-identical: the generated ids and the prompt's (placeholders expanded), not just the text.
        assert _answer(client, TEXT) == expected["text"]
        assert _answer(client, TEXT, sampling=PENALTIES) == expected["penalised"]
        assert _answer(client, image_content(png(7))) == expected["image"]
        assert _answer(client, image_content(png(7))) == expected["image"]  # an encoder-cache hit
        video = "data:video/mp4;base64," + base64.b64encode(indexed_video(6, width=64, height=48)).decode()
        assert _stream_text(
            client,
            [{"type": "text", "text": "What happens?"}, {"type": "video_url", "video_url": {"url": video}}],
        )
        wav = base64.b64encode(wav_bytes(sine(440, 0.5, 16_000), 16_000)).decode()
        _stream_text(client, [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}])
        # Metrics moved on the frontend and on the worker that encodes.
        deployment = dep.frontend.name.rsplit("-", 1)[0]
        ok = f'triptych_requests_total{{deployment="{deployment}",outcome="ok",role="frontend"}} 6.0'
        assert ok in dep.frontend.metrics()
        # Every request succeeded, so the worker that decoded them counts 6 ok and none cancelled (the
        # frontend reads each reply stream to its end before it lets go, rather than cancelling at the
        # last token).
        decoder = dep.workers.get("decode") or dep.workers.get("pd") or dep.workers["epd"]
        wait_for(
            "the decoding worker to count 6 ok",
            lambda d=decoder: d.sample_sum("triptych_requests_total", outcome="ok") == 6 or None,  # type: ignore[misc]
            timeout=5,
            interval=0.05,
        )
        assert decoder.sample_sum("triptych_requests_total", outcome="cancelled") == 0
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


CONCURRENT_STREAMS = 8
REFERENCE_MAX_NUM_SEQS = 8  # what the operator writes for the reference backend's roles by default


def _timed_answer(client: openai.OpenAI, content: Any, max_tokens: int) -> tuple[Answer, float, float]:
    return timed_streamed_answer(client, MODEL, content, max_tokens=max_tokens, ignore_eos=True)


def test_concurrent_streams_answer_as_one_at_a_time(
    tmp_path: Path, nats: NatsServerProcess, model_dir: Path
) -> None:
    """E/P/D with the workers running as many requests at once as the operator lets the reference backend
    (8): eight streams at once, half with images, get exactly the tokens each gets alone (prompt ids too),
    and they really ran together: at some moment at least half of them were streaming (between their first
    token and their end) at once, which one request at a time per worker can never give."""
    contents: list[Any] = [
        image_content(png(30 + i)) if i % 2 else f"{TEXT} Number {i}." for i in range(CONCURRENT_STREAMS)
    ]
    max_tokens = 24
    for dep in _deploy(tmp_path, nats, model_dir, "E/P/D", concurrency=REFERENCE_MAX_NUM_SEQS):
        client = dep.client(timeout=120)
        alone = [_timed_answer(client, content, max_tokens)[0] for content in contents]
        assert all(len(a.token_ids) == max_tokens for a in alone)
        results: list[tuple[Answer, float, float] | BaseException | None] = [None] * len(contents)

        def run(i: int, client: openai.OpenAI = client, results: list[Any] = results) -> None:
            try:
                results[i] = _timed_answer(client, contents[i], max_tokens)
            except BaseException as exc:
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contents))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=150)
        together = [r for r in results if isinstance(r, tuple)]
        assert len(together) == len(contents), results
        assert [answer for answer, _, _ in together] == alone
        most_at_once = max(sum(1 for _, first, end in together if first <= at < end) for _, at, _ in together)
        assert most_at_once >= CONCURRENT_STREAMS // 2, [(f, e) for _, f, e in together]


@pytest.mark.parametrize("decode_images_on", ["frontend", "encode"])
def test_encoder_cache_hit_reads_no_media(
    decode_images_on: str, tmp_path: Path, nats: NatsServerProcess, model_dir: Path
) -> None:
    """E/PD, the same large image twice: the second request is an encoder-cache hit found by the hash the
    frontend sends, so the encode worker reads the media once in all (its reader-side bytes do not move) and
    tells the frontend to let go of the second copy at once: the frontend holds nothing afterwards, long
    before the 30 s lease would have freed it. What travels on the miss is the decoded pixels
    (``decodeImagesOn: frontend``) or the PNG file as fetched (``encode``, the default)."""
    image = png(11, width=320, height=240)  # 230 KB decoded: held under a lease, not inside the descriptor
    if decode_images_on == "encode":  # the file itself must be too large to ride inside the descriptor
        image = encode_image(noise_array(320, 240, seed=11), "PNG")
    for dep in _deploy(tmp_path, nats, model_dir, "E/PD", decodeImagesOn=decode_images_on):
        client, encoder, frontend = dep.client(timeout=60), dep.workers["encode"], dep.frontend
        first = _stream_text(client, image_content(image))
        read_once = encoder.sample_sum("triptych_transfer_bytes_total")
        if decode_images_on == "frontend":
            assert read_once >= 320 * 240 * 3
        else:
            assert read_once == len(image)  # the PNG as fetched, not its pixels
        assert _stream_text(client, image_content(image)) == first
        assert encoder.sample_sum("triptych_transfer_bytes_total") == read_once
        assert encoder.sample_sum("triptych_transfer_discarded_total") == 1
        wait_for(
            "the frontend to hold no leased media",
            lambda f=frontend: f.sample_sum("triptych_transfer_leased_bytes") == 0 or None,  # type: ignore[misc]
            timeout=5,
        )


KV_TOKENS = 800  # a few seconds of decoding: long enough for several scrapes mid-answer


def test_cache_utilizations_are_exact_under_known_load(
    tmp_path: Path, nats: NatsServerProcess, model_dir: Path
) -> None:
    """What the autoscaler acts on, read from real ``/metrics`` under known load (E/P/D).

    Encoder cache, sized for two and a half images' embeddings: after one and two distinct images it holds
    exactly that many embeddings' bytes over its capacity; a third evicts the oldest and stays within it; a
    repeat is a hit that changes nothing. KV: while a long answer streams on the decode worker, every scrape
    shows exactly (prompt tokens + tokens sent before the newest) / (concurrency x context length), the
    tokens sent being the same scrape's TTFT and inter-token-latency counts; 0 again once it is done."""
    spec = ReferenceSpec()
    prompter = ReferencePrompter(model_dir)
    images = [png(seed) for seed in (21, 22, 23)]  # the same size, so the same embedding size
    item = MediaItem("image", "x" * 64, np.zeros((48, 64, 3), dtype=np.uint8))
    embedding_bytes = prompter.placeholder_count(item) * spec.hidden_size * 4  # float32 rows
    capacity = 2 * embedding_bytes + embedding_bytes // 2
    utilization, evictions = "triptych_encoder_cache_utilization", "triptych_encoder_cache_evictions_total"
    kv, ttft, itl = "triptych_kv_cache_utilization", f"{METRIC_TTFT}_count", f"{METRIC_ITL}_count"
    for dep in _deploy(tmp_path, nats, model_dir, "E/P/D", encoder_cache_bytes=capacity):
        client, encoder, decoder = dep.client(timeout=60), dep.workers["encode"], dep.workers["decode"]
        assert encoder.sample_sum(utilization) == 0
        for count, image in enumerate([*images, images[2]], start=1):
            _stream_text(client, image_content(image))
            held = min(count, 2) * embedding_bytes
            assert encoder.sample_sums([utilization, evictions]) == {
                utilization: held / capacity,
                evictions: 1 if count > 2 else 0,
            }
        assert encoder.sample_sum(utilization) <= 1

        assert (
            'triptych_kv_cache_utilization{deployment="depd",role="prefill"} 0.0'
            in dep.workers["prefill"].metrics()
        )  # the series exists, at 0, where nothing decodes
        before = decoder.sample_sums([kv, ttft, itl])
        assert before[kv] == 0
        thread, answers = _long_answer_in_background(client, KV_TOKENS)
        mid_answer: list[tuple[float, float]] = []  # (utilization, tokens sent after the first)
        while thread.is_alive():  # the client's timeout bounds it
            now = decoder.sample_sums([kv, ttft, itl])
            sent_after_first = now[itl] - before[itl]
            if now[ttft] > before[ttft] and sent_after_first < KV_TOKENS - 1:
                mid_answer.append((now[kv], sent_after_first))
            time.sleep(0.05)
        thread.join(timeout=5)
        (answer,) = answers
        assert isinstance(answer, Answer), answer
        assert len(answer.token_ids) == KV_TOKENS
        assert len(mid_answer) >= 3, mid_answer
        kv_capacity = 1 * spec.max_position_embeddings  # serving.concurrency x max_model_len
        prompt_len = len(answer.prompt_token_ids)
        assert [u for u, _ in mid_answer] == [(prompt_len + n) / kv_capacity for _, n in mid_answer]
        wait_for(
            "the decode worker to hold no KV",
            lambda d=decoder: d.sample_sum(kv) == 0 or None,  # type: ignore[misc]
            timeout=5,
            interval=0.05,
        )


def test_an_image_corrupt_past_its_header_is_refused_by_the_encoder(
    tmp_path: Path, nats: NatsServerProcess, model_dir: Path, expected: dict[str, Answer]
) -> None:
    """``decodeImagesOn: encode``: the frontend reads only the header, so a PNG whose pixel data is cut off
    gets past it; the encode worker's decode refuses it, and the client gets the media layer's 422 naming
    the problem, as when the frontend decodes (not a 500). The worker survives it and serves the next
    request token-identically."""
    image = png(13, width=320, height=240)
    truncated = image[: len(image) // 2]
    for dep in _deploy(tmp_path, nats, model_dir, "E/P/D"):
        client = dep.client(timeout=30)
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            _answer(client, image_content(truncated))
        assert refused.value.code == "media_decode_failed"
        assert "truncated or corrupt" in refused.value.message
        encoder = dep.workers["encode"]
        assert encoder.sample_sum("triptych_requests_total", outcome="client_error") == 1  # refused there
        assert _answer(client, image_content(png(7))) == expected["image"]


def test_sigterm_drains_in_flight_work_while_the_other_worker_takes_new_work(
    tmp_path: Path, nats: NatsServerProcess, model_dir: Path
) -> None:
    """What a rollout or a scale-down does to a worker: SIGTERM. The worker streaming a long answer goes
    not-ready at once, takes no new work (the next request is served by the other worker), finishes the
    answer it was streaming to the last token, and exits 0."""
    base = base_config("ddrain", "EPD", model_dir, nats.url, drainTimeoutSeconds=60, requestTimeoutSeconds=60)
    workers = [start_role(tmp_path, f"ddrain-epd-{i}", "epd", {**base, "role": "decode"}) for i in (1, 2)]
    frontend = start_role(tmp_path, "ddrain-frontend", "frontend", {**base, "role": "frontend"})
    procs = [*workers, frontend]
    try:
        wait_ready(procs)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{frontend.http_port}/v1", api_key="unused", max_retries=0, timeout=60
        )
        thread, long_answer = _long_answer_in_background(client, LONG_TOKENS)
        busy = wait_for(
            "one worker streaming the long answer",
            lambda: next(
                (w for w in workers if w.sample_sum("triptych_requests_in_flight", role="decode")), None
            ),
            timeout=20,
            interval=0.05,
        )
        (idle,) = [w for w in workers if w is not busy]
        served_before = idle.sample_sum("triptych_requests_total", role="decode", outcome="ok")
        busy.process.send_signal(signal.SIGTERM)
        wait_for(
            "the stopping worker to go not-ready", lambda: not busy.ready() or None, timeout=5, interval=0.05
        )
        assert busy.process.poll() is None, "the worker exited before its in-flight answer was done"
        assert _stream_text(client, TEXT)
        wait_for(  # the worker counts a request once its last reply has gone out: a moment after the client
            "the other worker to have served it",
            lambda: (
                idle.sample_sum("triptych_requests_total", role="decode", outcome="ok") == served_before + 1
                or None
            ),
            timeout=5,
            interval=0.05,
        )
        thread.join(timeout=90)
        assert not thread.is_alive(), "the long answer hung"
        (answer,) = long_answer
        assert isinstance(answer, Answer), answer
        assert len(answer.token_ids) == LONG_TOKENS  # every token, not an answer cut short by the stop
        assert busy.process.wait(timeout=30) == 0
    finally:
        stop_procs(procs)


def test_killed_encoder_and_nats_restart(tmp_path: Path, nats: NatsServerProcess, model_dir: Path) -> None:
    for dep in _deploy(tmp_path, nats, model_dir, "E/P/D"):
        client = dep.client(timeout=30)
        assert _stream_text(client, image_content(png(11)))

        # NATS restarts: workers reconnect by themselves and serve again.
        nats.restart()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _stream_text(client, TEXT)
                break
            except openai.APIError:
                assert time.monotonic() < deadline, "service did not recover after the NATS restart"
                time.sleep(0.5)
        assert all(p.process.poll() is None for p in [dep.frontend, *dep.workers.values()])

        # The encode worker dies mid-request: it is frozen first (SIGSTOP), so the request is certainly in
        # its hands, then killed; the client gets an error well within the deadline (the frontend stops
        # hearing the worker's keepalives), and requests needing encode fail fast afterwards.
        video = "data:video/mp4;base64," + base64.b64encode(indexed_video(48, width=320, height=240)).decode()
        outcome: list[BaseException | str] = []

        def request(
            client: openai.OpenAI = client, video: str = video, outcome: list[BaseException | str] = outcome
        ) -> None:
            try:
                outcome.append(_stream_text(client, [{"type": "video_url", "video_url": {"url": video}}]))
            except openai.APIError as exc:
                outcome.append(exc)

        encoder = dep.workers["encode"].process
        encoder.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(1.0)  # the frontend has decoded the video and sent it to the (frozen) encode worker
        encoder.kill()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the request hung after its encode worker died"
        assert time.monotonic() - started < 25
        assert outcome, "the request never finished"
        assert isinstance(outcome[0], openai.APIError), outcome
        started = time.monotonic()
        with pytest.raises(openai.APIError):
            _stream_text(client, image_content(png(13)))
        assert time.monotonic() - started < 25
        # Text-only requests skip encode and still work.
        assert _stream_text(client, TEXT)


def test_an_image_request_is_held_while_encode_is_at_zero_and_served_once_it_starts(
    tmp_path: Path, nats: NatsServerProcess, model_dir: Path, expected: dict[str, Answer]
) -> None:
    """E/PD with the encode pool scaled to zero (no encode process): the frontend is ready, answers text at
    once, and holds an image request, counted in ``triptych_pending_requests{role="encode"}``, until an
    encode worker starts; the answer is then token-identical to every mode's, and nothing is pending."""
    base = base_config(
        "dcold", "E/PD", model_dir, nats.url, requestTimeoutSeconds=90, coldStartTimeoutSeconds=90
    )
    pd = start_role(tmp_path, "dcold-pd", "pd", {**base, "role": "decode"})
    frontend = start_role(tmp_path, "dcold-frontend", "frontend", {**base, "role": "frontend"})
    procs = [pd, frontend]
    try:
        wait_ready(procs)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{frontend.http_port}/v1", api_key="unused", max_retries=0, timeout=120
        )
        assert frontend.sample_sum(METRIC_PENDING_REQUESTS, role="encode") == 0
        outcome: list[Answer | BaseException] = []

        def request() -> None:
            try:
                outcome.append(_answer(client, image_content(png(7))))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=request)
        thread.start()
        wait_for(
            "the image request to be held for encode",
            lambda: frontend.sample_sum(METRIC_PENDING_REQUESTS, role="encode") == 1 or None,
            timeout=20,
            interval=0.05,
        )
        assert _answer(client, TEXT) == expected["text"]  # text never touches encode: served meanwhile
        assert not outcome, outcome
        assert frontend.sample_sum(METRIC_PENDING_REQUESTS, role="encode") == 1

        procs.append(start_role(tmp_path, "dcold-encode", "encode", {**base, "role": "encode"}))
        thread.join(timeout=100)
        assert not thread.is_alive(), "the held request hung after the encode worker started"
        (answer,) = outcome
        assert isinstance(answer, Answer), answer
        assert answer == expected["image"]
        assert frontend.sample_sum(METRIC_PENDING_REQUESTS, role="encode") == 0
    finally:
        stop_procs(procs)


def test_an_image_request_gets_a_503_when_no_encode_worker_comes_up_in_time(
    tmp_path: Path, nats: NatsServerProcess, model_dir: Path
) -> None:
    """``serving.coldStartTimeoutSeconds: 1`` and no encode worker ever: the frontend (ready without one)
    holds the image request for that long, then answers 503 saying why; nothing stays pending."""
    base = base_config("dcold503", "E/PD", model_dir, nats.url, coldStartTimeoutSeconds=1)
    frontend = start_role(tmp_path, "dcold503-frontend", "frontend", {**base, "role": "frontend"})
    try:
        wait_ready([frontend])
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{frontend.http_port}/v1", api_key="unused", max_retries=0, timeout=30
        )
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as refused:
            _answer(client, image_content(png(7)))
        assert 1 <= time.monotonic() - started < 10
        assert refused.value.status_code == 503
        assert refused.value.code == "pool_unavailable"
        assert re.search(
            r"no encode worker became ready within 1(\.\d)? s \(the encode pool is scaled to zero or "
            r"starting\); retry later",
            refused.value.message,
        ), refused.value.message
        assert frontend.sample_sum(METRIC_PENDING_REQUESTS, role="encode") == 0
        assert frontend.sample_sum("triptych_requests_total", outcome="busy") == 1
    finally:
        stop_procs([frontend])


@pytest.mark.parametrize(
    ("ucx_overrides", "degraded"),
    [
        ({"UCX_TLS": "tcp"}, ("rdma", "tcp", "ucx_tls_excludes_rdma")),  # a RoCE profile pinned to TCP
        (None, None),  # transport tcp: nothing was asked that UCX could fail to give
    ],
)
def test_a_requested_rdma_that_ucx_cannot_use_is_flagged(
    tmp_path: Path,
    nats: NatsServerProcess,
    model_dir: Path,
    ucx_overrides: dict[str, str] | None,
    degraded: tuple[str, str, str] | None,
) -> None:
    """The operator writes what each role was given (`dataPlane.requestedTransport`) and UCX's environment
    (into the engine and its sidecar alike); the worker checks one against the other at start-up. Here the
    requested transport and the UCX environment are exactly what the operator generates for a vLLM decode
    pod (RDMA requested, the user's `rdma.ucx` pinning `UCX_TLS=tcp`; or plain `transport: tcp`), handed to
    a real worker process (the reference engine: a vLLM engine cannot run here); its `/metrics` carries
    `triptych_transport_degraded 1` with the reason, or only 0."""
    networking: dict[str, Any] = {"transport": "tcp"}
    if ucx_overrides is not None:
        networking = {"transport": "rdma", "rdma": {"resource": "rdma/ib", "count": 1, "ucx": ucx_overrides}}
    spec = parse_spec(
        {"backend": "vllm", "model": {"name": "m"}, "networking": networking, "roles": {"decode": {}}}
    )
    children = build_role(
        Owner("d", "ns", "u"), spec, "decode", OperatorSettings.from_env({}), rdma_available=False
    )
    config_map, deployment = children[0], children[2]
    data_plane = yaml.safe_load(config_map["data"]["config.yaml"])["dataPlane"]
    sidecar = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    ucx_env = {e["name"]: e["value"] for e in sidecar["env"] if e["name"].startswith("UCX_")}
    config = {
        **base_config("dtransport", "EPD", model_dir, nats.url),
        "role": "decode",
        "dataPlane": data_plane,
    }
    worker = start_role(tmp_path, "dtransport-epd", "epd", config, env=ucx_env)
    try:
        wait_ready([worker])
        samples = {
            (s.labels["requested"], s.labels["effective"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(worker.metrics())
            for s in family.samples
            if s.name == "triptych_transport_degraded"
        }
    finally:
        stop_procs([worker])
    if degraded is None:
        assert {labels[0] for labels in samples} == {"tcp"}
        assert set(samples.values()) == {0.0}
    else:
        assert samples[degraded] == 1.0
