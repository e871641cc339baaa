"""vLLM behind Triptych vs one plain vLLM server, side by side on the same prompts (vLLM's CPU build, the
builtin tiny Qwen2-VL, host processes on 127.0.0.1; needs ``hack/backend-venv vllm``, else it says so and
measures nothing):

1. One plain vLLM server (no Triptych): each prompt (an image question with a fresh image, then a text one)
   one at a time through the official ``openai`` client, streamed: TTFT and decode tokens/s.
2. The Triptych E/P/D over vLLM (an encoder-only vLLM, a prefill vLLM and a decode vLLM with vLLM's own EC
   and NIXL connectors, each driven by its triptych-worker sidecar, behind the Triptych frontend, over a real
   nats-server): the same prompts, the same figures.
3. In the E/P/D deployment: TTFT of an image seen before (Triptych's encoder cache answers, the encoder vLLM
   is not called; vLLM's prefill reads the stored encoder output) vs a fresh image, alternating.

The plain server is stopped before the deployment starts (a vLLM process takes about 4 GB here). Every
process started here is stopped by its PID on the way out, failure included.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir

from tests.bench.__main__ import machine
from tests.integration.workers.conftest import NatsServerProcess
from tests.media_factory import encode_image, gradient_array
from tests.vllm_processes import READY_TIMEOUT_S, VllmServer, start_vllm, vllm_python
from tests.worker_processes import base_config, start_role, stop_procs, wait_ready

SERVED = "triptych/tiny-qwen2-vl"
MAX_TOKENS = 32
SAMPLES = 6  # per kind of prompt, per side
CACHE_PAIRS = 6
TEXT = "Hello, world! How are you today?"


def _image(seed: int) -> list[dict[str, Any]]:
    import base64

    png = encode_image(gradient_array(128, 96, seed), "PNG")
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return [{"type": "text", "text": "Describe the image."}, {"type": "image_url", "image_url": {"url": url}}]


def _timed(client: openai.OpenAI, content: Any) -> tuple[float, float]:
    """(TTFT in s, decode tokens/s after the first token) of one streamed greedy answer."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": content}],
        stream=True,
        temperature=0,
        max_tokens=MAX_TOKENS,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    for chunk in stream:
        for choice in chunk.choices:
            ids = (choice.model_extra or {}).get("token_ids") or []
            if ids and first is None:
                first = time.perf_counter()
            tokens += len(ids)
    done = time.perf_counter()
    if first is None or tokens < 2:
        raise RuntimeError(f"an answer of {tokens} tokens")
    return first - started, (tokens - 1) / (done - first)


def _prompts(first_seed: int) -> list[tuple[str, Any]]:
    return [(kind, _image(first_seed + i) if kind == "image" else TEXT) for i in range(SAMPLES)
            for kind in ("image", "text")]  # fmt: skip


def _measure(
    client: openai.OpenAI, prompts: Sequence[tuple[str, Any]]
) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {"image": [], "text": []}
    _timed(client, TEXT)  # warm-up, not counted
    for kind, content in prompts:
        out[kind].append(_timed(client, content))
    return out


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=180, max_retries=0)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> None:
    python = vllm_python()
    if python is None:
        print("no vLLM venv: run hack/backend-venv vllm (6-7 GB, a few minutes cold); nothing measured")
        return
    model_dir = prepare_model(default_model_dir(ReferenceSpec()))
    prompts = _prompts(100)
    with tempfile.TemporaryDirectory(prefix="triptych-bench-vllm-") as tmp_name:
        tmp = Path(tmp_name)
        plain = start_vllm(python, tmp, "plain", model_dir, served=SERVED)
        try:
            wait_ready([plain], timeout_s=READY_TIMEOUT_S)
            base = _measure(_client(plain.url), prompts)
        finally:
            plain.stop()
        ours, hit, miss = _triptych(python, tmp, model_dir, prompts)
    print(f"machine: {machine()}")
    print(f"vLLM 0.32.0 CPU build, tiny Qwen2-VL, {MAX_TOKENS} tokens per answer, one request at a time, "
          f"{SAMPLES} prompts of each kind per side (medians)")  # fmt: skip
    print(f"{'':28}{'plain vLLM':>14}{'Triptych E/P/D':>16}{'ratio':>8}")
    for kind in ("image", "text"):
        b_ttft, o_ttft = _median([t for t, _ in base[kind]]), _median([t for t, _ in ours[kind]])
        b_tps, o_tps = _median([r for _, r in base[kind]]), _median([r for _, r in ours[kind]])
        print(f"{kind + ' TTFT (ms)':28}{b_ttft * 1e3:>14.0f}{o_ttft * 1e3:>16.0f}{o_ttft / b_ttft:>8.2f}")
        print(f"{kind + ' decode tokens/s':28}{b_tps:>14.1f}{o_tps:>16.1f}{o_tps / b_tps:>8.2f}")
    print(f"\nTriptych E/P/D, image TTFT, {CACHE_PAIRS} pairs alternating (medians)")
    print(f"{'':28}{'miss':>14}{'hit':>16}{'ratio':>8}")
    h, m = _median(hit), _median(miss)
    print(f"{'TTFT (ms)':28}{m * 1e3:>14.0f}{h * 1e3:>16.0f}{h / m:>8.2f}")


def _triptych(
    python: Path, tmp: Path, model_dir: Path, prompts: Sequence[tuple[str, Any]]
) -> tuple[dict[str, list[tuple[float, float]]], list[float], list[float]]:
    nats = NatsServerProcess()
    nats.start()
    servers: list[VllmServer] = []
    procs = []
    try:
        servers = [
            start_vllm(python, tmp, role, model_dir, served=SERVED)
            for role in ("encode", "prefill", "decode")
        ]
        wait_ready(servers, timeout_s=READY_TIMEOUT_S)
        base = base_config("benchvllm", "E/P/D", model_dir, nats.url, requestTimeoutSeconds=180)
        base = {
            **base,
            "backend": "vllm",
            "modalities": ["image"],
            "model": {"name": SERVED, "path": str(model_dir)},
        }
        procs += [
            start_role(tmp, f"sidecar-{s.name}", s.name, {**base, "role": s.name, "engine": {"url": s.url}})
            for s in servers
        ]
        frontend = start_role(tmp, "frontend", "frontend", {**base, "role": "frontend"})
        procs.append(frontend)
        wait_ready(procs, timeout_s=300)
        client = _client(f"http://127.0.0.1:{frontend.http_port}")
        ours = _measure(client, prompts)
        hit: list[float] = []
        miss: list[float] = []
        seen = _image(7)
        _timed(client, seen)
        for i in range(CACHE_PAIRS):
            miss.append(_timed(client, _image(1000 + i))[0])
            hit.append(_timed(client, seen)[0])
        return ours, hit, miss
    finally:
        stop_procs(procs)
        for server in servers:
            server.stop()
        nats.stop()
