"""NIXL vs inline transfer time through the real data plane (NATS control messages included), beside a plain
memcpy of the same size.

One round = producer ``publish`` (copy into a registered pooled region, or into the inline lease) + consumer
``fetch`` (metadata cached after the warm-up, READ or chunked NATS stream) + release. p50 over several rounds.
Sizes: 64/256 KiB (to locate the inline/NIXL crossover), 1, 8, 32 MiB (embeddings- and KV-sized).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
from prometheus_client import CollectorRegistry
from triptych_workers.transport import (
    DataPlaneSettings,
    NatsConnection,
    Subjects,
    TransferPlane,
    TransportMetrics,
)
from triptych_workers.transport.nixl_adapter import nixl_importable

from tests.bench.__main__ import machine

SIZES = [64 << 10, 256 << 10, 1 << 20, 8 << 20, 32 << 20]
ROUNDS = 7
NATS = "/usr/sbin/nats-server"


def _start_nats() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [NATS, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"nats://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)


async def _planes(url: str, settings: DataPlaneSettings) -> tuple[list[NatsConnection], list[TransferPlane]]:
    conns, planes = [], []
    subjects = Subjects("bench", "transfer")
    for name in ("prod", "cons"):
        conn = NatsConnection.for_servers([url], name=name)
        await conn.start()
        plane = TransferPlane.create(
            conn,
            subjects,
            f"{name}-{os.getpid()}-{time.monotonic_ns()}",
            TransportMetrics(CollectorRegistry()),
            settings,
        )
        await plane.start()
        conns.append(conn)
        planes.append(plane)
    return conns, planes


async def _round(producer: TransferPlane, consumer: TransferPlane, payload: np.ndarray) -> float:
    started = time.perf_counter()
    descriptor = await producer.publish(payload)
    with await consumer.fetch(descriptor, timeout_s=30) as received:
        assert received.data.nbytes == payload.nbytes
    return time.perf_counter() - started


async def _measure(url: str, settings: DataPlaneSettings) -> dict[int, float]:
    conns, (producer, consumer) = await _planes(url, settings)
    results = {}
    try:
        for size in SIZES:
            payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
            await _round(producer, consumer, payload)  # warm-up: metadata exchange, region registration
            times = [await _round(producer, consumer, payload) for _ in range(ROUNDS)]
            results[size] = statistics.median(times)
    finally:
        for plane in (producer, consumer):
            await plane.close()
        for conn in conns:
            await conn.close()
    return results


def _memcpy(size: int) -> float:
    src = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    print(f"machine: {machine()}")
    proc, url = _start_nats()
    try:
        inline = asyncio.run(_measure(url, DataPlaneSettings(nixl_enabled=False)))
        nixl = asyncio.run(_measure(url, DataPlaneSettings(nixl_min_bytes=0))) if nixl_importable() else {}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"p50 of {ROUNDS} rounds (publish + fetch + release, NATS control messages included)")
    print(
        f"{'size':>8} {'inline ms':>10} {'nixl ms':>9} {'memcpy ms':>10} {'nixl GB/s':>10} "
        f"{'memcpy GB/s':>12} {'nixl/memcpy':>12} {'faster':>7}"
    )
    for size in SIZES:
        mem = _memcpy(size)
        n = nixl.get(size, float("nan"))
        faster = "nixl" if n < inline[size] else "inline"
        print(
            f"{_label(size):>8} {inline[size] * 1e3:10.2f} {n * 1e3:9.2f} {mem * 1e3:10.3f} "
            f"{size / n / 1e9:10.2f} {size / mem / 1e9:12.2f} {mem / n:12.1%} {faster:>7}"
        )
    if nixl_importable():
        idle_report()


IDLE_SECONDS = 2.0
IDLE_PROBE = """
import importlib, sys, time
from triptych_workers.transport.nixl_adapter import NixlAgent
if sys.argv[1] == "ours":
    agent = NixlAgent("idle-ours")
else:
    api = importlib.import_module("nixl._api")
    agent = api.nixl_agent("idle-default", api.nixl_agent_config(enable_prog_thread=True, backends=["UCX"]))
t0, c0 = time.monotonic(), time.process_time()
time.sleep(float(sys.argv[2]))
print((time.process_time() - c0) / (time.monotonic() - t0))
"""


def _idle_cpu(kind: str) -> float:
    """CPU (cores) an idle process with one NIXL agent burns: its progress thread, nothing else running."""
    out = subprocess.run(
        [sys.executable, "-c", IDLE_PROBE, kind, str(IDLE_SECONDS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return float(out.strip().splitlines()[-1])


def idle_report() -> None:
    ours, default = _idle_cpu("ours"), _idle_cpu("default")
    print(
        f"idle NIXL agent, CPU over {IDLE_SECONDS:.0f} s: ours (progress thread delay) {ours:.1%} of a "
        f"core, NIXL's Python default (busy-spinning progress thread) {default:.1%} "
        f"-> {default / max(ours, 1e-6):.0f}x"
    )


def _label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


if __name__ == "__main__":
    main()
