"""The serving path end to end: a real nats-server and the role processes (E/P/D) on 127.0.0.1, driven by the
official ``openai`` client through the frontend, side by side:

0. Where images are decoded (``serving.decodeImagesOn``): ``encode`` (the frontend reads the header, the
   file travels as fetched and the encode worker decodes it) vs ``frontend`` (decoded pixels travel), two
   frontends on the same workers, fresh 640x480 images (a photo-like JPEG and a PNG): frontend and encoder
   CPU per image (from /proc), bytes the encoder read per miss (its ``triptych_transfer_bytes_total``), TTFT
   one at a time, and req/s with ``IN_FLIGHT`` at once.
1. TTFT with an encoder-cache hit (one image repeated) vs a miss (a fresh image each time), requests one at a
   time, alternating, so drift hits both alike.
2. Request throughput with one vs two encode workers: image requests (all fresh, so every one is encoded),
   ``IN_FLIGHT`` clients at once, a fixed count, ``MAX_TOKENS`` tokens so encode dominates.
3. Encoder-cache hit rate of the cache-aware router (``serving.encodeRouting: cache-aware``, the default) vs
   round-robin (``round-robin``) across three encode workers, on one trace shape with 50 % image reuse (each
   request shows, with probability 1/2, one of ``POPULAR`` images, else a fresh one), each policy on its own
   images. Hit rates come from the encode workers' ``/metrics``: each worker's hit rate times its encode
   requests (one lookup each), differenced around the run. Both frontends share the same worker processes.

One deployment grows as it goes (one encode worker, then two, then three), so the processes start once. Every
wait has a deadline; every process started here is stopped by its PID on the way out, failure included.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir

from tests.bench.__main__ import machine
from tests.integration.workers.conftest import NatsServerProcess
from tests.media_factory import encode_image, gradient_array, noise_array
from tests.worker_processes import (
    MODEL,
    Proc,
    base_config,
    image_content,
    start_role,
    stop_procs,
    wait_ready,
)

DEPLOYMENT = "bench"
MAX_TOKENS = 4
TTFT_SAMPLES = 24  # per side
PLACEMENT_IMAGES = 32  # per placement and image kind
THROUGHPUT_REQUESTS = 48
IN_FLIGHT = 16
TRACE_REQUESTS = 48
TRACE_IN_FLIGHT = 4
POPULAR = 6
REQUEST_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 180.0  # torch and the model load in every process: slow on 2 busy cores
HEARTBEAT_S = 0.5

Content = list[dict[str, Any]]
T = TypeVar("T")


@dataclass
class Run:
    ttfts: list[float]
    wall_s: float

    @property
    def rate(self) -> float:
        return len(self.ttfts) / self.wall_s


def _quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (p99 of a few dozen samples is their maximum)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _unique_png(seed: int, size: tuple[int, int] = (112, 112)) -> bytes:
    """A gradient whose bytes differ for every seed: the gradient repeats every 256 seeds, so the seed is also
    stamped into the first pixel. 112x112 is the reference encoder's largest input; larger images are
    resized by the encoder, after the decoded pixels travelled from the frontend to it."""
    width, height = size
    pixels = gradient_array(width, height, seed)
    pixels[0, 0] = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
    return encode_image(pixels, "PNG")


def _photo_jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """Something that compresses like a photo (a gradient under fine noise, JPEG quality 90: about 10:1 of
    its pixels), unlike a pure gradient PNG, which compresses a hundredfold."""
    width, height = size
    blend = 0.8 * gradient_array(width, height, seed) + 0.2 * noise_array(width, height, seed)
    return encode_image(blend.astype("uint8"), "JPEG", quality=90)


def _images(first_seed: int, count: int, size: tuple[int, int] = (112, 112)) -> list[Content]:
    """``count`` distinct images; every seed range used in this module is disjoint from the others."""
    return [image_content(_unique_png(seed, size)) for seed in range(first_seed, first_seed + count)]


async def _alternate(
    client: openai.AsyncOpenAI, misses: Sequence[Content], hot: Content
) -> tuple[list[float], list[float]]:
    """TTFTs of each fresh image and of ``hot`` after it, one request at a time, so drift hits both alike."""
    miss_ttft: list[float] = []
    hit_ttft: list[float] = []
    for fresh in misses:
        miss_ttft.append(await _ttft(client, fresh))
        hit_ttft.append(await _ttft(client, hot))
    return miss_ttft, hit_ttft


async def _ttft(client: openai.AsyncOpenAI, content: Content) -> float:
    """Seconds to the first generated token of one streamed request (the whole answer is read)."""
    message: Any = {"role": "user", "content": content}
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[message],
        stream=True,
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    first: float | None = None
    async for chunk in stream:
        if first is None and chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content or choice.finish_reason:
                first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


async def _drive(client: openai.AsyncOpenAI, contents: Sequence[Content], in_flight: int) -> Run:
    """Send every request, at most ``in_flight`` at once, in order; TTFTs in request order."""
    slots = asyncio.Semaphore(in_flight)

    async def one(content: Content) -> float:
        async with slots:
            return await _ttft(client, content)

    started = time.perf_counter()
    ttfts = await asyncio.gather(*(one(c) for c in contents))
    return Run(list(ttfts), time.perf_counter() - started)


async def _bounded(work: Awaitable[T]) -> T:
    return await asyncio.wait_for(work, timeout=PHASE_TIMEOUT_S)


def _client(frontend: Proc) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{frontend.http_port}/v1",
        api_key="unused",
        max_retries=0,
        timeout=REQUEST_TIMEOUT_S,
    )


def _sample(text: str, name: str) -> float:
    """The value of the one sample of metric ``name`` in a scrape (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _cache_counts(encoders: Sequence[Proc]) -> tuple[int, int]:
    """(hits, lookups) summed over the encode workers, from their ``/metrics``."""
    hits = lookups = 0
    for proc in encoders:
        scraped = proc.metrics()
        served = round(_sample(scraped, 'triptych_requests_total{deployment="bench",outcome="ok"'))
        hits += round(_sample(scraped, "triptych_encoder_cache_hit_rate{") * served)
        lookups += served
    return hits, lookups


def _trace(first_seed: int, rng: random.Random) -> list[Content]:
    """``TRACE_REQUESTS`` requests, each with probability 1/2 one of ``POPULAR`` images, else a fresh one."""
    popular = _images(first_seed, POPULAR)
    fresh = iter(_images(first_seed + POPULAR, TRACE_REQUESTS))
    return [rng.choice(popular) if rng.random() < 0.5 else next(fresh) for _ in range(TRACE_REQUESTS)]


def _cpu_s(procs: Sequence[Proc]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    ticks = 0
    for proc in procs:
        with open(f"/proc/{proc.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Placement:
    """One frontend's figures over a batch of fresh images."""

    frontend_cpu_s: float
    encoder_cpu_s: float
    bytes_read: float
    ttfts: list[float]
    images: int


async def _placement(
    client: openai.AsyncOpenAI, frontend: Proc, encoders: Sequence[Proc], contents: Sequence[Content]
) -> Placement:
    """Fresh images one at a time through ``frontend``: CPU and bytes around the batch, and TTFTs."""
    before = (_cpu_s([frontend]), _cpu_s(encoders), _bytes_read(encoders))
    ttfts = [await _ttft(client, content) for content in contents]
    after = (_cpu_s([frontend]), _cpu_s(encoders), _bytes_read(encoders))
    return Placement(after[0] - before[0], after[1] - before[1], after[2] - before[2], ttfts, len(contents))


def _bytes_read(encoders: Sequence[Proc]) -> float:
    return sum(proc.sample_sum("triptych_transfer_bytes_total") for proc in encoders)


def _fmt_ms(values: Sequence[float]) -> str:
    return f"{_quantile(values, 0.5) * 1e3:8.1f} {_quantile(values, 0.99) * 1e3:8.1f}"


class Bench:
    def __init__(self, tmp: Path, nats_url: str, model_dir: Path) -> None:
        self.tmp = tmp
        self.base = base_config(
            DEPLOYMENT,
            "E/P/D",
            model_dir,
            nats_url,
            heartbeatSeconds=HEARTBEAT_S,
            requestTimeoutSeconds=REQUEST_TIMEOUT_S,
            queueCapacity=IN_FLIGHT,
        )
        self.procs: list[Proc] = []
        self.encoders: list[Proc] = []

    def start(self, name: str, role: str, k8s_role: str, **serving: Any) -> Proc:
        config = {**self.base, "role": k8s_role}
        config["serving"] = {**config["serving"], **serving}
        proc = start_role(self.tmp, f"{DEPLOYMENT}-{name}", role, config)
        self.procs.append(proc)
        return proc

    async def add_encoder(self, client: openai.AsyncOpenAI) -> None:
        """Start one more encode worker, wait until the frontends know it, and warm it up: a burst of fresh
        images as wide as the pool, so every worker gets some (its first requests wire up NIXL)."""
        proc = self.start(f"encode-{len(self.encoders) + 1}", "encode", "encode")
        await asyncio.to_thread(wait_ready, [proc], READY_TIMEOUT_S)
        self.encoders.append(proc)
        await asyncio.sleep(3 * HEARTBEAT_S)  # bounded: the frontends hear its load announcements
        width = len(self.encoders)
        await _bounded(_drive(client, _images(9000 + 100 * width, 3 * width), width))


def main() -> None:
    print(f"machine: {machine()}", flush=True)
    model_dir = prepare_model(default_model_dir(ReferenceSpec()))
    nats = NatsServerProcess()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        bench = Bench(Path(tmp), "", model_dir)
        nats.start()
        bench.base["nats"] = {"url": nats.url}
        try:
            asyncio.run(_run(bench))
        finally:
            stop_procs(bench.procs)
            nats.stop()


async def _run(bench: Bench) -> None:
    started = time.perf_counter()
    workers = [bench.start("prefill", "prefill", "prefill"), bench.start("decode", "decode", "decode")]
    frontend = bench.start("frontend", "frontend", "frontend")
    await asyncio.to_thread(wait_ready, [*workers, frontend], READY_TIMEOUT_S)
    client = _client(frontend)
    await bench.add_encoder(client)
    print(f"E/P/D on 127.0.0.1 up in {time.perf_counter() - started:.1f} s; max_tokens={MAX_TOKENS}")

    await _where_images_are_decoded(bench, client, frontend)

    # 1. TTFT, encoder-cache hit vs miss (one encode worker, one request at a time, alternating), for a small
    # image (its pixels ride inside the request) and a large one (its decoded pixels, 900 KB, go over NIXL
    # to the encoder on a miss; a hit is found by hash and reads nothing).
    print(f"\n1. TTFT, encoder-cache hit vs miss ({TTFT_SAMPLES} requests each, one at a time)")
    print(f"{'':24} {'p50 ms':>8} {'p99 ms':>8}")
    for first_seed, size in ((100, (112, 112)), (500, (640, 480))):
        hot = _images(first_seed - 1, 1, size)[0]
        await _bounded(_ttft(client, hot))
        miss_ttft, hit_ttft = await _bounded(_alternate(client, _images(first_seed, TTFT_SAMPLES, size), hot))
        label = f"{size[0]}x{size[1]}"
        print(f"{label + ' miss (fresh)':24} {_fmt_ms(miss_ttft)}")
        print(f"{label + ' hit (repeated)':24} {_fmt_ms(hit_ttft)}")
        ratio = statistics.median(miss_ttft) / statistics.median(hit_ttft)
        print(f"{label} miss/hit p50: {ratio:.2f}x")

    # 2. Throughput with one vs two encode workers (fresh images: every request is encoded).
    one = await _bounded(_drive(client, _images(1000, THROUGHPUT_REQUESTS), IN_FLIGHT))
    await bench.add_encoder(client)
    two = await _bounded(_drive(client, _images(2000, THROUGHPUT_REQUESTS), IN_FLIGHT))
    print(f"\n2. Throughput, {THROUGHPUT_REQUESTS} image requests, {IN_FLIGHT} in flight, fresh images")
    print(f"{'encode workers':16} {'req/s':>8} {'TTFT p50':>9} {'p99 ms':>8}")
    for label, run in (("1", one), ("2", two)):
        print(f"{label:16} {run.rate:8.2f} {_fmt_ms(run.ttfts)}")
    print(f"2 vs 1 workers: {two.rate / one.rate:.2f}x req/s")

    # 3. Cache-aware vs round-robin routing across three encode workers, 50 % image reuse.
    await bench.add_encoder(client)
    round_robin = bench.start("frontend-rr", "frontend", "frontend", encodeRouting="round-robin")
    await asyncio.to_thread(wait_ready, [round_robin], READY_TIMEOUT_S)
    await asyncio.sleep(3 * HEARTBEAT_S)  # bounded: the new frontend hears the encoders' announcements
    rr_client = _client(round_robin)
    await _bounded(_drive(rr_client, _images(9900, 9), 3))  # its first requests, to every encoder
    results: dict[str, tuple[float, float, Run]] = {}
    rng = random.Random(6)
    for label, policy_client, first_seed in (
        ("cache-aware", client, 3000),
        ("round-robin", rr_client, 5000),
    ):
        trace = _trace(first_seed, rng)
        ideal = 1 - len({id(c) for c in trace}) / len(trace)  # every repeat after the first sighting
        hits_before, lookups_before = await asyncio.to_thread(_cache_counts, bench.encoders)
        run = await _bounded(_drive(policy_client, trace, TRACE_IN_FLIGHT))
        hits, lookups = await asyncio.to_thread(_cache_counts, bench.encoders)
        results[label] = (ideal, (hits - hits_before) / max(1, lookups - lookups_before), run)
    print(
        f"\n3. Routing across {len(bench.encoders)} encode workers: {TRACE_REQUESTS} requests, each one of "
        f"{POPULAR} popular images with probability 1/2, else fresh; {TRACE_IN_FLIGHT} in flight"
    )
    print(f"{'policy':16} {'hit rate':>8} {'ideal':>8} {'req/s':>8} {'TTFT p50':>9} {'p99 ms':>8}")
    for label, (ideal, rate, run) in results.items():
        print(f"{label:16} {rate:8.1%} {ideal:8.1%} {run.rate:8.2f} {_fmt_ms(run.ttfts)}")
    print("(ideal: one cache shared by all workers, a hit for every repeat after its first sighting)")
    (_, aware, aware_run), (_, rr, rr_run) = results["cache-aware"], results["round-robin"]
    print(
        f"cache-aware vs round-robin: hit rate {aware / rr if rr else math.inf:.2f}x; TTFT p50 "
        f"{(statistics.median(aware_run.ttfts) - statistics.median(rr_run.ttfts)) * 1e3:+.1f} ms, "
        f"p99 {(_quantile(aware_run.ttfts, 0.99) - _quantile(rr_run.ttfts, 0.99)) * 1e3:+.1f} ms"
    )


async def _where_images_are_decoded(bench: Bench, client: openai.AsyncOpenAI, frontend: Proc) -> None:
    """0. The default frontend (``decodeImagesOn: encode``) vs one that decodes itself (``frontend``)."""
    pixels_frontend = bench.start("frontend-pixels", "frontend", "frontend", decodeImagesOn="frontend")
    await asyncio.to_thread(wait_ready, [pixels_frontend], READY_TIMEOUT_S)
    pixels_client = _client(pixels_frontend)
    await _bounded(_drive(pixels_client, _images(9800, 3), 1))  # its first requests wire up its data plane
    sides = (("encode", client, frontend), ("frontend", pixels_client, pixels_frontend))
    print(f"\n0. Where images are decoded, {PLACEMENT_IMAGES} fresh 640x480 images each, one at a time")
    print(
        f"{'image':6} {'decoded on':10} {'frontend':>9} {'encoder':>9} {'KB read':>8} "
        f"{'TTFT p50':>9} {'p99 ms':>8}"
    )
    print(f"{'':17} {'CPU ms per image':>19} {'per miss':>8}")
    seeds = iter(range(20000, 30000, 1000))
    for kind, make in (("JPEG", _photo_jpeg), ("PNG", _unique_png)):
        measured: dict[str, Placement] = {}
        for label, side_client, side_frontend in sides:
            first = next(seeds)
            batch = [image_content(make(seed, (640, 480))) for seed in range(first, first + PLACEMENT_IMAGES)]
            measured[label] = await _bounded(_placement(side_client, side_frontend, bench.encoders, batch))
        for label, m in measured.items():
            per_image = (m.frontend_cpu_s / m.images * 1e3, m.encoder_cpu_s / m.images * 1e3)
            print(
                f"{kind:6} {label:10} {per_image[0]:9.2f} {per_image[1]:9.2f} "
                f"{m.bytes_read / m.images / 1e3:8.1f} {_fmt_ms(m.ttfts)}"
            )
        enc, pix = measured["encode"], measured["frontend"]
        print(
            f"{kind}, encode vs frontend: frontend CPU "
            f"{pix.frontend_cpu_s / max(enc.frontend_cpu_s, 1e-9):.2f}x less, "
            f"{pix.bytes_read / max(enc.bytes_read, 1.0):.1f}x fewer bytes, TTFT p50 "
            f"{(statistics.median(enc.ttfts) - statistics.median(pix.ttfts)) * 1e3:+.1f} ms"
        )
    rates: dict[str, Run] = {}
    for label, side_client, _ in sides:
        first = next(seeds)
        batch = [
            image_content(_photo_jpeg(seed, (640, 480))) for seed in range(first, first + THROUGHPUT_REQUESTS)
        ]
        rates[label] = await _bounded(_drive(side_client, batch, IN_FLIGHT))
    for label, run in rates.items():
        print(
            f"JPEG, {IN_FLIGHT} in flight, decoded on {label:8}: {run.rate:6.2f} req/s, "
            f"TTFT {_fmt_ms(run.ttfts)}"
        )
    print(f"req/s, encode vs frontend: {rates['encode'].rate / rates['frontend'].rate:.2f}x")


if __name__ == "__main__":
    main()
