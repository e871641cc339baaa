"""The media connector against real HTTP/1.1 servers on loopback: redirects, slow, stalled, oversized and
mislabelled bodies, in-flight sharing, cancellation and the cache.

Loopback is reachable only because each policy here says ``allow_private_networks=True``; the default
policy refuses it (see the SSRF tests at the end and ``test_connector_hostile.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from triptych_workers.media.connector import FetchPolicy, MediaConnector, ModalityLimits
from triptych_workers.media.errors import (
    MediaFetchError,
    MediaTimeout,
    MediaTooLarge,
    MediaURLRefused,
    UnsupportedMediaFormat,
)

from tests.integration.workers.conftest import (
    DialLog,
    Handler,
    LoopbackHTTPServer,
    RouteContext,
    fake_resolver,
)

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 120
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 120
MB = 10**6  # the unit of maxFileSizeMB (the CRD says 10^6 bytes); written out here, not imported


def loopback_policy(**overrides: object) -> FetchPolicy:
    settings: dict[str, object] = {
        "allow_private_networks": True,
        "modalities": {
            "image": ModalityLimits(timeout_seconds=2),
            "video": ModalityLimits(timeout_seconds=2),
            "audio": ModalityLimits(timeout_seconds=2, max_bytes=1 * MB),
        },
        "max_file_size_mb": 1,
    }
    settings.update(overrides)
    return FetchPolicy.model_validate(settings)


# --- plain fetches and redirects -------------------------------------------------------------------------


async def test_fetch_returns_bytes_type_and_source(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/a.png"] = lambda ctx: ctx.send(200, PNG, "image/png; charset=binary")
    async with MediaConnector(loopback_policy()) as connector:
        media = await connector.fetch(http_server.url("/a.png"), modality="image")
    assert media.data == PNG
    assert media.content_type == "image/png"
    assert media.source == "http"
    assert media.url == http_server.url("/a.png")


async def test_redirect_chain_within_the_limit_is_followed(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/r1"] = lambda ctx: ctx.redirect("/r2", 301)
    http_server.routes["/r2"] = lambda ctx: ctx.redirect(http_server.url("/r3"), 307)
    http_server.routes["/r3"] = lambda ctx: ctx.redirect("final.png", 308)
    http_server.routes["/final.png"] = lambda ctx: ctx.send(200, PNG, "image/png")
    async with MediaConnector(loopback_policy(max_redirects=3)) as connector:
        media = await connector.fetch(http_server.url("/r1"), modality="image")
    assert media.data == PNG
    assert media.url == http_server.url("/final.png")
    assert [http_server.hits[p] for p in ("/r1", "/r2", "/r3", "/final.png")] == [1, 1, 1, 1]


async def test_one_redirect_too_many_is_refused(http_server: LoopbackHTTPServer) -> None:
    def hop_to(target: str) -> Handler:
        return lambda ctx: ctx.redirect(target)

    for i in range(4):
        http_server.routes[f"/h{i}"] = hop_to(f"/h{i + 1}")
    http_server.routes["/h4"] = lambda ctx: ctx.send(200, PNG, "image/png")
    async with MediaConnector(loopback_policy(max_redirects=3)) as connector:
        with pytest.raises(MediaURLRefused, match="more than 3 redirects"):
            await connector.fetch(http_server.url("/h0"), modality="image")
    assert http_server.hits["/h4"] == 0


async def test_redirect_loop_is_refused(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/a"] = lambda ctx: ctx.redirect("/b")
    http_server.routes["/b"] = lambda ctx: ctx.redirect("/a")
    async with MediaConnector(loopback_policy(max_redirects=10)) as connector:
        with pytest.raises(MediaURLRefused, match="redirect loop"):
            await connector.fetch(http_server.url("/a"), modality="image")
    assert http_server.hits["/a"] == 1


async def test_redirects_disabled(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/a"] = lambda ctx: ctx.redirect("/b")
    async with MediaConnector(loopback_policy(max_redirects=0)) as connector:
        with pytest.raises(MediaURLRefused, match="more than 0 redirects"):
            await connector.fetch(http_server.url("/a"), modality="image")


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:{port}/x.png",
        "http://[::]:{port}/x.png",
        "http://224.0.0.1/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://0x7f.1:{port}/x.png",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
async def test_every_redirect_hop_is_checked(
    http_server: LoopbackHTTPServer, loopback_only: DialLog, location: str
) -> None:
    """Even with private networks allowed, a hop to a metadata endpoint, an unspecified or multicast
    address, a non-canonical spelling or another scheme is refused before anything is dialled."""
    http_server.routes["/x.png"] = lambda ctx: ctx.send(200, PNG, "image/png")
    http_server.routes["/go"] = lambda ctx: ctx.redirect(location.format(port=http_server.port))
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(MediaURLRefused):
            await connector.fetch(http_server.url("/go"), modality="image")
    assert http_server.hits["/x.png"] == 0
    assert loopback_only.refused == []
    assert set(loopback_only.dialled) == {"127.0.0.1"}


async def test_redirect_outside_the_allowlist_is_refused(
    http_server: LoopbackHTTPServer, loopback_only: DialLog
) -> None:
    resolver = fake_resolver({"media.test": ["127.0.0.1"]})
    http_server.routes["/go"] = lambda ctx: ctx.redirect(http_server.url("/x.png"))  # 127.0.0.1: not listed
    http_server.routes["/x.png"] = lambda ctx: ctx.send(200, PNG, "image/png")
    policy = loopback_policy(allowed_domains=["media.test"])
    async with MediaConnector(policy, resolver=resolver) as connector:
        with pytest.raises(MediaURLRefused, match="not in the allowed domains"):
            await connector.fetch(http_server.url("/go", host="media.test"), modality="image")
    assert http_server.hits["/go"] == 1
    assert http_server.hits["/x.png"] == 0


# --- bodies: slow, stalled, oversized, mislabelled -------------------------------------------------------


async def test_slow_body_within_the_timeout_arrives(http_server: LoopbackHTTPServer) -> None:
    def slow(ctx: RouteContext) -> None:
        ctx.head(200, {"Content-Type": "image/png", "Content-Length": str(len(PNG))})
        ctx.body(PNG, chunk=16, delay=0.02)

    http_server.routes["/slow.png"] = slow
    async with MediaConnector(loopback_policy()) as connector:
        media = await connector.fetch(http_server.url("/slow.png"), modality="image")
    assert media.data == PNG


async def test_stall_mid_body_times_out(http_server: LoopbackHTTPServer) -> None:
    def stall(ctx: RouteContext) -> None:
        ctx.head(200, {"Content-Type": "image/png", "Content-Length": "100000"})
        ctx.body(PNG)
        ctx.stall()

    http_server.routes["/stall.png"] = stall
    policy = loopback_policy(modalities={"image": ModalityLimits(timeout_seconds=0.5)})
    async with MediaConnector(policy) as connector:
        started = time.monotonic()
        with pytest.raises(MediaTimeout):
            await connector.fetch(http_server.url("/stall.png"), modality="image")
        assert time.monotonic() - started < 15  # the server stalls for good: far from the 0.5 s timeout


async def test_stall_before_headers_times_out(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/hang"] = lambda ctx: ctx.stall()
    # The deployment-wide ceiling wins over video's own 60 s: the bound sits halfway to that, so it shows
    # which timeout ended the fetch and no slow runner can fail it.
    policy = loopback_policy(
        fetch_timeout_seconds=0.4, modalities={"video": ModalityLimits(timeout_seconds=60)}
    )
    async with MediaConnector(policy) as connector:
        started = time.monotonic()
        with pytest.raises(MediaTimeout):
            await connector.fetch(http_server.url("/hang"), modality="video")
        assert time.monotonic() - started < 30


def _big_body_route(ctx: RouteContext, *, size: int, framing: str) -> None:
    data = b"\x00" * size
    if framing == "content-length":
        ctx.head(200, {"Content-Type": "video/mp4", "Content-Length": str(size)})
        ctx.body(data)
    elif framing == "close":  # no length at all: the body ends when the connection does
        ctx.head(200, {"Content-Type": "video/mp4", "Connection": "close"})
        ctx.handler.close_connection = True
        ctx.body(data)
    else:  # chunked transfer encoding, written by hand
        ctx.head(200, {"Content-Type": "video/mp4", "Transfer-Encoding": "chunked"})
        piece = b"\x00" * 65536
        framed = b"%x\r\n%s\r\n" % (len(piece), piece)
        ctx.body(framed * (size // len(piece)) + b"0\r\n\r\n")


@pytest.mark.parametrize("framing", ["content-length", "close", "chunked"])
async def test_oversized_body_is_cut_off_mid_stream(http_server: LoopbackHTTPServer, framing: str) -> None:
    """64 MB offered, 1 MB allowed: the fetch fails and the server is left with most of its body unsent."""
    size = 64 * MB
    http_server.routes["/big.mp4"] = lambda ctx: _big_body_route(ctx, size=size, framing=framing)
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(MediaTooLarge):
            await connector.fetch(http_server.url("/big.mp4"), modality="video")
    # The handler ends when its writes hit the closed connection; it never gets to finish the body.
    assert http_server.wait_for(lambda: http_server.aborted["/big.mp4"] == 1)
    assert http_server.finished["/big.mp4"] == 0
    assert http_server.bytes_sent["/big.mp4"] < size // 4


async def test_declared_oversize_is_refused_before_reading(http_server: LoopbackHTTPServer) -> None:
    def declared(ctx: RouteContext) -> None:
        ctx.head(200, {"Content-Type": "audio/wav", "Content-Length": str(2 * MB)})
        ctx.stall()  # if the connector waited for the body, it would time out instead

    http_server.routes["/big.wav"] = declared
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(MediaTooLarge, match="declares"):
            await connector.fetch(http_server.url("/big.wav"), modality="audio")


@pytest.mark.parametrize(("size", "accepted"), [(MB, True), (MB + 1, False)])
async def test_max_file_size_mb_is_megabytes_of_ten_to_the_sixth(
    http_server: LoopbackHTTPServer, size: int, accepted: bool
) -> None:
    """maxFileSizeMB: 1 takes exactly 1,000,000 bytes and refuses one more (the CRD's unit, not MiB)."""
    http_server.routes["/exact"] = lambda ctx: ctx.send(200, b"\x00" * size, "application/octet-stream")
    async with MediaConnector(loopback_policy()) as connector:
        assert loopback_policy().max_file_size_mb == 1
        if accepted:
            assert len((await connector.fetch(http_server.url("/exact"), modality="video")).data) == size
        else:
            with pytest.raises(MediaTooLarge):
                await connector.fetch(http_server.url("/exact"), modality="video")


async def test_per_modality_cap_is_tighter_than_the_global_one(http_server: LoopbackHTTPServer) -> None:
    body = b"\x00" * (MB // 2)
    http_server.routes["/half"] = lambda ctx: ctx.send(200, body, "application/octet-stream")
    policy = loopback_policy(
        modalities={
            "image": ModalityLimits(timeout_seconds=2),
            "audio": ModalityLimits(timeout_seconds=2, max_bytes=MB // 4),
        }
    )
    async with MediaConnector(policy) as connector:
        assert len((await connector.fetch(http_server.url("/half"), modality="image")).data) == MB // 2
        with pytest.raises(MediaTooLarge):
            await connector.fetch(http_server.url("/half"), modality="audio")


async def test_body_shorter_than_declared_fails(http_server: LoopbackHTTPServer) -> None:
    def short(ctx: RouteContext) -> None:
        ctx.head(200, {"Content-Type": "image/png", "Content-Length": "5000", "Connection": "close"})
        ctx.handler.close_connection = True
        ctx.body(PNG)

    http_server.routes["/short.png"] = short
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(MediaFetchError):
            await connector.fetch(http_server.url("/short.png"), modality="image")


@pytest.mark.parametrize(
    ("content_type", "modality"),
    [("text/html", "image"), ("application/json", "video"), ("video/mp4", "image"), ("image/png", "audio")],
)
async def test_wrong_declared_type_is_refused(
    http_server: LoopbackHTTPServer, content_type: str, modality: str
) -> None:
    http_server.routes["/x"] = lambda ctx: ctx.send(200, b"<html>error page</html>", content_type)
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(UnsupportedMediaFormat):
            await connector.fetch(http_server.url("/x"), modality=modality)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content_type", "modality"),
    [
        ("image/png", "image"),  # JPEG bytes labelled PNG: the decoder sniffs, the connector passes them on
        (None, "image"),
        ("application/octet-stream", "video"),
        ("video/webm", "audio"),
    ],
)
async def test_lying_or_missing_type_passes_bytes_through(
    http_server: LoopbackHTTPServer, content_type: str | None, modality: str
) -> None:
    http_server.routes["/x"] = lambda ctx: ctx.send(200, JPEG, content_type)
    async with MediaConnector(loopback_policy()) as connector:
        media = await connector.fetch(http_server.url("/x"), modality=modality)  # type: ignore[arg-type]
    assert media.data == JPEG
    assert media.content_type == (content_type or "")


@pytest.mark.parametrize("status", [404, 500, 204])
async def test_non_success_status_fails(http_server: LoopbackHTTPServer, status: int) -> None:
    http_server.routes["/x"] = lambda ctx: ctx.send(status, b"" if status == 204 else b"nope", "image/png")
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(MediaFetchError):
            await connector.fetch(http_server.url("/x"), modality="image")


async def test_compressed_body_is_refused(http_server: LoopbackHTTPServer) -> None:
    def gz(ctx: RouteContext) -> None:
        ctx.head(200, {"Content-Type": "image/png", "Content-Encoding": "gzip", "Content-Length": "10"})
        ctx.body(b"\x1f\x8b" + b"\x00" * 8)

    http_server.routes["/gz"] = gz
    async with MediaConnector(loopback_policy()) as connector:
        with pytest.raises(MediaFetchError, match="content-encoding"):
            await connector.fetch(http_server.url("/gz"), modality="image")


# --- in-flight sharing, cancellation, cache --------------------------------------------------------------


def _slow_png(delay: float) -> Handler:
    def route(ctx: RouteContext) -> None:
        time.sleep(delay)
        ctx.send(200, PNG, "image/png")

    return route


async def test_concurrent_identical_fetches_hit_the_server_once(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/popular.png"] = _slow_png(0.3)
    async with MediaConnector(loopback_policy()) as connector:
        results = await asyncio.gather(
            *(connector.fetch(http_server.url("/popular.png"), modality="image") for _ in range(200))
        )
        stats = connector.stats()
    assert all(r.data == PNG for r in results)
    assert http_server.hits["/popular.png"] == 1
    assert stats.network_fetches == 1
    assert stats.coalesced == 199
    assert stats.in_flight == 0


async def test_a_cancelled_waiter_does_not_cancel_the_others(http_server: LoopbackHTTPServer) -> None:
    http_server.routes["/p.png"] = _slow_png(0.4)
    async with MediaConnector(loopback_policy()) as connector:
        url = http_server.url("/p.png")
        first = asyncio.create_task(connector.fetch(url, modality="image"))
        second = asyncio.create_task(connector.fetch(url, modality="image"))
        await asyncio.sleep(0.1)
        first.cancel()  # the caller that started the fetch gives up
        assert (await second).data == PNG
        with pytest.raises(asyncio.CancelledError):
            await first
    assert http_server.hits["/p.png"] == 1


async def test_when_every_waiter_leaves_the_fetch_stops_and_the_next_call_starts_afresh(
    http_server: LoopbackHTTPServer,
) -> None:
    http_server.routes["/p.png"] = _slow_png(0.3)
    async with MediaConnector(loopback_policy()) as connector:
        url = http_server.url("/p.png")
        waiters = [asyncio.create_task(connector.fetch(url, modality="image")) for _ in range(3)]
        await asyncio.sleep(0.05)
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        assert connector.stats().in_flight == 0
        assert (await connector.fetch(url, modality="image")).data == PNG
    assert http_server.hits["/p.png"] == 2


async def test_errors_reach_every_waiter_and_are_not_cached(http_server: LoopbackHTTPServer) -> None:
    calls = {"n": 0}

    def flaky(ctx: RouteContext) -> None:
        calls["n"] += 1
        time.sleep(0.2)
        if calls["n"] == 1:
            ctx.send(503, b"busy", "text/plain")
        else:
            ctx.send(200, PNG, "image/png")

    http_server.routes["/flaky.png"] = flaky
    async with MediaConnector(loopback_policy()) as connector:
        url = http_server.url("/flaky.png")
        outcomes = await asyncio.gather(
            *(connector.fetch(url, modality="image") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(o, MediaFetchError) for o in outcomes)
        assert (await connector.fetch(url, modality="image")).data == PNG  # the failure was not cached
    assert http_server.hits["/flaky.png"] == 2


async def test_cache_serves_repeats_and_is_bounded_by_entries_and_bytes(
    http_server: LoopbackHTTPServer,
) -> None:
    for i in range(4):
        http_server.routes[f"/{i}.png"] = lambda ctx: ctx.send(200, PNG, "image/png")
    http_server.routes["/huge"] = lambda ctx: ctx.send(200, b"\x00" * 4096, "image/png")
    policy = loopback_policy(cache_max_entries=2, cache_max_bytes=1024)
    async with MediaConnector(policy) as connector:
        for path in ("/0.png", "/0.png", "/1.png", "/0.png", "/2.png"):  # 2 evicts 1 (LRU), not 0
            await connector.fetch(http_server.url(path), modality="image")
        await connector.fetch(http_server.url("/0.png"), modality="image")
        await connector.fetch(http_server.url("/1.png"), modality="image")
        await connector.fetch(http_server.url("/huge"), modality="image")  # over the byte bound: not kept
        await connector.fetch(http_server.url("/huge"), modality="image")
        stats = connector.stats()
    assert http_server.hits["/0.png"] == 1
    assert http_server.hits["/1.png"] == 2
    assert http_server.hits["/huge"] == 2
    assert stats.cache_entries == 2
    assert stats.cache_bytes <= 1024
    assert stats.cache_hits == 3
    assert stats.cache_evictions >= 1


# --- pinning and the default policy ----------------------------------------------------------------------


async def test_connection_goes_to_the_checked_address_with_the_name_as_host(
    http_server: LoopbackHTTPServer, loopback_only: DialLog
) -> None:
    calls: list[str] = []
    resolver = fake_resolver({"media.test": ["127.0.0.1"]}, calls)
    http_server.routes["/a.png"] = lambda ctx: ctx.send(200, PNG, "image/png")
    async with MediaConnector(loopback_policy(), resolver=resolver) as connector:
        media = await connector.fetch(http_server.url("/a.png", host="media.test"), modality="image")
    assert media.data == PNG
    assert calls == ["media.test"]  # resolved once, at connect time
    assert loopback_only.dialled == ["127.0.0.1"]
    assert http_server.host_headers == [f"media.test:{http_server.port}"]


async def test_default_policy_refuses_loopback_without_connecting(
    http_server: LoopbackHTTPServer, loopback_only: DialLog
) -> None:
    resolver = fake_resolver({"rebind.test": ["127.0.0.1"]})
    http_server.routes["/a.png"] = lambda ctx: ctx.send(200, PNG, "image/png")
    async with MediaConnector(FetchPolicy(), resolver=resolver) as connector:
        for url in (http_server.url("/a.png"), http_server.url("/a.png", host="rebind.test")):
            with pytest.raises(MediaURLRefused):
                await connector.fetch(url, modality="image")
        assert connector.stats().refusals == 2
    assert http_server.connections == 0
    assert loopback_only.dialled == []


async def test_data_and_file_sources(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    policy = FetchPolicy(allowed_local_media_path=str(tmp_path))
    async with MediaConnector(policy) as connector:
        from_file = await connector.fetch((tmp_path / "a.png").as_uri(), modality="image")
        from_data = await connector.fetch("data:image/png;base64,iVBORw0KGgoAAAA=", modality="image")
    assert (from_file.source, from_file.data) == ("file", PNG)
    assert (from_data.source, from_data.content_type) == ("data", "image/png")
    assert from_data.data.startswith(b"\x89PNG")


async def test_fetch_before_open_is_a_server_error_not_a_client_error() -> None:
    connector = MediaConnector(loopback_policy())
    with pytest.raises(RuntimeError):
        await connector.fetch("http://127.0.0.1:9/x.png", modality="image")


def test_policy_reads_the_crd_media_block_and_tightens_per_modality() -> None:
    policy = FetchPolicy.model_validate(
        {
            "maxFileSizeMB": 50,
            "fetchTimeoutSeconds": 8,
            "allowedDomains": ["cdn.test"],
            "allowedLocalMediaPath": "",
        }
    )
    assert policy.allowed_domains == ("cdn.test",)
    assert (policy.timeout_for("image"), policy.timeout_for("video"), policy.timeout_for("audio")) == (
        5,
        8,
        8,
    )
    assert policy.max_bytes_for("video") == 50 * MB
    assert policy.max_bytes_for("audio") == 25 * MB
    assert not policy.allow_private_networks
    with pytest.raises(ValueError, match=r"maxFileSizeMb|extra"):
        FetchPolicy.model_validate({"maxFileSizeMb": 1})  # a typo is an error, not a silent default
