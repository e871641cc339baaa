"""The media connector: the one place that turns a media URL into bytes, for every modality.

Sources are ``http(s)`` (through ``GuardedTransport``: every hop checked, connections pinned to checked
addresses, redirects followed here by hand), ``data:`` (base64) and ``file:`` (inside a jail). Decoding is
someone else's job: the connector returns bytes plus what the source declared about them.

One connector per process, created in the app's lifespan (``async with MediaConnector(policy) as c``): it
owns the pooled HTTP client, the table of in-flight fetches (concurrent callers for one URL share one fetch;
a caller that gives up does not cancel it for the others) and a byte- and entry-bounded LRU of fetched bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Literal, Self

import httpx
from pydantic import BaseModel, ConfigDict, Field
from triptych_contract import BYTES_PER_MB, Modality

from triptych_workers.media.connector_local import media_type_fits, parse_data_url, read_jailed_file
from triptych_workers.media.connector_transport import GuardedTransport
from triptych_workers.media.errors import (
    InvalidMediaURL,
    MediaError,
    MediaFetchError,
    MediaTimeout,
    MediaTooLarge,
    MediaURLRefused,
    UnsupportedMediaFormat,
)
from triptych_workers.media.netpolicy import DestinationGuard, Resolver, system_resolver

logger = logging.getLogger(__name__)

Source = Literal["http", "data", "file"]

MB = BYTES_PER_MB  # maxFileSizeMB and the per-modality caps are SI megabytes (the CRD says so)
MIB = 1024 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_MAX_URL_CHARS_WITHOUT_DATA = 8192

PositiveFloat = Annotated[float, Field(gt=0)]


class ModalityLimits(BaseModel):
    """Per-modality tightening of the deployment-wide limits (defaults: vLLM's timeouts, 25 MB audio)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: PositiveFloat
    max_bytes: Annotated[int, Field(gt=0)] | None = None


def _default_modalities() -> dict[Modality, ModalityLimits]:
    return {
        "image": ModalityLimits(timeout_seconds=5),
        "video": ModalityLimits(timeout_seconds=30),
        "audio": ModalityLimits(timeout_seconds=10, max_bytes=25 * MB),
    }


class FetchPolicy(BaseModel):
    """How media may be fetched. Built from the CRD's ``spec.media`` block (camelCase keys validate as-is:
    ``FetchPolicy.model_validate(spec["media"])``) plus settings the CRD does not expose.

    The deployment-wide values are ceilings; the per-modality ones tighten them: a fetch's timeout is
    ``min(fetchTimeoutSeconds, modality timeout)`` and its byte cap ``min(maxFileSizeMB, modality cap)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    max_file_size_mb: Annotated[float, Field(gt=0, alias="maxFileSizeMB")] = 50
    fetch_timeout_seconds: Annotated[float, Field(gt=0, alias="fetchTimeoutSeconds")] = 30
    allowed_domains: Annotated[tuple[str, ...], Field(alias="allowedDomains")] = ()
    """Empty: any public host. Entries match exactly; ``*.example.com`` matches subdomains."""
    allowed_local_media_path: Annotated[str, Field(alias="allowedLocalMediaPath")] = ""
    """Empty: every ``file:`` URL is refused."""

    modalities: dict[Modality, ModalityLimits] = Field(default_factory=_default_modalities)
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 3
    allow_private_networks: Annotated[bool, Field(alias="allowPrivateNetworks")] = False
    """Opens loopback, private, link-local and CGNAT destinations (an in-cluster media store, tests). Metadata
    endpoints, multicast, unspecified and reserved addresses stay refused."""
    connect_timeout_seconds: PositiveFloat = 5
    max_connections: Annotated[int, Field(gt=0)] = 100
    max_keepalive_connections: Annotated[int, Field(ge=0)] = 20
    keepalive_expiry_seconds: PositiveFloat = 60
    max_concurrent_fetches: Annotated[int, Field(gt=0)] = 50
    cache_max_bytes: Annotated[int, Field(ge=0)] = 256 * MIB
    cache_max_entries: Annotated[int, Field(ge=0)] = 512
    max_data_url_chars: Annotated[int, Field(gt=0)] | None = None
    """Default: what a base64 payload of the modality's byte cap needs."""

    def timeout_for(self, modality: Modality) -> float:
        limits = self.modalities.get(modality)
        if limits is None:
            return self.fetch_timeout_seconds
        return min(self.fetch_timeout_seconds, limits.timeout_seconds)

    def max_bytes_for(self, modality: Modality) -> int:
        cap = int(self.max_file_size_mb * MB)
        limits = self.modalities.get(modality)
        if limits is not None and limits.max_bytes is not None:
            cap = min(cap, limits.max_bytes)
        return cap


@dataclass(frozen=True, slots=True)
class FetchedMedia:
    """Bytes of one media item and what the source said about them (``content_type`` is advisory)."""

    url: str
    data: bytes
    content_type: str
    source: Source


@dataclass(frozen=True, slots=True)
class ConnectorStats:
    fetches: int
    """Calls to ``fetch``."""
    network_fetches: int
    """HTTP fetches actually started (after cache and in-flight sharing)."""
    cache_hits: int
    coalesced: int
    """Callers that joined a fetch already in flight."""
    in_flight: int
    refusals: int
    """Fetches that ended in a ``MediaError``."""
    cache_entries: int
    cache_bytes: int
    cache_capacity_bytes: int
    cache_evictions: int


class _BytesLRU:
    """LRU of immutable byte strings, bounded in total bytes and in entries. Single event loop: no locks."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[tuple[str, str], FetchedMedia] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str]) -> FetchedMedia | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple[str, str], item: FetchedMedia) -> None:
        size = len(item.data)
        if size > self.max_bytes or self.max_entries == 0:
            return  # larger than the whole cache: caching it would only evict everything else
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old.data)
        self._items[key] = item
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._items) > self.max_entries:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= len(evicted.data)
            self.evictions += 1

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


class _InFlight:
    """One shared fetch and how many callers still wait for it."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[FetchedMedia]) -> None:
        self.task = task
        self.waiters = 0


_LOCATIONS = "triptych.redirect_locations"


async def _take_redirect_location(response: httpx.Response) -> None:
    """Response hook: move ``Location`` out of httpx's sight. We follow redirects ourselves, but httpx still
    parses a redirect's Location before returning the response, and raises its own exceptions on hostile
    values (``data:...``, invalid hosts) before our checks can classify them."""
    if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
        response.extensions[_LOCATIONS] = response.headers.get_list("location")
        del response.headers["location"]


def _content_type(headers: httpx.Headers) -> str:
    value: str = headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


class MediaConnector:
    """Fetches media bytes under a ``FetchPolicy``. Use as ``async with MediaConnector(policy) as c``."""

    def __init__(self, policy: FetchPolicy | None = None, *, resolver: Resolver = system_resolver) -> None:
        self.policy = policy or FetchPolicy()
        self.guard = DestinationGuard(
            allowed_domains=self.policy.allowed_domains,
            allow_private_networks=self.policy.allow_private_networks,
            resolver=resolver,
        )
        self._client: httpx.AsyncClient | None = None
        self._inflight: dict[tuple[str, str], _InFlight] = {}
        self._cache = _BytesLRU(self.policy.cache_max_bytes, self.policy.cache_max_entries)
        self._semaphore = asyncio.Semaphore(self.policy.max_concurrent_fetches)
        self._counts = {"fetches": 0, "network": 0, "hits": 0, "coalesced": 0, "refusals": 0}

    # --- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def open(self) -> None:
        """Create the pooled client (``async with`` does this). Idempotent."""
        if self._client is not None:
            return
        p = self.policy
        limits = httpx.Limits(
            max_connections=p.max_connections,
            max_keepalive_connections=p.max_keepalive_connections,
            keepalive_expiry=p.keepalive_expiry_seconds,
        )
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(self.guard, limits=limits),
            # The transport connects by itself; environment proxies would bypass the pinning, so none.
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(p.fetch_timeout_seconds, connect=p.connect_timeout_seconds),
            # Identity only: a compressed body would let a small download inflate past the byte cap.
            headers={"accept-encoding": "identity", "user-agent": "triptych-media/0.1"},
            event_hooks={"response": [_take_redirect_location]},
        )

    async def aclose(self) -> None:
        """Cancel fetches in flight and close the client."""
        tasks = [entry.task for entry in self._inflight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._cache.clear()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # --- public API -----------------------------------------------------------------------------------

    async def fetch(self, url: str, *, modality: Modality) -> FetchedMedia:
        """The bytes behind ``url``, or a ``MediaError`` subclass saying why not."""
        self._counts["fetches"] += 1
        try:
            return await self._fetch(url, modality)
        except MediaError:
            self._counts["refusals"] += 1
            raise

    def stats(self) -> ConnectorStats:
        return ConnectorStats(
            fetches=self._counts["fetches"],
            network_fetches=self._counts["network"],
            cache_hits=self._counts["hits"],
            coalesced=self._counts["coalesced"],
            in_flight=len(self._inflight),
            refusals=self._counts["refusals"],
            cache_entries=len(self._cache),
            cache_bytes=self._cache.bytes,
            cache_capacity_bytes=self._cache.max_bytes,
            cache_evictions=self._cache.evictions,
        )

    # --- dispatch -------------------------------------------------------------------------------------

    async def _fetch(self, url: str, modality: Modality) -> FetchedMedia:
        if modality not in ("image", "video", "audio"):
            raise InvalidMediaURL(f"unknown modality {modality!r}", param="modality")
        max_bytes = self.policy.max_bytes_for(modality)
        scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
        if scheme == "data":
            limit = self.policy.max_data_url_chars or (max_bytes // 3 + 1) * 4 + 256
            if len(url) > limit:
                raise MediaTooLarge(f"data: URL is longer than {limit} characters", param="url")
            data, media_type = parse_data_url(url, modality=modality, max_bytes=max_bytes)
            return FetchedMedia(url=url, data=data, content_type=media_type, source="data")
        if len(url) > _MAX_URL_CHARS_WITHOUT_DATA:
            raise InvalidMediaURL(f"media URL over {_MAX_URL_CHARS_WITHOUT_DATA} characters", param="url")
        if scheme == "file":
            return await self._fetch_file(url, modality, max_bytes)
        if scheme not in ("http", "https"):
            raise InvalidMediaURL(f"unsupported media URL scheme {scheme!r}", param="url")
        parsed = self.guard.check_url(url)
        return await self._shared((modality, str(parsed)), parsed, modality)

    async def _fetch_file(self, url: str, modality: Modality, max_bytes: int) -> FetchedMedia:
        # Blocking file I/O (possibly a network mount) stays off the event loop.
        async with asyncio.timeout(self.policy.timeout_for(modality)):
            try:
                data = await asyncio.to_thread(
                    read_jailed_file, url, jail=self.policy.allowed_local_media_path, max_bytes=max_bytes
                )
            except TimeoutError as exc:
                raise MediaTimeout("reading the local media file timed out", param="url") from exc
        if not data:
            raise MediaFetchError("local media file is empty", param="url")
        return FetchedMedia(url=url, data=data, content_type="", source="file")

    # --- sharing and caching --------------------------------------------------------------------------

    async def _shared(self, key: tuple[str, str], url: httpx.URL, modality: Modality) -> FetchedMedia:
        cached = self._cache.get(key)
        if cached is not None:
            self._counts["hits"] += 1
            return cached
        entry = self._inflight.get(key)
        if entry is None:
            task = asyncio.create_task(self._fetch_http(url, modality), name=f"media-fetch {url}")
            entry = _InFlight(task)
            self._inflight[key] = entry
            task.add_done_callback(lambda t: self._settle(key, t))
        else:
            self._counts["coalesced"] += 1
        entry.waiters += 1
        try:
            # shield: a caller that is cancelled stops waiting; the fetch goes on for the others.
            return await asyncio.shield(entry.task)
        finally:
            entry.waiters -= 1
            if entry.waiters == 0 and not entry.task.done():
                # Nobody is left to use the result. Forget the entry now, not when the task finishes
                # cancelling, so that a caller arriving in between starts afresh instead of joining a
                # cancelled fetch.
                if self._inflight.get(key) is entry:
                    del self._inflight[key]
                entry.task.cancel()

    def _settle(self, key: tuple[str, str], task: asyncio.Task[FetchedMedia]) -> None:
        entry = self._inflight.get(key)
        if entry is not None and entry.task is task:
            del self._inflight[key]
        if task.cancelled():
            return
        error = task.exception()  # also marks it retrieved when every waiter has gone
        if error is None:
            self._cache.put(key, task.result())

    # --- http -----------------------------------------------------------------------------------------

    async def _fetch_http(self, url: httpx.URL, modality: Modality) -> FetchedMedia:
        if self._client is None:
            raise RuntimeError("MediaConnector used outside 'async with' (or after aclose())")
        self._counts["network"] += 1
        timeout = self.policy.timeout_for(modality)
        try:
            async with asyncio.timeout(timeout), self._semaphore:
                return await self._follow(self._client, url, modality)
        except TimeoutError as exc:
            raise MediaTimeout(f"fetching {url} took longer than {timeout:g} s", param="url") from exc

    async def _follow(self, client: httpx.AsyncClient, url: httpx.URL, modality: Modality) -> FetchedMedia:
        seen = {str(url)}
        for hop in range(self.policy.max_redirects + 1):
            request = client.build_request("GET", url)
            response = await client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECT_STATUSES:
                    locations: list[str] = response.extensions.get(_LOCATIONS, [])
                    if len(locations) != 1 or not locations[0].strip():
                        raise MediaFetchError(f"redirect from {url} without one Location header", param="url")
                    location = locations[0].strip()
                    if hop == self.policy.max_redirects:
                        raise MediaURLRefused(
                            f"more than {self.policy.max_redirects} redirects fetching media", param="url"
                        )
                    url = self._next_hop(url, location)
                    if str(url) in seen:
                        raise MediaURLRefused(f"redirect loop at {url}", param="url")
                    seen.add(str(url))
                    continue
                return await self._read_body(response, url, modality)
            finally:
                await response.aclose()
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def _next_hop(self, url: httpx.URL, location: str) -> httpx.URL:
        try:
            target = url.join(location)
        except (httpx.InvalidURL, ValueError, TypeError, UnicodeError) as exc:
            raise MediaFetchError(f"redirect to an invalid location {location[:200]!r}", param="url") from exc
        if target.scheme not in ("http", "https"):
            raise MediaURLRefused(f"redirect to a {target.scheme!r} URL is not followed", param="url")
        if len(str(target)) > _MAX_URL_CHARS_WITHOUT_DATA:
            raise MediaFetchError("redirect to an overlong URL", param="url")
        return self.guard.check_url(target)  # every hop gets the full check, not just the first

    async def _read_body(self, response: httpx.Response, url: httpx.URL, modality: Modality) -> FetchedMedia:
        if not 200 <= response.status_code < 300:
            raise MediaFetchError(f"fetching {url} returned HTTP {response.status_code}", param="url")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise MediaFetchError(f"server sent content-encoding {encoding!r}, not identity", param="url")
        content_type = _content_type(response.headers)
        if not media_type_fits(content_type, modality):
            raise UnsupportedMediaFormat(f"{url} is served as {content_type!r}, not {modality}", param="url")
        max_bytes = self.policy.max_bytes_for(modality)
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise MediaTooLarge(f"{url} declares {int(declared)} bytes, more than {max_bytes}", param="url")
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
            if total > max_bytes:  # stop mid-stream: never read (let alone hold) the rest of the body
                raise MediaTooLarge(f"{url} is larger than {max_bytes} bytes", param="url")
            chunks.append(chunk)
        if total == 0:
            raise MediaFetchError(f"{url} returned an empty body", param="url")
        return FetchedMedia(url=str(url), data=b"".join(chunks), content_type=content_type, source="http")
