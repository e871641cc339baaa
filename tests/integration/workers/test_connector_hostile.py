"""A corpus of hostile media URLs, each refused with the right typed error and — for network URLs — before
any connection is attempted (the ``loopback_only`` tripwire records every dial)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from triptych_contract import Modality
from triptych_workers.media.connector import FetchPolicy, MediaConnector
from triptych_workers.media.errors import (
    InvalidMediaURL,
    MediaError,
    MediaFetchError,
    MediaTooLarge,
    MediaURLRefused,
    UnsupportedMediaFormat,
)

from tests.integration.workers.conftest import DialLog, LoopbackHTTPServer, fake_resolver

pytestmark = pytest.mark.timeout(60)

# Names the stub resolver answers; nothing here ever reaches DNS.
RESOLVER_TABLE = {
    "rebind.test": ["127.0.0.1"],
    "internal.test": ["10.1.2.3"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.0.7"],
    "mixed.test": ["93.184.216.34", "192.168.0.10"],
    "v6mapped.test": ["::ffff:10.0.0.1"],
    "ula.test": ["fd12:3456::1"],
    "linklocal6.test": ["fe80::1"],
}

SSRF = {
    "loopback-dotted": "http://127.0.0.1/x.png",
    "loopback-other": "http://127.45.6.7/x.png",
    "loopback-decimal": "http://2130706433/x.png",
    "loopback-hex": "http://0x7f000001/x.png",
    "loopback-hex-dotted": "http://0x7f.0x0.0x0.0x1/x.png",
    "loopback-hex-short": "http://0x7f.1/x.png",
    "loopback-octal": "http://017700000001/x.png",
    "loopback-octal-short": "http://0177.1/x.png",
    "loopback-short-2": "http://127.1/x.png",
    "loopback-short-3": "http://127.0.1/x.png",
    "loopback-trailing-dot": "http://127.0.0.1./x.png",
    "localhost": "http://localhost/x.png",
    "localhost-upper-dot": "http://LOCALHOST./x.png",
    "localhost-subdomain": "http://a.b.localhost/x.png",
    "unspecified-zero": "http://0/x.png",
    "unspecified-dotted": "http://0.0.0.0/x.png",
    "ipv6-loopback": "http://[::1]/x.png",
    "ipv6-loopback-long": "http://[0:0:0:0:0:0:0:1]/x.png",
    "ipv6-unspecified": "http://[::]/x.png",
    "ipv6-mapped-dotted": "http://[::ffff:127.0.0.1]/x.png",
    "ipv6-mapped-hex": "http://[::ffff:7f00:1]/x.png",
    "ipv6-mapped-long": "http://[0:0:0:0:0:ffff:127.0.0.1]/x.png",
    "ipv6-mapped-private": "http://[::ffff:192.168.1.1]/x.png",
    "ipv6-compat": "http://[::127.0.0.1]/x.png",
    "ipv6-translated": "http://[::ffff:0:a00:1]/x.png",
    "ipv6-6to4-loopback": "http://[2002:7f00:1::]/x.png",
    "ipv6-6to4-metadata": "http://[2002:a9fe:a9fe::1]/x.png",
    "ipv6-nat64-loopback": "http://[64:ff9b::127.0.0.1]/x.png",
    "ipv6-nat64-local-use": "http://[64:ff9b:1::a00:1]/x.png",
    "ipv6-link-local-zone": "http://[fe80::1%25eth0]/x.png",
    "ipv6-ula": "http://[fd00::1]/x.png",
    "ipv6-site-local": "http://[fec0::1]/x.png",
    "ipv6-multicast": "http://[ff02::1]/x.png",
    "ipv6-documentation": "http://[2001:db8::1]/x.png",
    "ipv6-teredo": "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.png",
    "aws-metadata": "http://169.254.169.254/latest/meta-data/",
    "aws-metadata-decimal": "http://2852039166/latest/meta-data/",
    "aws-metadata-v6": "http://[fd00:ec2::254]/latest/meta-data/",
    "gcp-metadata-name": "http://metadata.google.internal/computeMetadata/v1/",
    "alibaba-metadata": "http://100.100.100.200/latest/meta-data/",
    "link-local": "http://169.254.1.1/x.png",
    "private-10": "http://10.0.0.1/x.png",
    "private-172": "http://172.16.5.4/x.png",
    "private-192": "http://192.168.0.1/x.png",
    "cgnat": "http://100.64.0.1/x.png",
    "multicast": "http://224.0.0.1/x.png",
    "broadcast": "http://255.255.255.255/x.png",
    "reserved-class-e": "http://240.0.0.1/x.png",
    "documentation-1": "http://192.0.2.1/x.png",
    "documentation-3": "http://203.0.113.9/x.png",
    "benchmarking": "http://198.18.0.1/x.png",
    "ietf-protocol": "http://192.0.0.8/x.png",
    "dns-to-loopback": "http://rebind.test/x.png",
    "dns-to-private": "http://internal.test/x.png",
    "dns-to-metadata": "http://metadata.test/x.png",
    "dns-to-cgnat": "http://cgnat.test/x.png",
    "dns-mixed-answers": "http://mixed.test/x.png",
    "dns-to-mapped-private": "http://v6mapped.test/x.png",
    "dns-to-ula": "http://ula.test/x.png",
    "dns-to-v6-link-local": "http://linklocal6.test/x.png",
    "userinfo": "http://user:pass@example.com/x.png",
    "userinfo-confusion": "http://example.com@127.0.0.1/x.png",
    "backslash-confusion": "http://example.com\\@127.0.0.1/x.png",
}

INVALID = {
    # httpx's own parser rejects four-part dotted hosts with leading zeros: refused as unparseable.
    "loopback-octal-dotted": "http://0177.0.0.01/x.png",
    "too-many-dotted-parts": "http://1.2.3.4.5/x.png",
    "ipv4-part-over-255": "http://256.0.0.1/x.png",
    "ipv4-number-over-32-bits": "http://4294967296/x.png",
    "bad-hex-part": "http://0xZZ.1/x.png",
    "percent-encoded-host": "http://%31%32%37.0.0.1/x.png",
    "space-in-host": "http://exa mple.com/x.png",
    "fullwidth-digits": "http://\uff11\uff12\uff17.0.0.1/x.png",
    "tab-in-url": "http://127.0.0.1\t/x.png",
    "port-zero": "http://example.com:0/x.png",
    "port-too-big": "http://example.com:99999/x.png",
    "empty-host": "http:///x.png",
    "scheme-relative": "//example.com/x.png",
    "ftp": "ftp://example.com/x.png",
    "gopher": "gopher://127.0.0.1:6379/_INFO",
    "dict": "dict://127.0.0.1:11211/stats",
    "javascript": "javascript:alert(1)",
    "no-scheme": "example.com/x.png",
    "empty": "",
    "bad-ipv6": "http://[::1::2]/x.png",
    "overlong-url": "http://example.com/" + "a" * 9000,
}

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()

DATA_URLS: dict[str, tuple[str, type[MediaError]]] = {
    "data-bad-base64": ("data:image/png;base64,!!!notbase64!!!", InvalidMediaURL),
    "data-bad-padding": ("data:image/png;base64,QUJD=", InvalidMediaURL),
    "data-no-comma": (f"data:image/png;base64{PNG_B64}", InvalidMediaURL),
    "data-not-base64": ("data:image/png,%89PNG", InvalidMediaURL),
    "data-empty-payload": ("data:image/png;base64,", InvalidMediaURL),
    "data-malformed-type": (f"data:image png;base64,{PNG_B64}", InvalidMediaURL),
    "data-whitespace-in-payload": (f"data:image/png;base64,{PNG_B64[:8]} {PNG_B64[8:]}", InvalidMediaURL),
    "data-html-as-image": ("data:text/html;base64,PHNjcmlwdD48L3NjcmlwdD4=", UnsupportedMediaFormat),
    "data-video-as-image": (f"data:video/mp4;base64,{PNG_B64}", UnsupportedMediaFormat),
    "data-json-as-audio": ("data:application/json;base64,e30=", UnsupportedMediaFormat),
    "data-oversized": ("data:image/png;base64," + "A" * (4 * 1024 * 1024), MediaTooLarge),
}


@pytest.fixture
async def default_connector() -> AsyncIterator[MediaConnector]:
    policy = FetchPolicy(max_file_size_mb=1)
    async with MediaConnector(policy, resolver=fake_resolver(RESOLVER_TABLE)) as connector:
        yield connector


@pytest.mark.parametrize("url", list(SSRF.values()), ids=list(SSRF))
async def test_ssrf_spellings_are_refused_before_connecting(
    default_connector: MediaConnector, loopback_only: DialLog, url: str
) -> None:
    with pytest.raises(MediaURLRefused):
        await default_connector.fetch(url, modality="image")
    assert loopback_only.dialled == []


@pytest.mark.parametrize("url", list(INVALID.values()), ids=list(INVALID))
async def test_malformed_urls_are_invalid(
    default_connector: MediaConnector, loopback_only: DialLog, url: str
) -> None:
    with pytest.raises(InvalidMediaURL):
        await default_connector.fetch(url, modality="image")
    assert loopback_only.dialled == []


@pytest.mark.parametrize(("url", "error"), list(DATA_URLS.values()), ids=list(DATA_URLS))
async def test_malformed_data_urls(
    default_connector: MediaConnector, url: str, error: type[MediaError]
) -> None:
    modality: Modality = "audio" if "json" in url else "image"
    with pytest.raises(error):
        await default_connector.fetch(url, modality=modality)


async def test_allowlist_refuses_other_hosts(loopback_only: DialLog) -> None:
    policy = FetchPolicy(allowed_domains=("media.example.com", "*.cdn.example.com"))
    async with MediaConnector(policy, resolver=fake_resolver({})) as connector:
        for url in (
            "http://example.com/x.png",
            "http://evil-media.example.com/x.png",
            "http://cdn.example.com/",
        ):
            with pytest.raises(MediaURLRefused, match="allowed domains"):
                await connector.fetch(url, modality="image")
    assert loopback_only.dialled == []


# --- redirect tricks (the first hop is a real loopback server; private networks allowed for it) ----------

REDIRECT_TRICKS = {
    "to-metadata": "http://169.254.169.254/latest/meta-data/iam/",
    "to-metadata-decimal": "http://2852039166/",
    "to-metadata-mapped": "http://[::ffff:a9fe:a9fe]/",
    "to-unspecified": "http://0.0.0.0:{port}/ok.png",
    "to-non-canonical-loopback": "http://2130706433:{port}/ok.png",
    "to-file": "file:///etc/passwd",
    "to-gopher": "gopher://127.0.0.1:{port}/_x",
    "to-data": "data:image/png;base64," + PNG_B64,
    "to-userinfo": "http://admin:admin@127.0.0.1:{port}/ok.png",
    "to-multicast": "http://[ff02::1]/",
}


@pytest.mark.parametrize("location", list(REDIRECT_TRICKS.values()), ids=list(REDIRECT_TRICKS))
async def test_redirect_tricks_are_refused(
    http_server: LoopbackHTTPServer, loopback_only: DialLog, location: str
) -> None:
    http_server.routes["/ok.png"] = lambda ctx: ctx.send(200, b"\x89PNG....", "image/png")
    http_server.routes["/go"] = lambda ctx: ctx.redirect(location.format(port=http_server.port))
    async with MediaConnector(FetchPolicy(allow_private_networks=True)) as connector:
        with pytest.raises(MediaURLRefused):
            await connector.fetch(http_server.url("/go"), modality="image")
    assert http_server.hits["/ok.png"] == 0
    assert loopback_only.refused == []


# --- the local-file jail -----------------------------------------------------------------------------------


@pytest.fixture
def jail(tmp_path: Path) -> Path:
    root = tmp_path / "jail"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(b"\x89PNG ok")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside-dir" / "x.png").write_bytes(b"\x89PNG outside")
    (root / "escape.png").symlink_to(outside)
    (root / "dir-escape").symlink_to(tmp_path / "outside-dir")
    (root / "inner-link.png").symlink_to(root / "ok.png")
    (root / "devnull.png").symlink_to("/dev/null")
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    os.mkfifo(root / "pipe.png")
    (tmp_path / "jail-sibling").mkdir()  # shares the jail's name as a prefix
    (tmp_path / "jail-sibling" / "x.png").write_bytes(b"\x89PNG sibling")
    return root


def _file_cases(jail: Path) -> dict[str, tuple[str, type[MediaError]]]:
    j = jail.as_posix()
    return {
        "dotdot-escape": (f"file://{j}/../secret.txt", MediaURLRefused),
        "dotdot-deep-escape": (f"file://{j}/sub/../../secret.txt", MediaURLRefused),
        "encoded-dotdot": (f"file://{j}/%2e%2e/secret.txt", MediaURLRefused),
        "symlink-escape": (f"file://{j}/escape.png", MediaURLRefused),
        "symlinked-dir-escape": (f"file://{j}/dir-escape/x.png", MediaURLRefused),
        "symlink-to-device": (f"file://{j}/devnull.png", MediaURLRefused),
        "prefix-sibling": (f"file://{j}-sibling/x.png", MediaURLRefused),
        "absolute-outside": ("file:///etc/passwd", MediaURLRefused),
        "fifo": (f"file://{j}/pipe.png", MediaURLRefused),
        "directory": (f"file://{j}/sub", MediaURLRefused),
        "remote-host": (f"file://fileserver{j}/ok.png", MediaURLRefused),
        "symlink-loop": (f"file://{j}/loop-a", MediaURLRefused),
        "nul-byte": (f"file://{j}/ok.png%00.jpg", InvalidMediaURL),
        "relative": ("file:ok.png", InvalidMediaURL),
        "query": (f"file://{j}/ok.png?x=1", InvalidMediaURL),
        "missing": (f"file://{j}/missing.png", MediaFetchError),
    }


FILE_CASE_NAMES = list(_file_cases(Path("/j")))


@pytest.mark.parametrize("case", FILE_CASE_NAMES)
async def test_file_jail_refusals(jail: Path, case: str) -> None:
    url, error = _file_cases(jail)[case]
    async with MediaConnector(FetchPolicy(allowed_local_media_path=str(jail))) as connector:
        with pytest.raises(error) as caught:
            await connector.fetch(url, modality="image")
    assert type(caught.value) is error  # the precise class, not just a subclass


async def test_file_jail_allows_what_stays_inside(jail: Path) -> None:
    async with MediaConnector(FetchPolicy(allowed_local_media_path=str(jail))) as connector:
        direct = await connector.fetch(f"file://{jail}/ok.png", modality="image")
        via_inner_link = await connector.fetch(f"file://{jail}/inner-link.png", modality="image")
        via_dotdot_inside = await connector.fetch(f"file://{jail}/sub/../ok.png", modality="image")
        via_localhost = await connector.fetch(f"file://localhost{jail}/ok.png", modality="image")
    assert {direct.data, via_inner_link.data, via_dotdot_inside.data, via_localhost.data} == {b"\x89PNG ok"}


async def test_no_jail_refuses_every_file(jail: Path) -> None:
    async with MediaConnector(FetchPolicy()) as connector:
        with pytest.raises(MediaURLRefused, match="disabled"):
            await connector.fetch(f"file://{jail}/ok.png", modality="image")


async def test_oversized_local_file(jail: Path) -> None:
    (jail / "big.png").write_bytes(b"\x00" * (2 * 1024 * 1024))
    policy = FetchPolicy(allowed_local_media_path=str(jail), max_file_size_mb=1)
    async with MediaConnector(policy) as connector:
        with pytest.raises(MediaTooLarge):
            await connector.fetch(f"file://{jail}/big.png", modality="image")
