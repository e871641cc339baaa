"""The data plane: how embeddings (encode -> prefill) and KV caches (prefill -> decode) travel.

A producer ``publish``es a payload and gets a small ``TransferDescriptor`` that rides in the request-plane
message; the consumer ``fetch``es it and then releases it. Two implementations share that shape:

* ``NixlDataPlane`` -- the payload is copied into a registered region taken from a pool keyed by size class
  (regions are registered once and reused, sized from the payload, so nothing can overflow and the cost of
  registration is paid once per class, not per transfer). The descriptor names the producer's NIXL agent and
  the region's address/length/device. The consumer fetches the producer's agent metadata over NATS once
  per peer (cached), READs into a region of its own pool, and sends ``release`` over NATS; the producer
  returns the region to its pool. A lease bounds how long a region waits for a reader that never comes.
* ``InlineDataPlane`` -- small payloads ride inside the descriptor itself; larger ones stay with the producer
  under the same lease and are streamed to the consumer over NATS in chunks below the server's max_payload.

``TransferPlane`` chooses per transfer (inline below ``nixl_min_bytes``, NIXL above, inline for everything
when NIXL is disabled or unavailable) and records bytes and seconds per transport on the reader's side.

Why polling with a short spin: NIXL completes a READ on its own progress thread and exposes only a status
poll. Sleeping a fixed 10 ms between polls is what produces a ~10 ms floor per transfer; we spin on the event
loop (``sleep(0)``) for the first couple of milliseconds and only then back off to 1 ms sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

import nats.errors
import numpy as np
import numpy.typing as npt
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from triptych_workers.transport.connection import NatsConnection
from triptych_workers.transport.errors import (
    DataPlaneError,
    LeaseExpired,
    NixlUnavailable,
    TransferFailed,
    TransferTimeout,
    TransportError,
)
from triptych_workers.transport.health import RequestedTransport, assess, probe_ucx_transports, report
from triptych_workers.transport.metrics import TransportMetrics
from triptych_workers.transport.nixl_adapter import NixlAgent, Registration, XferHandle, XferState
from triptych_workers.transport.subjects import Subjects

log = logging.getLogger(__name__)

TransportName = Literal["nixl", "inline"]
Payload = bytes | bytearray | memoryview | npt.NDArray[Any]
U8 = npt.NDArray[np.uint8]

_H_KIND = "tt-kind"
_H_OFFSET = "tt-offset"
_H_ID = "tt-transfer"
_H_GENERATION = "tt-generation"
# Headroom under max_payload for the message's headers and protocol line.
_INLINE_CHUNK_HEADROOM = 8 * 1024
# A reader does not start a READ this close to the producer's lease expiry (the region could be reused
# mid-read).
_LEASE_SAFETY_S = 1.0


def as_u8(payload: Payload) -> U8:
    """A 1-D uint8 view of ``payload`` without copying (C-contiguous input required)."""
    if isinstance(payload, np.ndarray):
        if not payload.flags.c_contiguous:
            raise ValueError("payload array must be C-contiguous")
        return payload.reshape(-1).view(np.uint8)
    return np.frombuffer(memoryview(payload).cast("B"), dtype=np.uint8)


@dataclass(frozen=True)
class TransferDescriptor:
    """What travels in a request-plane message in place of the payload."""

    transfer_id: str
    transport: TransportName
    producer: str  # the producer's data-plane name (its NIXL agent name for NIXL)
    length: int
    meta: Mapping[str, str] = field(default_factory=dict)  # free-form (shape/dtype from the engine layer)
    address: int = 0
    device_id: int = 0
    expires_at: float = 0.0  # wall-clock epoch seconds; 0 = nothing held by the producer
    # NIXL: how many regions the producer had registered when it published. A peer's metadata carries its
    # registrations, so a reader whose cached copy is older must fetch it again before it can READ.
    generation: int = 0
    data: bytes | None = None  # small inline payloads ride here

    def to_json(self) -> bytes:
        raw: dict[str, Any] = {
            "id": self.transfer_id,
            "transport": self.transport,
            "producer": self.producer,
            "length": self.length,
            "meta": dict(self.meta),
            "address": self.address,
            "device_id": self.device_id,
            "expires_at": self.expires_at,
            "generation": self.generation,
        }
        if self.data is not None:
            raw["data"] = base64.b64encode(self.data).decode("ascii")
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> TransferDescriptor:
        try:
            raw: dict[str, Any] = json.loads(data)
            transport = raw["transport"]
            inline = raw.get("data")
            descriptor = cls(
                transfer_id=str(raw["id"]),
                transport=transport,
                producer=str(raw["producer"]),
                length=int(raw["length"]),
                meta={str(k): str(v) for k, v in raw.get("meta", {}).items()},
                address=int(raw.get("address", 0)),
                device_id=int(raw.get("device_id", 0)),
                expires_at=float(raw.get("expires_at", 0.0)),
                generation=int(raw.get("generation", 0)),
                data=base64.b64decode(inline) if inline is not None else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataPlaneError(f"malformed transfer descriptor: {exc}") from exc
        if transport not in ("nixl", "inline"):
            raise DataPlaneError(f"unknown transport {transport!r} in a transfer descriptor")
        return descriptor


class Received:
    """A fetched payload. ``data`` may live in the data plane's registered memory: call ``release()`` (or use
    ``with``) once it has been consumed or copied, so the region goes back to the pool."""

    def __init__(self, data: U8, transport: TransportName, release: Callable[[], None] | None = None) -> None:
        self.data = data
        self.transport = transport
        self._release = release

    def tobytes(self) -> bytes:
        return self.data.tobytes()

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Received:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class DataPlane(Protocol):
    """What both implementations offer."""

    name: str
    transport: TransportName

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(
        self, payload: Payload, meta: Mapping[str, str] | None = None
    ) -> TransferDescriptor: ...
    async def fetch(self, descriptor: TransferDescriptor, *, timeout_s: float) -> Received: ...


def size_class(length: int, minimum: int = 64 * 1024) -> int:
    """Round ``length`` up to a pool class: powers of two split in quarters (at most 25 % slack)."""
    if length <= minimum:
        return minimum
    top = 1 << (length - 1).bit_length()  # next power of two >= length
    step = top // 8  # quarters of the lower power of two
    return -(-length // step) * step


@dataclass
class _Region:
    buffer: U8
    registration: Registration


class RegionPool:
    """Registered memory regions by size class, reused; at most ``max_pooled_bytes`` kept idle."""

    def __init__(self, agent: NixlAgent, metrics: TransportMetrics, *, max_pooled_bytes: int) -> None:
        self._agent = agent
        self._metrics = metrics
        self.max_pooled_bytes = max_pooled_bytes
        self._free: dict[int, list[_Region]] = {}
        self.registered_bytes = 0
        self.pooled_bytes = 0
        self.generation = 0  # bumped by every registration (see TransferDescriptor.generation)

    def acquire(self, length: int) -> _Region:
        cls = size_class(length)
        free = self._free.get(cls)
        if free:
            self.pooled_bytes -= cls
            return free.pop()
        # Touch every page now (np.zeros maps them lazily): the first READ into fresh pages otherwise pays
        # for page faults, tens of ms for tens of MiB.
        buffer = np.empty(cls, dtype=np.uint8)
        buffer.fill(0)
        registration = self._agent.register(int(buffer.ctypes.data), cls)
        self.generation += 1
        self.registered_bytes += cls
        self._metrics.registered_bytes.labels("nixl").set(self.registered_bytes)
        return _Region(buffer, registration)

    def release(self, region: _Region) -> None:
        cls = region.registration.length
        if self.pooled_bytes + cls > self.max_pooled_bytes:
            self._deregister(region)
            return
        self._free.setdefault(cls, []).append(region)
        self.pooled_bytes += cls

    def close(self) -> None:
        for regions in self._free.values():
            for region in regions:
                self._deregister(region)
        self._free.clear()
        self.pooled_bytes = 0

    def _deregister(self, region: _Region) -> None:
        self._agent.deregister(region.registration)
        self.registered_bytes -= region.registration.length
        self._metrics.registered_bytes.labels("nixl").set(self.registered_bytes)


@dataclass
class _Lease:
    length: int
    expires: float  # monotonic
    on_release: Callable[[], None]
    data: bytes | None = None  # inline plane: the payload itself


class _Leases:
    """Payloads held for their reader, with an expiry reaper (a dead reader must not leak memory)."""

    def __init__(self, transport: TransportName, metrics: TransportMetrics, timeout_s: float) -> None:
        self.transport: TransportName = transport
        self._metrics = metrics
        self.timeout_s = timeout_s
        self._leases: dict[str, _Lease] = {}
        self.held_bytes = 0

    def add(self, transfer_id: str, lease: _Lease) -> None:
        self._leases[transfer_id] = lease
        self.held_bytes += lease.length
        self._metrics.leased_bytes.labels(self.transport).set(self.held_bytes)

    def get(self, transfer_id: str) -> _Lease | None:
        return self._leases.get(transfer_id)

    def release(self, transfer_id: str) -> bool:
        lease = self._leases.pop(transfer_id, None)
        if lease is None:
            return False
        self.held_bytes -= lease.length
        self._metrics.leased_bytes.labels(self.transport).set(self.held_bytes)
        lease.on_release()
        return True

    def __len__(self) -> int:
        return len(self._leases)

    async def reap_forever(self) -> None:
        interval = min(1.0, max(0.05, self.timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.reap()

    def reap(self) -> None:
        now = time.monotonic()
        for transfer_id in [t for t, lease in self._leases.items() if lease.expires <= now]:
            self.release(transfer_id)
            self._metrics.leases_expired.labels(self.transport).inc()
            log.warning(
                "%s transfer %s expired unread after %.1f s", self.transport, transfer_id, self.timeout_s
            )

    def release_all(self) -> None:
        for transfer_id in list(self._leases):
            self.release(transfer_id)


class _LeaseHolder:
    """What both data planes share as producers: payloads held under leases for their readers, let go when
    a reader sends ``release`` (after reading, or instead of reading) or when the reaper finds the lease
    expired."""

    transport: TransportName

    def __init__(
        self,
        conn: NatsConnection,
        subjects: Subjects,
        name: str,
        metrics: TransportMetrics,
        lease_timeout_s: float,
    ) -> None:
        self._conn = conn
        self._subjects = subjects
        self.name = name
        self._metrics = metrics
        self.leases = _Leases(self.transport, metrics, lease_timeout_s)
        self._subs: list[Subscription] = []
        self._reaper: asyncio.Task[None] | None = None

    async def _serve(self, handlers: Mapping[str, Callable[[Msg], Awaitable[None]]]) -> None:
        """Answer ``release`` and the plane's own verbs on this producer's subjects; start the reaper."""
        nc = self._conn.client
        self._subs = [
            await nc.subscribe(self._subjects.data(self.name, verb), cb=callback)
            for verb, callback in {**handlers, "release": self._on_release}.items()
        ]
        self._reaper = asyncio.create_task(
            self.leases.reap_forever(), name=f"{self.name}-{self.transport}-reaper"
        )

    async def _stop_serving(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._subs, self._reaper = [], None
        self.leases.release_all()

    async def _on_release(self, msg: Msg) -> None:
        self.leases.release(msg.data.decode("ascii", "replace"))

    async def release_remote(self, descriptor: TransferDescriptor) -> None:
        """As a reader: tell the payload's producer it may let go (after reading it, or instead of reading
        it). Best effort: if the message is lost, the producer's lease expires and frees the memory anyway."""
        with contextlib.suppress(TransportError, nats.errors.Error):
            await self._conn.client.publish(
                self._subjects.data(descriptor.producer, "release"), descriptor.transfer_id.encode()
            )


class InlineDataPlane(_LeaseHolder):
    """Payloads over NATS: inside the descriptor when small, else streamed in chunks when fetched."""

    transport: TransportName = "inline"

    def __init__(
        self,
        conn: NatsConnection,
        subjects: Subjects,
        name: str,
        metrics: TransportMetrics,
        *,
        embed_limit: int = 64 * 1024,
        lease_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(conn, subjects, name, metrics, lease_timeout_s)
        self.embed_limit = embed_limit

    async def start(self) -> None:
        await self._serve({"fetch": self._on_fetch})

    async def close(self) -> None:
        await self._stop_serving()

    async def publish(self, payload: Payload, meta: Mapping[str, str] | None = None) -> TransferDescriptor:
        data = as_u8(payload).tobytes()  # a copy: the caller may reuse its buffer once this returns
        transfer_id = uuid.uuid4().hex
        if len(data) <= self.embed_limit:
            return TransferDescriptor(
                transfer_id, "inline", self.name, len(data), dict(meta or {}), data=data
            )
        self.leases.add(
            transfer_id,
            _Lease(len(data), time.monotonic() + self.leases.timeout_s, on_release=lambda: None, data=data),
        )
        return TransferDescriptor(
            transfer_id,
            "inline",
            self.name,
            len(data),
            dict(meta or {}),
            expires_at=time.time() + self.leases.timeout_s,
        )

    async def fetch(self, descriptor: TransferDescriptor, *, timeout_s: float) -> Received:
        if descriptor.data is not None:
            return Received(np.frombuffer(descriptor.data, dtype=np.uint8), "inline")
        nc = self._conn.client
        deadline = time.monotonic() + timeout_s
        out = np.empty(descriptor.length, dtype=np.uint8)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(
                self._subjects.data(descriptor.producer, "fetch"),
                descriptor.transfer_id.encode(),
                reply=inbox,
            )
            received = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TransferTimeout(f"inline transfer {descriptor.transfer_id} did not finish in time")
                try:
                    msg = await sub.next_msg(timeout=remaining)
                except nats.errors.TimeoutError:
                    continue
                headers = msg.headers or {}
                if headers.get("Status") == "503":
                    raise TransferFailed(f"producer {descriptor.producer} is not reachable")
                kind = headers.get(_H_KIND)
                if kind == "chunk":
                    offset = int(headers.get(_H_OFFSET, "0"))
                    out[offset : offset + len(msg.data)] = np.frombuffer(msg.data, dtype=np.uint8)
                    received += len(msg.data)
                elif kind == "end":
                    break
                elif kind == "expired":
                    raise LeaseExpired(f"producer no longer holds transfer {descriptor.transfer_id}")
            if received != descriptor.length:
                raise TransferFailed(f"inline transfer got {received} of {descriptor.length} bytes")
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        await self.release_remote(descriptor)
        return Received(out, "inline")

    async def _on_fetch(self, msg: Msg) -> None:
        transfer_id = msg.data.decode("ascii", "replace")
        lease = self.leases.get(transfer_id)
        nc = self._conn.client
        if lease is None or lease.data is None:
            await nc.publish(msg.reply, b"", headers={_H_KIND: "expired", _H_ID: transfer_id})
            return
        chunk = max(1024, self._conn.max_payload - _INLINE_CHUNK_HEADROOM)
        view = memoryview(lease.data)
        for offset in range(0, len(view), chunk):
            headers = {_H_KIND: "chunk", _H_OFFSET: str(offset), _H_ID: transfer_id}
            await nc.publish(msg.reply, bytes(view[offset : offset + chunk]), headers=headers)
        await nc.publish(msg.reply, b"", headers={_H_KIND: "end", _H_ID: transfer_id})


class NixlDataPlane(_LeaseHolder):
    """Payloads over NIXL: registered pooled regions, one-sided READ by the consumer, release over NATS."""

    transport: TransportName = "nixl"

    def __init__(
        self,
        conn: NatsConnection,
        subjects: Subjects,
        name: str,
        metrics: TransportMetrics,
        *,
        lease_timeout_s: float = 30.0,
        max_pooled_bytes: int = 1 << 30,
        metadata_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(conn, subjects, name, metrics, lease_timeout_s)
        self.max_pooled_bytes = max_pooled_bytes
        self.metadata_timeout_s = metadata_timeout_s
        self._agent: NixlAgent | None = None
        self._pool: RegionPool | None = None
        # producer name -> (loaded NIXL agent name, generation of the metadata loaded)
        self._peers: dict[str, tuple[str, int]] = {}
        self._peer_locks: dict[str, asyncio.Lock] = {}
        self.metadata_fetches = 0

    @property
    def registered_bytes(self) -> int:
        return self._pool.registered_bytes if self._pool else 0

    async def start(self) -> None:
        """Create the agent (raises ``NixlUnavailable``) and answer metadata/release requests."""
        self._agent = NixlAgent(self.name)
        self._pool = RegionPool(self._agent, self._metrics, max_pooled_bytes=self.max_pooled_bytes)
        await self._serve({"meta": self._on_meta})

    async def close(self) -> None:
        await self._stop_serving()
        if self._pool is not None:
            self._pool.close()
        if self._agent is not None:
            for peer, _ in self._peers.values():
                with contextlib.suppress(Exception):
                    self._agent.remove_remote(peer)
        self._peers.clear()
        self._agent, self._pool = None, None

    def _parts(self) -> tuple[NixlAgent, RegionPool]:
        if self._agent is None or self._pool is None:
            raise NixlUnavailable("the NIXL data plane is not started")
        return self._agent, self._pool

    async def publish(self, payload: Payload, meta: Mapping[str, str] | None = None) -> TransferDescriptor:
        _, pool = self._parts()
        data = as_u8(payload)
        region = pool.acquire(len(data))
        region.buffer[: len(data)] = data
        transfer_id = uuid.uuid4().hex
        self.leases.add(
            transfer_id,
            _Lease(
                len(data), time.monotonic() + self.leases.timeout_s, on_release=lambda: pool.release(region)
            ),
        )
        return TransferDescriptor(
            transfer_id,
            "nixl",
            self.name,
            len(data),
            dict(meta or {}),
            address=region.registration.address,
            device_id=0,
            expires_at=time.time() + self.leases.timeout_s,
            generation=pool.generation,
        )

    async def fetch(self, descriptor: TransferDescriptor, *, timeout_s: float) -> Received:
        agent, pool = self._parts()
        deadline = time.monotonic() + timeout_s
        if descriptor.expires_at and descriptor.expires_at - time.time() < _LEASE_SAFETY_S:
            raise LeaseExpired(f"transfer {descriptor.transfer_id}'s lease runs out before it could be read")
        peer = await self._peer(descriptor.producer, descriptor.generation)
        region = pool.acquire(descriptor.length)
        try:
            xfer, state = agent.start_read(
                local_address=region.registration.address,
                remote_address=descriptor.address,
                length=descriptor.length,
                remote_device=descriptor.device_id,
                remote_agent=peer,
            )
            try:
                state = await _wait_done(agent, xfer, state, deadline, descriptor.transfer_id)
            finally:
                agent.release(xfer)
        except BaseException:
            pool.release(region)
            raise
        await self.release_remote(descriptor)
        return Received(region.buffer[: descriptor.length], "nixl", release=lambda: pool.release(region))

    async def _peer(self, producer: str, generation: int) -> str:
        """The producer's NIXL agent, its metadata fetched over NATS once, and again only when the producer
        has registered regions since (its descriptor's generation is newer than what was loaded)."""
        known = self._peers.get(producer)
        if known is not None and known[1] >= generation:
            return known[0]
        lock = self._peer_locks.setdefault(producer, asyncio.Lock())
        async with lock:
            known = self._peers.get(producer)
            if known is not None and known[1] >= generation:
                return known[0]
            agent, pool = self._parts()
            if producer == self.name:
                metadata, loaded = agent.metadata(), pool.generation
            else:
                try:
                    msg = await self._conn.client.request(
                        self._subjects.data(producer, "meta"), b"", timeout=self.metadata_timeout_s
                    )
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                    raise TransferFailed(f"cannot get NIXL metadata from {producer}: {exc!r}") from exc
                metadata, loaded = msg.data, int((msg.headers or {}).get(_H_GENERATION, "0"))
            if known is not None:
                agent.remove_remote(known[0])
            self.metadata_fetches += 1
            self._peers[producer] = (agent.add_remote(metadata), loaded)
            return self._peers[producer][0]

    async def _on_meta(self, msg: Msg) -> None:
        agent, pool = self._parts()
        headers = {_H_GENERATION: str(pool.generation)}
        await self._conn.client.publish(msg.reply, agent.metadata(), headers=headers)


async def _wait_done(
    agent: NixlAgent, xfer: XferHandle, state: XferState, deadline: float, transfer_id: str
) -> XferState:
    spin_until = time.monotonic() + 0.002
    while state == "PROC":
        now = time.monotonic()
        if now > deadline:
            raise TransferTimeout(f"NIXL transfer {transfer_id} did not finish in time")
        # Spin briefly on the loop (completions usually land within ~1 ms), then back off to 1 ms sleeps.
        await asyncio.sleep(0 if now < spin_until else 0.001)
        state = agent.state(xfer)
    if state != "DONE":
        raise TransferFailed(f"NIXL reported an error for transfer {transfer_id}")
    return state


@dataclass(frozen=True)
class DataPlaneSettings:
    """``nixl_min_bytes``: the inline/NIXL crossover (see tests/bench/bench_transfer.py)."""

    nixl_enabled: bool = True
    nixl_min_bytes: int = 256 * 1024
    embed_limit: int = 64 * 1024
    lease_timeout_s: float = 30.0
    max_pooled_bytes: int = 1 << 30
    requested_transport: RequestedTransport = "auto"
    probe_ucx: bool = True  # ask UCX which transports it selected (only matters when rdma is requested)


class TransferPlane:
    """The data plane a role uses: picks NIXL or inline per payload, fetches either, counts both."""

    def __init__(
        self,
        inline: InlineDataPlane,
        nixl: NixlDataPlane | None,
        metrics: TransportMetrics,
        settings: DataPlaneSettings,
    ) -> None:
        self.inline = inline
        self.nixl = nixl
        self._metrics = metrics
        self.settings = settings

    @classmethod
    def create(
        cls,
        conn: NatsConnection,
        subjects: Subjects,
        name: str,
        metrics: TransportMetrics,
        settings: DataPlaneSettings | None = None,
    ) -> TransferPlane:
        settings = settings or DataPlaneSettings()
        inline = InlineDataPlane(
            conn,
            subjects,
            name,
            metrics,
            embed_limit=settings.embed_limit,
            lease_timeout_s=settings.lease_timeout_s,
        )
        nixl = (
            NixlDataPlane(
                conn,
                subjects,
                name,
                metrics,
                lease_timeout_s=settings.lease_timeout_s,
                max_pooled_bytes=settings.max_pooled_bytes,
            )
            if settings.nixl_enabled
            else None
        )
        return cls(inline, nixl, metrics, settings)

    @property
    def large_transport(self) -> TransportName:
        return "nixl" if self.nixl is not None else "inline"

    async def start(self) -> None:
        await self.inline.start()
        if self.nixl is not None:
            try:
                await self.nixl.start()
            except NixlUnavailable as exc:
                log.warning("NIXL unavailable, large payloads travel inline over NATS: %s", exc)
                await self.nixl.close()
                self.nixl = None
        else:
            log.info("NIXL disabled by configuration; payloads travel inline over NATS")
        self._metrics.data_plane.labels("inline").set(1)
        self._metrics.data_plane.labels("nixl").set(1 if self.nixl is not None else 0)
        log.info("data plane %s: large payloads via %s", self.inline.name, self.large_transport)
        await self._check_health()

    async def _check_health(self) -> None:
        requested = self.settings.requested_transport
        transports = None
        if requested == "rdma" and self.nixl is not None and self.settings.probe_ucx:
            transports = await probe_ucx_transports()
        health = assess(requested, os.environ, transports)
        if requested == "rdma" and self.nixl is None:
            health = type(health)(requested, "nats", True, "nixl_unavailable", transports)
        report(health, self._metrics)

    async def close(self) -> None:
        if self.nixl is not None:
            await self.nixl.close()
        await self.inline.close()

    async def publish(self, payload: Payload, meta: Mapping[str, str] | None = None) -> TransferDescriptor:
        data = as_u8(payload)
        if self.nixl is not None and len(data) >= self.settings.nixl_min_bytes:
            return await self.nixl.publish(data, meta)
        return await self.inline.publish(data, meta)

    async def discard(self, descriptor: TransferDescriptor) -> None:
        """Tell the producer to let go of a payload this process will not read (an encoder-cache hit), so its
        memory is free at once rather than when the lease runs out. Best effort, like every release."""
        if descriptor.data is not None or not descriptor.expires_at:
            return  # the payload rode in the descriptor: the producer holds nothing
        await self.inline.release_remote(descriptor)
        self._metrics.discarded.labels(descriptor.transport).inc()

    async def fetch(self, descriptor: TransferDescriptor, *, timeout_s: float) -> Received:
        started = time.perf_counter()
        if descriptor.transport == "nixl":
            if self.nixl is None:
                raise NixlUnavailable("a NIXL descriptor arrived but this process has no NIXL data plane")
            received = await self.nixl.fetch(descriptor, timeout_s=timeout_s)
        else:
            received = await self.inline.fetch(descriptor, timeout_s=timeout_s)
        self._metrics.transfer_seconds.labels(descriptor.transport).observe(time.perf_counter() - started)
        self._metrics.transfer_bytes.labels(descriptor.transport).inc(descriptor.length)
        return received
