"""One NATS connection per process, owned by an object with async ``start``/``close``.

Reconnection is nats-py's own: it retries for ever at a short interval and re-sends every subscription once
the server is back, so workers survive a NATS restart without restarting. Messages published while
disconnected wait in nats-py's pending buffer (``pending_size``); callers bound their waits with deadlines, so
a request whose reply never comes ends as ``RequestTimeout`` rather than a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import nats
from nats.aio.client import Client

from triptych_workers.transport.errors import TransportClosed, TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatsSettings:
    """How to reach NATS. Defaults favour quick recovery on a restart (a worker pool is useless while
    disconnected) over sparing the server reconnect attempts."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "triptych"
    connect_timeout_s: float = 2.0
    reconnect_wait_s: float = 0.25
    max_reconnect_attempts: int = -1  # for ever: the alternative is a worker that silently stops serving
    ping_interval_s: float = 5.0
    max_outstanding_pings: int = 2
    pending_bytes: int = 8 * 1024 * 1024


class NatsConnection:
    """The process's NATS client. ``client`` is only valid between ``start()`` and ``close()``."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self.reconnects = 0
        self.disconnects = 0

    @classmethod
    def for_servers(cls, servers: Sequence[str], *, name: str = "triptych") -> NatsConnection:
        return cls(NatsSettings(servers=tuple(servers), name=name))

    async def start(self) -> None:
        s = self.settings
        try:
            self._client = await nats.connect(
                servers=list(s.servers),
                name=s.name,
                connect_timeout=s.connect_timeout_s,
                reconnect_time_wait=s.reconnect_wait_s,
                max_reconnect_attempts=s.max_reconnect_attempts,
                ping_interval=s.ping_interval_s,
                max_outstanding_pings=s.max_outstanding_pings,
                pending_size=s.pending_bytes,
                allow_reconnect=True,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
            )
        except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
            raise TransportError(f"cannot connect to NATS at {', '.join(s.servers)}: {exc}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            await client.drain()

    @property
    def client(self) -> Client:
        if self._client is None or self._client.is_closed:
            raise TransportClosed("NATS connection is not started (or already closed)")
        return self._client

    @property
    def max_payload(self) -> int:
        """The server's limit on one message (1 MiB by default); inline payloads are chunked below it."""
        return int(self.client.max_payload)

    @property
    def is_connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def _on_disconnected(self) -> None:
        self.disconnects += 1
        log.warning("NATS disconnected; reconnecting every %.2f s", self.settings.reconnect_wait_s)

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        log.info("NATS reconnected to %s", self.client.connected_url)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS client error: %s", exc)
