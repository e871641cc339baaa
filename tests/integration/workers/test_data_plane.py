"""The data plane against a real nats-server and real NIXL (UCX, DRAM to DRAM on loopback): payloads of many
sizes arrive byte-identical, registered regions are reused and leases released after the read, a payload
nobody reads is freed when its lease runs out, inline fallback when NIXL is disabled, and a requested RDMA
transport that ends up on TCP is reported."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from triptych_workers.transport import (
    DataPlaneSettings,
    LeaseExpired,
    NatsConnection,
    Subjects,
    TransferDescriptor,
    TransferPlane,
    TransportMetrics,
    assess,
)
from triptych_workers.transport.health import parse_ucx_transports
from triptych_workers.transport.nixl_adapter import nixl_importable

from tests.integration.workers.conftest import NatsServerProcess, wait_until

SUBJECTS = Subjects("ns1", "demo")
needs_nixl = pytest.mark.skipif(not nixl_importable(), reason="nixl is not installed")


class Pair:
    """A producer and a consumer plane, each with its own NATS connection and metrics, as two workers."""

    def __init__(self, url: str, producer: DataPlaneSettings, consumer: DataPlaneSettings) -> None:
        self.url = url
        self.settings = (producer, consumer)
        self.conns: list[NatsConnection] = []
        self.metrics = (TransportMetrics(CollectorRegistry()), TransportMetrics(CollectorRegistry()))
        self.producer: TransferPlane
        self.consumer: TransferPlane

    async def start(self) -> None:
        planes = []
        for name, settings, metrics in zip(("prod", "cons"), self.settings, self.metrics, strict=True):
            conn = NatsConnection.for_servers([self.url], name=name)
            await conn.start()
            self.conns.append(conn)
            plane = TransferPlane.create(conn, SUBJECTS, f"{name}-{time.monotonic_ns()}", metrics, settings)
            await plane.start()
            planes.append(plane)
        self.producer, self.consumer = planes

    async def close(self) -> None:
        for plane in (self.producer, self.consumer):
            await plane.close()
        for conn in self.conns:
            await conn.close()

    def sample(self, which: int, name: str, **labels: str) -> float | None:
        return self.metrics[which].registry.get_sample_value(name, labels)


@pytest.fixture
async def make_pair(nats_server: NatsServerProcess) -> AsyncIterator[Callable[..., object]]:
    pairs: list[Pair] = []

    async def make(producer: DataPlaneSettings, consumer: DataPlaneSettings | None = None) -> Pair:
        pair = Pair(nats_server.url, producer, consumer or producer)
        await pair.start()
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        await pair.close()


@needs_nixl
@pytest.mark.parametrize(
    "size", [1024, 1 << 20, 8 << 20, (33 << 20) + 7], ids=["1KiB", "1MiB", "8MiB", "33MiB+7"]
)
async def test_nixl_transfer_is_byte_identical_and_released(
    make_pair: Callable[..., object], size: int
) -> None:
    pair = await make_pair(DataPlaneSettings(nixl_min_bytes=0))  # type: ignore[misc]
    assert isinstance(pair, Pair)
    rng = np.random.default_rng(size)
    for round_ in range(2):
        payload = rng.integers(0, 256, size, dtype=np.uint8)
        descriptor = await pair.producer.publish(payload, {"dtype": "uint8"})
        assert descriptor.transport == "nixl"
        wire = TransferDescriptor.from_json(descriptor.to_json())  # as it travels in a NATS message
        assert pair.sample(0, "triptych_transfer_leased_bytes", transport="nixl") == size
        with await pair.consumer.fetch(wire, timeout_s=30) as received:
            assert received.transport == "nixl"
            assert received.data.nbytes == size
            assert np.array_equal(received.data, payload)
        # The reader's release reached the producer: nothing leased, the region back in the pool.
        assert await wait_until(
            lambda: pair.sample(0, "triptych_transfer_leased_bytes", transport="nixl") == 0
        )
        registered = pair.sample(0, "triptych_transfer_registered_bytes", transport="nixl")
        assert registered is not None
        assert size <= registered <= max(64 * 1024, size * 1.25)
        if round_ == 0:
            first_registered = registered
        else:  # the second payload of the same size reused the region: no new registration
            assert registered == first_registered
    assert pair.consumer.nixl is not None
    assert pair.consumer.nixl.metadata_fetches == 1  # metadata exchanged once per peer, then cached
    assert pair.sample(1, "triptych_transfer_bytes_total", transport="nixl") == 2 * size
    await pair.producer.close()
    assert pair.sample(0, "triptych_transfer_registered_bytes", transport="nixl") == 0


@needs_nixl
async def test_lease_expires_when_nobody_reads(make_pair: Callable[..., object]) -> None:
    pair = await make_pair(DataPlaneSettings(nixl_min_bytes=0, lease_timeout_s=0.4))  # type: ignore[misc]
    assert isinstance(pair, Pair)
    descriptor = await pair.producer.publish(np.ones(1 << 20, dtype=np.uint8))
    assert pair.sample(0, "triptych_transfer_leased_bytes", transport="nixl") == 1 << 20
    assert await wait_until(lambda: pair.sample(0, "triptych_transfer_leased_bytes", transport="nixl") == 0)
    assert pair.sample(0, "triptych_transfer_leases_expired_total", transport="nixl") == 1
    with pytest.raises(LeaseExpired):
        await pair.consumer.fetch(descriptor, timeout_s=5)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(DataPlaneSettings(nixl_min_bytes=0), id="nixl", marks=needs_nixl),
        pytest.param(DataPlaneSettings(nixl_enabled=False), id="inline"),
    ],
)
async def test_discard_frees_the_producer_at_once_without_a_read(
    make_pair: Callable[..., object], settings: DataPlaneSettings
) -> None:
    """A reader that will not read (an encoder-cache hit) says so: the producer lets go now, not when the 30 s
    lease runs out, and nothing is counted as moved or expired."""
    pair = await make_pair(settings)  # type: ignore[misc]
    assert isinstance(pair, Pair)
    size = 1 << 20
    descriptor = await pair.producer.publish(np.ones(size, dtype=np.uint8))
    transport = descriptor.transport
    assert pair.sample(0, "triptych_transfer_leased_bytes", transport=transport) == size
    await pair.consumer.discard(TransferDescriptor.from_json(descriptor.to_json()))
    assert await wait_until(
        lambda: pair.sample(0, "triptych_transfer_leased_bytes", transport=transport) == 0, timeout_s=5
    )
    assert pair.sample(1, "triptych_transfer_discarded_total", transport=transport) == 1
    assert not pair.sample(1, "triptych_transfer_bytes_total", transport=transport)
    assert not pair.sample(0, "triptych_transfer_leases_expired_total", transport=transport)
    if transport == "inline":  # gone for good: a late reader is told so (a one-sided NIXL READ cannot be)
        with pytest.raises(LeaseExpired):
            await pair.consumer.fetch(descriptor, timeout_s=5)


async def test_discarding_an_embedded_payload_sends_nothing(make_pair: Callable[..., object]) -> None:
    pair = await make_pair(DataPlaneSettings(nixl_enabled=False))  # type: ignore[misc]
    assert isinstance(pair, Pair)
    descriptor = await pair.producer.publish(np.ones(1000, dtype=np.uint8))
    assert descriptor.data is not None  # rode in the descriptor: the producer holds nothing
    await pair.consumer.discard(descriptor)
    assert not pair.sample(1, "triptych_transfer_discarded_total", transport="inline")


async def test_inline_when_nixl_disabled(make_pair: Callable[..., object]) -> None:
    pair = await make_pair(DataPlaneSettings(nixl_enabled=False))  # type: ignore[misc]
    assert isinstance(pair, Pair)
    assert pair.sample(0, "triptych_data_plane_info", transport="nixl") == 0
    max_payload = pair.conns[0].max_payload
    for size in (1000, 200 * 1024, 3 * max_payload + 7):  # embedded, one chunk, several chunks
        payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        descriptor = await pair.producer.publish(payload)
        assert descriptor.transport == "inline"
        assert (descriptor.data is not None) == (size <= 64 * 1024)
        wire = TransferDescriptor.from_json(descriptor.to_json())
        with await pair.consumer.fetch(wire, timeout_s=10) as received:
            assert np.array_equal(received.data, payload)
    assert await wait_until(lambda: pair.sample(0, "triptych_transfer_leased_bytes", transport="inline") == 0)
    total = 1000 + 200 * 1024 + 3 * max_payload + 7
    assert pair.sample(1, "triptych_transfer_bytes_total", transport="inline") == total
    assert pair.sample(1, "triptych_transfer_seconds_count", transport="inline") == 3


@needs_nixl
async def test_small_payloads_go_inline_large_ones_nixl(make_pair: Callable[..., object]) -> None:
    pair = await make_pair(DataPlaneSettings(nixl_min_bytes=256 * 1024))  # type: ignore[misc]
    assert isinstance(pair, Pair)
    small = await pair.producer.publish(b"x" * 1024)
    large = await pair.producer.publish(b"y" * (1 << 20))
    assert (small.transport, large.transport) == ("inline", "nixl")
    for descriptor in (small, large):
        with await pair.consumer.fetch(descriptor, timeout_s=10) as received:
            assert received.tobytes()[:1] in (b"x", b"y")
    # A size class the producer registers after the consumer cached its metadata: fetched again, once.
    assert pair.consumer.nixl is not None
    fetches = pair.consumer.nixl.metadata_fetches
    bigger = await pair.producer.publish(b"z" * (8 << 20))
    with await pair.consumer.fetch(bigger, timeout_s=10) as received:
        assert received.tobytes() == b"z" * (8 << 20)
    assert pair.consumer.nixl.metadata_fetches == fetches + 1


def test_degraded_transport_decisions() -> None:
    line = "[1] [vm:1:0] ucp_worker.c:1997 UCX  INFO    A self cfg#0 rma_am(tcp/lo)  am(tcp/lo cma/memory)"
    assert parse_ucx_transports(line) == frozenset({"tcp", "cma"})
    pinned = assess("rdma", {"UCX_TLS": "tcp"}, None)
    assert (pinned.degraded, pinned.effective, pinned.reason) == (True, "tcp", "ucx_tls_excludes_rdma")
    assert assess("rdma", {"UCX_TLS": "^rc,dc,ud"}, None).degraded
    assert not assess(
        "rdma", {"UCX_TLS": "rc_x,rc,dc_x,dc,cuda_copy"}, frozenset({"rc_mlx5", "cuda_copy"})
    ).degraded
    selected_tcp = assess("rdma", {}, frozenset({"tcp", "cma"}))
    assert (selected_tcp.degraded, selected_tcp.reason) == (True, "ucx_selected_no_rdma")
    assert not assess("tcp", {"UCX_TLS": "tcp"}, frozenset({"tcp"})).degraded
    assert not assess("auto", {}, frozenset({"tcp"})).degraded


@needs_nixl
async def test_rdma_requested_but_ucx_uses_tcp_is_reported(
    make_pair: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="triptych_workers.transport.health")
    # This machine has no RDMA device: UCX itself (asked in a probe) selects tcp/cma.
    pair = await make_pair(DataPlaneSettings(requested_transport="rdma"))  # type: ignore[misc]
    assert isinstance(pair, Pair)
    value = pair.sample(
        0, "triptych_transport_degraded", requested="rdma", effective="tcp", reason="ucx_selected_no_rdma"
    )
    assert value == 1
    assert any("transport degraded" in r.getMessage() for r in caplog.records)
