"""The connector's httpx transport: every new connection goes to an address the guard has just checked.

httpx resolves names inside httpcore's network backend, after any check we could make on the URL, so a name
that answers "public" to the check and "127.0.0.1" to the connect (DNS rebinding) would slip through. Here the
network backend itself asks ``DestinationGuard.resolve`` and connects to the checked IP. The pool still keys
connections by the URL's host, so TLS verifies the certificate against the name and sends it as SNI, and the
``Host`` header is the name: nothing about the request changes except where the socket goes.

httpcore's exceptions are translated here straight into the media layer's typed errors, so the connector never
sees a transport-level exception type.
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import AsyncIterator, Iterable
from contextlib import contextmanager

import httpcore
import httpx

from triptych_workers.media.errors import MediaFetchError, MediaTimeout
from triptych_workers.media.netpolicy import DestinationGuard

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves through the guard and connects only to checked addresses."""

    def __init__(self, guard: DestinationGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._guard.resolve(host, port)  # raises MediaURLRefused before any socket exists
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # resolve() never returns an empty list
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise MediaFetchError("media is never fetched over a unix socket", param="url")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@contextmanager
def _typed_errors(url: httpx.URL) -> typing.Iterator[None]:
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise MediaTimeout(f"timed out fetching {url}: {type(exc).__name__}", param="url") from exc
    except (
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        httpcore.ProxyError,
    ) as exc:
        raise MediaFetchError(f"fetching {url} failed: {type(exc).__name__}: {exc}", param="url") from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes], url: httpx.URL) -> None:
        self._stream = stream
        self._url = url

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _typed_errors(self._url):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """A pooled HTTP/1.1 transport over ``GuardedNetworkBackend``; no proxies (they would connect for us)."""

    def __init__(
        self,
        guard: DestinationGuard,
        *,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedNetworkBackend(guard),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _typed_errors(request.url):
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request.url),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
