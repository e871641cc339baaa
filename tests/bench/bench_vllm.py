"""vLLM behind Triptych vs one plain vLLM server, side by side on the same prompts (vLLM's CPU build, the
builtin tiny Qwen2-VL, host processes on 127.0.0.1; needs ``hack/backend-venv vllm``, else it says so and
measures nothing). The targets, one after another, each stopped before the next starts (a vLLM process
takes about 4 GB here), all from the same vLLM venv:

- plain: one plain vLLM server (no Triptych);
- EPD: Triptych over ONE plain vLLM (one ``epd`` sidecar in the decode role, the frontend, a real
  nats-server): the fair comparison on one machine, the same single engine on the same cores;
- E/PD: an encoder-only vLLM (ec_producer) and a vLLM that prefills and decodes (ec_consumer);
- E/P/D: an encoder-only vLLM, a prefill vLLM and a decode vLLM with vLLM's own EC and NIXL connectors.

Every vLLM runs with ``--max-num-seqs 256`` and every sidecar with ``serving.concurrency: 256`` (what the
operator writes), so vLLM can batch behind Triptych.

1. Under load, every target: vLLM's own benchmark client (``vllm bench serve``, see ``vllm_load``) at
   each concurrency level: output tokens/s, TTFT p50/p99, ITL and TPOT p50, against plain vLLM, and the CPU
   seconds of each process (a vLLM with its EngineCore child) during the run.
2. One at a time (plain and E/P/D): each prompt (an image question with a fresh image, then a text one)
   through the official ``openai`` client, streamed: TTFT and decode tokens/s.
3. In the E/P/D deployment: TTFT of an image seen before (Triptych's encoder cache answers, the encoder vLLM
   is not called; vLLM's prefill reads the stored encoder output) vs a fresh image, alternating.

Knobs (environment, ``TRIPTYCH_BENCH_VLLM_``): ``TARGETS`` (default ``plain,EPD,E/PD,E/P/D``),
``CONCURRENCY`` (``1,8,32``), ``PROMPTS`` (``16,64,128``, one per level or one for all), ``SERIAL=0`` skips 2
and 3, ``PROFILE=1`` records the EPD sidecar and the frontend with py-spy at the highest level (or
``PROFILE=E/PD,...``: those targets' Triptych processes) and prints the functions with the most own time,
``KEEP=1`` keeps the logs and the client's result JSON (the path is printed), ``OMP_THREADS`` (default 1;
0: torch's default, a thread per core) the OpenMP threads of every vLLM engine, plain included: on 2 cores
a tiny model runs faster on one (plain vLLM at concurrency 32: ~570 output tokens/s with 1, ~330 with 2, as
measured here), the setting a user of a small CPU box would choose.
Every process started here is stopped by its PID on the way out, failure included.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir

from tests.bench import vllm_load
from tests.bench.__main__ import machine
from tests.bench.vllm_load import Figures, Level
from tests.integration.workers.conftest import NatsServerProcess
from tests.media_factory import encode_image, gradient_array
from tests.vllm_processes import READY_TIMEOUT_S, VllmServer, start_vllm, vllm_python
from tests.worker_processes import Proc, base_config, start_role, stop_procs, wait_ready

SERVED = "triptych/tiny-qwen2-vl"
MAX_TOKENS = 32
SAMPLES = 6  # per kind of prompt, per side
CACHE_PAIRS = 6
TEXT = "Hello, world! How are you today?"
MAX_NUM_SEQS = 256  # every vLLM's --max-num-seqs, and every sidecar's serving.concurrency
VLLM_ARGS = ("--max-num-seqs", str(MAX_NUM_SEQS))
REQUEST_TIMEOUT_S = 300
TARGETS = ("plain", "EPD", "E/PD", "E/P/D")
# Each Triptych mode's sidecars: (name: its triptych-worker role, the config's role, its vLLM's flags).
STAGES = {
    "EPD": (("epd", "decode", "plain"),),
    "E/PD": (("encode", "encode", "encode"), ("pd", "decode", "pd")),
    "E/P/D": (
        ("encode", "encode", "encode"),
        ("prefill", "prefill", "prefill"),
        ("decode", "decode", "decode"),
    ),
}


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


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class Target:
    """One running setup: where clients send requests, and the processes measured over each run."""

    label: str
    url: str
    watched: dict[str, int]  # label -> pid, CPU seconds counted with the process's children
    triptych: dict[str, int] = field(default_factory=dict)  # the sidecars and the frontend (py-spy)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=180, max_retries=0)


def _stop_servers(servers: Sequence[VllmServer]) -> None:
    for server in servers:  # all signalled first, so they stop in parallel
        if server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        server.stop()


@contextlib.contextmanager
def _running(python: Path, tmp: Path, model_dir: Path, mode: str) -> Iterator[Target]:
    """``mode`` (plain or a Triptych mode of STAGES) started and ready; everything stopped on the way out."""
    tmp = tmp / _slug(mode)
    tmp.mkdir()
    omp = omp_threads()
    servers: list[VllmServer] = []
    procs: list[Proc] = []
    nats = NatsServerProcess()
    with contextlib.ExitStack() as stack:  # stops, last started first: the roles, the vLLMs, NATS
        if mode == "plain":
            stack.callback(_stop_servers, servers)
            servers.append(
                start_vllm(
                    python, tmp, "plain", model_dir, served=SERVED, extra_args=VLLM_ARGS, omp_threads=omp
                )
            )
            wait_ready(servers, timeout_s=READY_TIMEOUT_S)
            yield Target("plain vLLM", servers[0].url, {"vllm": servers[0].process.pid})
            return
        stack.callback(nats.stop)
        nats.start()
        stack.callback(_stop_servers, servers)
        for _, _, flags in STAGES[mode]:
            servers.append(
                start_vllm(
                    python, tmp, flags, model_dir, served=SERVED, extra_args=VLLM_ARGS, omp_threads=omp
                )
            )
        wait_ready(servers, timeout_s=READY_TIMEOUT_S)
        base = base_config(
            "benchvllm", mode, model_dir, nats.url,
            requestTimeoutSeconds=REQUEST_TIMEOUT_S, concurrency=MAX_NUM_SEQS,
        )  # fmt: skip
        base = {
            **base,
            "backend": "vllm",
            "modalities": ["image"],
            "model": {"name": SERVED, "path": str(model_dir)},
        }
        stack.callback(stop_procs, procs)
        for (name, role, _), server in zip(STAGES[mode], servers, strict=True):
            config = {**base, "role": role, "engine": {"url": server.url}}
            procs.append(start_role(tmp, f"sidecar-{name}", name, config))
        procs.append(start_role(tmp, "frontend", "frontend", {**base, "role": "frontend"}))
        wait_ready(procs, timeout_s=300)
        watched = {
            f"vllm-{name}": s.process.pid for (name, _, _), s in zip(STAGES[mode], servers, strict=True)
        }
        triptych = {p.name: p.process.pid for p in procs}
        yield Target(
            f"Triptych {mode}",
            f"http://127.0.0.1:{procs[-1].http_port}",
            {**watched, **triptych, "nats-server": nats.process.pid},
            triptych,
        )


def omp_threads() -> int | None:
    """``OMP_THREADS`` (default 1; 0: torch's default)."""
    threads = int(vllm_load.env_list("OMP_THREADS", ["1"])[0])
    return threads or None


def _slug(mode: str) -> str:
    return mode.replace("/", "-").lower()


def _profiled_modes() -> list[str]:
    raw = vllm_load.env_list("PROFILE", ["0"])
    return [] if raw == ["0"] else ["EPD"] if raw == ["1"] else raw


def main() -> None:
    python = vllm_python()
    if python is None:
        print("no vLLM venv: run hack/backend-venv vllm (6-7 GB, a few minutes cold); nothing measured")
        return
    model_dir = prepare_model(default_model_dir(ReferenceSpec()))
    modes = vllm_load.env_list("TARGETS", TARGETS)
    if unknown := [m for m in modes if m not in TARGETS]:
        raise ValueError(f"{vllm_load.PREFIX}TARGETS: unknown {unknown}; known: {', '.join(TARGETS)}")
    loads = vllm_load.levels()
    profiled = _profiled_modes()
    top = max(level.concurrency for level in loads)
    serial = vllm_load.env_list("SERIAL", ["1"]) != ["0"] and "plain" in modes and "E/P/D" in modes
    prompts = _prompts(100)
    client = vllm_load.Client(python, model_dir, SERVED)
    load: dict[str, dict[int, Figures]] = {}
    failures: dict[str, str] = {}
    serial_figures: dict[str, dict[str, list[tuple[float, float]]]] = {}
    hit: list[float] = []
    miss: list[float] = []
    tmp = Path(tempfile.mkdtemp(prefix="triptych-bench-vllm-"))
    keep = vllm_load.env_list("KEEP", ["0"]) != ["0"]
    try:
        for mode in modes:
            load[mode] = {}
            started = time.perf_counter()
            try:
                with _running(python, tmp, model_dir, mode) as target:
                    print(f"{target.label}: ready in {time.perf_counter() - started:.0f} s", flush=True)
                    if serial and mode in ("plain", "E/P/D"):
                        serial_figures[mode] = _measure(target.client(), prompts)
                    if serial and mode == "E/P/D":
                        hit, miss = _cache_pairs(target.client())
                    for level in loads:
                        spied = target.triptych if mode in profiled and level.concurrency == top else {}
                        load[mode][level.concurrency] = vllm_load.run_level(
                            client,
                            target.url,
                            level,
                            tmp / _slug(mode),
                            watched=target.watched,
                            profiled=spied,
                        )
                        print(f"{target.label}: concurrency {level.concurrency} done", flush=True)
            except Exception as exc:  # the other targets still run; the bench fails at the end
                failures[mode] = f"{type(exc).__name__}: {exc}"
                print(f"{mode}: FAILED: {failures[mode]}", flush=True)
            print(f"{mode}: {time.perf_counter() - started:.0f} s in all", flush=True)
    finally:
        if keep:
            print(f"logs and the client's result JSON kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmachine: {machine()}")
    _print_load(modes, loads, load)
    if serial_figures.keys() == {"plain", "E/P/D"}:
        _print_serial(serial_figures["plain"], serial_figures["E/P/D"], hit, miss)
    if failures:
        raise RuntimeError("; ".join(f"{mode}: {why}" for mode, why in failures.items()))


def _label(mode: str) -> str:
    return "plain vLLM" if mode == "plain" else mode


LOAD_HEADER = (
    f"{'':12}{'out tok/s':>10}{'x':>6}{'TTFT p50':>10}{'+ms':>7}{'TTFT p99':>10}"
    f"{'ITL p50':>9}{'x':>6}{'TPOT p50':>10}{'ok':>5}{'failed':>7}"
)


def _ratio(value: float, base: float | None, width: int) -> str:
    return f"{value / base:>{width}.2f}" if base else f"{'-':>{width}}"


def _load_row(mode: str, f: Figures, base: Figures | None) -> str:
    """One target at one level; x and + against plain vLLM (``base``) at the same level, when measured."""
    base = base if base is not None and base.completed else None
    tps = _ratio(f.output_tps, base.output_tps if base else None, 6)
    ttft = f"{f.ttft_p50_ms - base.ttft_p50_ms:>+7.0f}" if base else f"{'-':>7}"
    itl = _ratio(f.itl_p50_ms, base.itl_p50_ms if base else None, 6)
    row = f"{_label(mode):12}{f.output_tps:>10.1f}{tps}{f.ttft_p50_ms:>10.0f}{ttft}{f.ttft_p99_ms:>10.0f}"
    return row + f"{f.itl_p50_ms:>9.1f}{itl}{f.tpot_p50_ms:>10.1f}{f.completed:>5}{f.failed:>7}"


def _print_load(modes: Sequence[str], loads: Sequence[Level], load: dict[str, dict[int, Figures]]) -> None:
    side = vllm_load.IMAGE_SIDE
    print(
        "\nUnder load: vLLM's own client (vllm bench serve, openai-chat, streamed, greedy, ignore_eos),"
        f" random-mm: 1 random {side}x{side} JPEG + {vllm_load.INPUT_LEN} random tokens in,"
        f" {vllm_load.OUTPUT_LEN} tokens out; x and + against plain vLLM at the same level"
    )
    omp = omp_threads()
    print(f"every vLLM engine: OpenMP threads {omp or 'torch default (one per core)'}")
    print(
        "EPD (Triptych over ONE vLLM) is the fair row on this machine: the same single engine on the same"
        " cores. E/PD and E/P/D run 2-3 engines on those cores: a split that pays with a device per stage."
    )
    print(
        "TTFT: to the first streamed event; ITL: gaps between events as the client reads them (events read"
        " together give ~0 gaps, one event of several tokens one gap); TPOT: (latency - TTFT) / (tokens - 1)"
    )
    for level in loads:
        print(f"\nconcurrency {level.concurrency}, {level.prompts} prompts (ms)")
        print(LOAD_HEADER)
        base = load.get("plain", {}).get(level.concurrency)
        for mode in modes:
            f = load[mode].get(level.concurrency)
            if f is None:
                print(f"{_label(mode):12}{'(not measured)':>20}")
                continue
            print(_load_row(mode, f, base))
            if f.first_error:
                print(f"{'':12}first error: {f.first_error}")
            if f.short_answers:
                print(f"{'':12}{f.short_answers} answers shorter than {vllm_load.OUTPUT_LEN} tokens")
    measured = [(mode, level, load[mode][level.concurrency]) for mode in modes for level in loads
                if level.concurrency in load[mode]]  # fmt: skip
    print(
        "\nCPU seconds over the client's main run (wall), each process with its children (vLLM: EngineCore)"
    )
    for mode, level, f in measured:
        cpu = "  ".join(f"{label} {s:.1f}" for label, s in f.cpu_s.items())
        print(f"{_label(mode):12}c={level.concurrency:<4}wall {f.duration_s:.1f}  {cpu}")
    for mode, level, f in measured:
        for label, profile in f.profiles.items():
            busy = profile.samples / profile.expected if profile.expected else 0.0
            print(
                f"\npy-spy, {_label(mode)} {label}, concurrency {level.concurrency}: {profile.samples}"
                f" samples of non-idle threads ({busy:.0%} of one thread busy over the main run); own time:"
            )
            for function, n in profile.top:
                print(f"  {n / max(profile.samples, 1):>6.1%}  {function}")


def _print_serial(
    base: dict[str, list[tuple[float, float]]],
    ours: dict[str, list[tuple[float, float]]],
    hit: Sequence[float],
    miss: Sequence[float],
) -> None:
    print(f"\nOne request at a time: {MAX_TOKENS} tokens per answer, the official openai client, "
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


def _cache_pairs(client: openai.OpenAI) -> tuple[list[float], list[float]]:
    """Image TTFTs, (hits, misses): a seen image and a fresh one, alternating."""
    hit: list[float] = []
    miss: list[float] = []
    seen = _image(7)
    _timed(client, seen)
    for i in range(CACHE_PAIRS):
        miss.append(_timed(client, _image(1000 + i))[0])
        hit.append(_timed(client, seen)[0])
    return hit, miss
