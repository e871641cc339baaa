"""Media benchmark: our connector + decoder against a seed-shaped loader on one corpus, side by side.

The corpus (40 images, 224x224 to 1920x1080, PNG and JPEG) is served over loopback by uvicorn (HTTP/1.1,
keep-alive, a deep accept backlog) in a child process, so the server's CPU is not spent on the client's
event loop. The trace is what real traffic looks like: 200 requests, half of them repeats of 8 popular
images, arriving in bursts of 16 concurrent requests.

* ours: ``MediaConnector`` (pooled client, one fetch per URL in flight, byte-bounded cache of bytes) ->
  BLAKE3 of the bytes -> ``EncoderCache`` keyed by that hash, whose computation is the image decode on an
  executor. Concurrent requests for one image share one fetch and one decode.
* seed-like baseline: one shared ``httpx.AsyncClient``, PIL decode in a thread, an 8-entry FIFO cache of
  decoded images keyed by URL, no in-flight sharing (what the seed's image loader does).

Also: video frames/s (ours: sample first, convert only the sampled frames; baseline: the seed's convert-all
then pick), BLAKE3 vs SHA-256 throughput, and encoder-cache hit vs miss latency.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import multiprocessing
import random
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from PIL import Image
from triptych_workers.cache import EncoderCache
from triptych_workers.hashing import hash_media
from triptych_workers.media.connector import FetchPolicy, MediaConnector
from triptych_workers.media.image import decode_image_async
from triptych_workers.media.video import VideoOptions, decode_video

from tests.media_factory import encode_image, encode_video, gradient_array

SIZES = [(224, 224), (336, 336), (448, 448), (640, 480), (800, 600), (1024, 768), (1280, 720), (1920, 1080)]
CORPUS_SIZE = 40
POPULAR = 8
REQUESTS = 200
BURST = 16
ROUNDS = 3
DECODE_THREADS = 4

Loader = Callable[[str], Awaitable[Image.Image]]


# ------------------------------------------------------------------------------------------ corpus + server


def photo_like(width: int, height: int, seed: int) -> npt.NDArray[np.uint8]:
    """A gradient with mild noise: compresses and decodes like a photograph, not like flat colour or noise."""
    noise = np.random.default_rng(seed).integers(-12, 13, size=(height, width, 3))
    pixels: npt.NDArray[np.uint8] = np.clip(gradient_array(width, height, seed) + noise, 0, 255).astype(
        np.uint8
    )
    return pixels


def make_corpus() -> dict[str, tuple[bytes, str]]:
    corpus: dict[str, tuple[bytes, str]] = {}
    for i in range(CORPUS_SIZE):
        width, height = SIZES[i % len(SIZES)]
        if i % 2:
            corpus[f"/img/{i}.png"] = (encode_image(photo_like(width, height, i), "PNG"), "image/png")
        else:
            corpus[f"/img/{i}.jpg"] = (
                encode_image(photo_like(width, height, i), "JPEG", quality=90),
                "image/jpeg",
            )
    return corpus


def make_trace(paths: list[str], seed: int = 0) -> list[str]:
    """Half the requests repeat the 8 popular images, the rest spread over the other 32; shuffled."""
    rng = random.Random(seed)
    popular, rest = paths[:POPULAR], paths[POPULAR:]
    trace = [rng.choice(popular) for _ in range(REQUESTS // 2)]
    trace += [rest[i % len(rest)] for i in range(REQUESTS - len(trace))]
    rng.shuffle(trace)
    return trace


def _serve(sock: socket.socket, corpus: dict[str, tuple[bytes, str]]) -> None:
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, content_type = corpus.get(scope["path"], (b"not found", "text/plain"))
        status = 200 if scope["path"] in corpus else 404
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(app, http="h11", lifespan="off", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


class CorpusServer:
    """uvicorn in a child process on a free loopback port; the socket listens before the child starts."""

    def __init__(self, corpus: dict[str, tuple[bytes, str]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)  # connections queue here until the child accepts them: ready at once
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(self.sock, corpus), daemon=True
        )

    def __enter__(self) -> CorpusServer:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(timeout=10)
        self.sock.close()


# ------------------------------------------------------------------------------------------ the two loaders


class SeedLikeLoader:
    """The seed's image loader: shared client, decode in a thread, 8-entry FIFO cache, no shared fetches."""

    def __init__(self, client: httpx.AsyncClient, executor: ThreadPoolExecutor) -> None:
        self.client = client
        self.executor = executor
        self.cache: dict[str, Image.Image] = {}

    async def __call__(self, url: str) -> Image.Image:
        if url in self.cache:
            return self.cache[url]
        response = await self.client.get(url)
        response.raise_for_status()
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.executor, _pil_decode, response.content)
        if len(self.cache) >= 8:
            self.cache.pop(next(iter(self.cache)))  # FIFO
        self.cache[url] = image
        return image


def _pil_decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


class OurLoader:
    """Connector (shared fetches, byte cache) -> BLAKE3 -> decode coalesced and cached by content hash."""

    def __init__(self, connector: MediaConnector, executor: ThreadPoolExecutor) -> None:
        self.connector = connector
        self.executor = executor
        self.decoded: EncoderCache[Image.Image] = EncoderCache(
            512 * 1024 * 1024, size_of=lambda im: im.width * im.height * 3
        )

    async def __call__(self, url: str) -> Image.Image:
        fetched = await self.connector.fetch(url, modality="image")
        key = hash_media(fetched.data).hex
        return await self.decoded.get_or_compute(
            key, lambda: decode_image_async(fetched.data, executor=self.executor)
        )


async def run_trace(load: Loader, urls: list[str]) -> tuple[float, list[float]]:
    """Bursts of ``BURST`` concurrent requests; returns (images per second, per-request latencies)."""
    latencies: list[float] = []

    async def one(url: str) -> None:
        started = time.perf_counter()
        image = await load(url)
        assert image.mode == "RGB"
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    for i in range(0, len(urls), BURST):
        await asyncio.gather(*(one(url) for url in urls[i : i + BURST]))
    return len(urls) / (time.perf_counter() - started), latencies


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


async def bench_images(base: str, trace: list[str]) -> None:
    urls = [base + path for path in trace]
    results: dict[str, list[tuple[float, list[float]]]] = {"seed-like": [], "ours": []}
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="bench-decode") as executor:
        # Warm both paths once (imports, first connections) before anything is timed.
        async with httpx.AsyncClient() as client:
            await SeedLikeLoader(client, executor)(urls[0])
        policy = FetchPolicy(allow_private_networks=True)
        async with MediaConnector(policy) as connector:
            await OurLoader(connector, executor)(urls[0])

        for _ in range(ROUNDS):  # alternate, fresh caches each round, so drift hits both alike
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
            timeout = httpx.Timeout(30, connect=5, pool=60)
            async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
                results["seed-like"].append(await run_trace(SeedLikeLoader(client, executor), urls))
            async with MediaConnector(policy) as connector:
                loader = OurLoader(connector, executor)
                results["ours"].append(await run_trace(loader, urls))
                fetch_stats, decode_stats = connector.stats(), loader.decoded.stats()

    print(
        f"images: {len(set(trace))} distinct of {len(trace)} requests, bursts of {BURST}, "
        f"{ROUNDS} rounds each (median round shown), {DECODE_THREADS} decode threads"
    )
    rates = {}
    for name, rounds in results.items():
        rate = statistics.median(r for r, _ in rounds)
        lat = [x for _, run in rounds for x in run]
        rates[name] = rate
        print(f"  {name:>10}: {rate:7.1f} img/s   p50 {pct(lat, 50):7.1f} ms   p99 {pct(lat, 99):7.1f} ms")
    print(f"  ratio ours/seed-like: {rates['ours'] / rates['seed-like']:.2f}x images/s")
    print(
        f"  ours, last round: {fetch_stats.network_fetches} network fetches, {fetch_stats.cache_hits} "
        f"byte-cache hits, {fetch_stats.coalesced} joined in flight; {decode_stats.misses} decodes, "
        f"{decode_stats.hits} decode hits ({decode_stats.coalesced} joined in flight)"
    )


# ------------------------------------------------------------------------------------------ video


def seed_like_video(data: bytes, num_frames: int) -> np.ndarray:
    """The seed's loader: decode and convert every frame, then pick linspace indices."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picked = sorted(set(np.linspace(0, len(frames) - 1, num_frames).astype(int).tolist()))
    return np.stack([frames[i] for i in picked])


def bench_video() -> None:
    rng = np.random.default_rng(0)
    base = photo_like(640, 480, 1)
    frames = [
        np.roll(base, 4 * i, axis=1) ^ rng.integers(0, 8, base.shape, dtype=np.uint8) for i in range(240)
    ]
    data = encode_video(frames, container="mp4", codec="libx264", fps=30)
    options = VideoOptions(num_frames=32)
    seed_like_video(data, 32)  # warm-up
    timings: dict[str, float] = {}
    for name, run in (
        ("seed-like", lambda: seed_like_video(data, 32)),
        ("ours", lambda: decode_video(data, options)),
    ):
        best = min(_timed(run) for _ in range(3))
        timings[name] = best
    print("video: 240 frames 640x480 h264 (8 s at 30 fps), 32 frames sampled, best of 3")
    for name, seconds in timings.items():
        print(
            f"  {name:>10}: {240 / seconds:7.0f} source frames/s  ({32 / seconds:6.1f} sampled frames/s, "
            f"{seconds * 1000:.0f} ms per video)"
        )
    print(f"  ratio ours/seed-like: {timings['seed-like'] / timings['ours']:.2f}x")


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------ hashing, cache


def bench_hash() -> None:
    print("hash throughput (best of 5):")
    for label, size in (
        ("200 KB image", 200 * 1024),
        ("4 MB image", 4 * 1024 * 1024),
        ("64 MB video", 64 << 20),
    ):
        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        repeat = max(1, (64 << 20) // size)
        b3 = min(_timed(partial(_hash_n, hash_media, data, repeat)) for _ in range(5))
        sha = min(_timed(partial(_hash_n, hashlib.sha256, data, repeat)) for _ in range(5))
        mb = size * repeat / 1e6
        print(
            f"  {label:>13}: BLAKE3 {mb / b3:6.0f} MB/s  SHA-256 {mb / sha:5.0f} MB/s  ratio {sha / b3:.1f}x"
        )


def _hash_n(fn: Callable[[bytes], object], data: bytes, times: int) -> None:
    for _ in range(times):
        fn(data)


async def bench_encoder_cache() -> None:
    """Hit vs miss latency: a miss with an instant computation (the cache's own overhead: a task and a
    shield) and with a CPU stand-in for a small vision encoder (one 256x1176 @ 1176x1024 projection)."""
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((256, 1176), dtype=np.float32)  # 256 patches of 14x14x3x2
    weights = rng.standard_normal((1176, 1024), dtype=np.float32)
    embedding = (patches @ weights).astype(np.float16)  # 512 KiB, an image's worth of embeddings

    async def instant() -> npt.NDArray[np.float16]:
        return embedding

    async def encoder() -> npt.NDArray[np.float16]:
        return (patches @ weights).astype(np.float16)

    n = 1_000  # 1000 x 512 KiB fits the 1 GiB capacity: the second pass hits every key
    print(f"encoder cache ({n} keys, 512 KiB values):")
    for label, compute in (("instant computation", instant), ("projection stand-in", encoder)):
        cache: EncoderCache[npt.NDArray[np.float16]] = EncoderCache(1 << 30)
        miss = await _per_call(cache, compute, n)
        hit = await _per_call(cache, compute, n)
        stats = cache.stats()
        assert stats.hits == n, stats
        print(
            f"  {label}: miss {miss * 1e6:8.1f} us   hit {hit * 1e6:5.2f} us   ratio {miss / hit:6.0f}x   "
            f"({stats.entries} entries, {stats.bytes / 2**20:.0f} MiB, hit rate {stats.hit_rate:.2f})"
        )


async def _per_call(
    cache: EncoderCache[npt.NDArray[np.float16]],
    compute: Callable[[], Awaitable[npt.NDArray[np.float16]]],
    n: int,
) -> float:
    started = time.perf_counter()
    for key in range(n):
        await cache.get_or_compute(key, compute)
    return (time.perf_counter() - started) / n


# ------------------------------------------------------------------------------------------ entry point


def main() -> None:
    corpus = make_corpus()
    trace = make_trace(sorted(corpus, key=lambda p: int(p.split("/")[-1].split(".")[0])))
    total_mb = sum(len(body) for body, _ in corpus.values()) / 1e6
    print(f"corpus: {len(corpus)} images, {total_mb:.1f} MB, served by uvicorn on loopback")
    with CorpusServer(corpus) as server:
        asyncio.run(bench_images(server.base, trace))
    bench_video()
    bench_hash()
    asyncio.run(bench_encoder_cache())


if __name__ == "__main__":
    main()
