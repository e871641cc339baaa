"""Pure URL and address classification of the SSRF guard, and property tests of every URL-handling path
that needs no network: random inputs end in a typed ``MediaError`` or a result, never anything else."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from triptych_contract.networks import AddressClass, address_allowed
from triptych_workers.media.connector_local import file_url_path, parse_data_url, read_jailed_file
from triptych_workers.media.errors import InvalidMediaURL, MediaError, MediaFetchError, MediaURLRefused
from triptych_workers.media.netpolicy import (
    DestinationGuard,
    classify_address,
    domain_allowed,
    parse_host_literal,
)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", AddressClass.PUBLIC),
        ("93.184.216.34", AddressClass.PUBLIC),
        ("127.0.0.1", AddressClass.LOOPBACK),
        ("127.255.255.254", AddressClass.LOOPBACK),
        ("10.0.0.1", AddressClass.PRIVATE),
        ("172.31.255.255", AddressClass.PRIVATE),
        ("172.32.0.1", AddressClass.PUBLIC),
        ("192.168.1.1", AddressClass.PRIVATE),
        ("100.64.0.1", AddressClass.CGNAT),
        ("100.127.255.255", AddressClass.CGNAT),
        ("100.128.0.1", AddressClass.PUBLIC),
        ("169.254.169.254", AddressClass.METADATA),
        ("169.254.170.2", AddressClass.METADATA),
        ("100.100.100.200", AddressClass.METADATA),
        ("169.254.1.1", AddressClass.LINK_LOCAL),
        ("0.0.0.0", AddressClass.UNSPECIFIED),
        ("0.1.2.3", AddressClass.UNSPECIFIED),
        ("224.0.0.1", AddressClass.MULTICAST),
        ("239.255.255.250", AddressClass.MULTICAST),
        ("240.0.0.1", AddressClass.RESERVED),
        ("255.255.255.255", AddressClass.RESERVED),
        ("192.0.0.8", AddressClass.RESERVED),
        ("192.88.99.1", AddressClass.RESERVED),
        ("192.0.2.1", AddressClass.DOCUMENTATION),
        ("198.51.100.1", AddressClass.DOCUMENTATION),
        ("203.0.113.1", AddressClass.DOCUMENTATION),
        ("198.18.0.1", AddressClass.BENCHMARKING),
        ("198.19.255.255", AddressClass.BENCHMARKING),
        ("2606:4700::1111", AddressClass.PUBLIC),
        ("::1", AddressClass.LOOPBACK),
        ("::", AddressClass.UNSPECIFIED),
        ("::ffff:127.0.0.1", AddressClass.LOOPBACK),
        ("::ffff:8.8.8.8", AddressClass.PUBLIC),
        ("::ffff:169.254.169.254", AddressClass.METADATA),
        ("::ffff:0:10.0.0.1", AddressClass.PRIVATE),  # IPv4-translated
        ("::127.0.0.1", AddressClass.LOOPBACK),  # IPv4-compatible
        ("::8.8.8.8", AddressClass.RESERVED),  # compatible form is deprecated even for public addresses
        ("64:ff9b::7f00:1", AddressClass.LOOPBACK),  # NAT64
        ("64:ff9b::808:808", AddressClass.PUBLIC),
        ("64:ff9b:1::1", AddressClass.PRIVATE),
        ("2002:7f00:1::", AddressClass.LOOPBACK),  # 6to4
        ("2002:a00:1::", AddressClass.PRIVATE),
        ("2002:808:808::", AddressClass.PUBLIC),
        ("2001::1", AddressClass.RESERVED),  # Teredo
        ("2001:2::1", AddressClass.BENCHMARKING),
        ("2001:db8::1", AddressClass.DOCUMENTATION),
        ("3fff::1", AddressClass.DOCUMENTATION),
        ("100::1", AddressClass.RESERVED),
        ("fc00::1", AddressClass.PRIVATE),
        ("fd00:ec2::254", AddressClass.METADATA),
        ("fec0::1", AddressClass.PRIVATE),
        ("fe80::1", AddressClass.LINK_LOCAL),
        ("fe80::1%eth0", AddressClass.LINK_LOCAL),
        ("ff02::1", AddressClass.MULTICAST),
        ("4000::1", AddressClass.RESERVED),  # outside 2000::/3 global unicast
    ],
)
def test_classify_address(address: str, expected: AddressClass) -> None:
    assert classify_address(ipaddress.ip_address(address)) is expected


def test_private_networks_setting_opens_only_private_use_classes() -> None:
    opened = {c for c in AddressClass if address_allowed(c, allow_private_networks=True)}
    assert opened == {
        AddressClass.PUBLIC,
        AddressClass.LOOPBACK,
        AddressClass.PRIVATE,
        AddressClass.LINK_LOCAL,
        AddressClass.CGNAT,
    }
    assert {c for c in AddressClass if address_allowed(c, allow_private_networks=False)} == {
        AddressClass.PUBLIC
    }


@pytest.mark.parametrize(
    ("host", "address", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("2130706433", "127.0.0.1", False),
        ("0x7f000001", "127.0.0.1", False),
        ("0x7f.1", "127.0.0.1", False),
        ("017700000001", "127.0.0.1", False),
        ("0177.0.0.1", "127.0.0.1", False),
        ("127.1", "127.0.0.1", False),
        ("127.0.1", "127.0.0.1", False),
        ("127.0.0.1.", "127.0.0.1", False),
        ("0", "0.0.0.0", False),
        ("0x", "0.0.0.0", False),
        ("[::1]", "::1", True),
        ("::ffff:127.0.0.1", "::ffff:7f00:1", True),
        ("fe80::1%25eth0", "fe80::1%eth0", True),
    ],
)
def test_parse_host_literal_reads_every_spelling(host: str, address: str, canonical: bool) -> None:
    literal = parse_host_literal(host)
    assert literal is not None
    assert literal.address == ipaddress.ip_address(address)
    assert literal.canonical is canonical


@pytest.mark.parametrize("host", ["example.com", "localhost", "a1.b2", "1a.example", "xn--nxasmq6b.com"])
def test_names_are_not_literals(host: str) -> None:
    assert parse_host_literal(host) is None


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.1.1.1", "1.2.3.256", "4294967296", "example.09", "[::1::]"]
)
def test_numeric_looking_garbage_is_invalid(host: str) -> None:
    with pytest.raises(InvalidMediaURL):
        parse_host_literal(host)


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("media.example.com", ["media.example.com"], True),
        ("MEDIA.example.com.", ["media.example.com"], True),
        ("evil.media.example.com", ["media.example.com"], False),
        ("a.cdn.example.com", ["*.cdn.example.com"], True),
        ("cdn.example.com", ["*.cdn.example.com"], False),
        ("evilcdn.example.com", [".cdn.example.com"], False),
        ("a.b.cdn.example.com", [".cdn.example.com"], True),
    ],
)
def test_domain_allowlist(host: str, allowed: list[str], expected: bool) -> None:
    assert domain_allowed(host, allowed) is expected


def _resolver(table: dict[str, list[str]], calls: list[str]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise MediaFetchError(f"unknown {host}")
        return table[host]

    return resolve


async def test_resolve_checks_every_answer_and_literals_skip_dns() -> None:
    calls: list[str] = []
    guard = DestinationGuard(
        resolver=_resolver(
            {"ok.test": ["93.184.216.34", "2606:4700::1"], "mixed.test": ["8.8.8.8", "10.0.0.1"]}, calls
        )
    )
    assert [str(a) for a in await guard.resolve("ok.test", 443)] == ["93.184.216.34", "2606:4700::1"]
    with pytest.raises(MediaURLRefused, match=r"10\.0\.0\.1 is private"):
        await guard.resolve("mixed.test", 443)
    assert [str(a) for a in await guard.resolve("8.8.8.8", 80)] == ["8.8.8.8"]
    with pytest.raises(MediaURLRefused):
        await guard.resolve("localhost", 80)  # refused by name, before any resolver call
    assert calls == ["ok.test", "mixed.test"]


def test_check_url_is_pure_and_uses_the_same_parser_as_the_client() -> None:
    guard = DestinationGuard(resolver=_resolver({}, []))
    assert str(guard.check_url("https://Example.COM/a.png?x=1")) == "https://example.com/a.png?x=1"
    with pytest.raises(MediaURLRefused):
        guard.check_url("http://example.com@127.0.0.1/")
    with pytest.raises(InvalidMediaURL):
        guard.check_url("ftp://example.com/")


# --- property tests (2,400 examples in all) --------------------------------------------------------------

URLISH_ALPHABET = st.sampled_from(
    [*list("abcxyz0123456789.:/@[]%#?&=+-_~\\ \t\x00xX"), "::", "0x", "%25", "ffff", "127", ".."]
)
URLISH = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda scheme, body: scheme + body,
        st.sampled_from(["http://", "https://", "HTTP://", "http:", "file://", "data:", "ftp://", "", "//"]),
        st.lists(URLISH_ALPHABET, max_size=30).map("".join),
    ),
    st.builds(
        lambda parts, sep: "http://" + sep.join(parts) + "/",
        st.lists(
            st.one_of(
                st.integers(0, 2**33).map(str),
                st.integers(0, 2**33).map(hex),
                st.sampled_from(["0", "00", "0x", "017"]),
            ),
            min_size=1,
            max_size=6,
        ),
        st.sampled_from([".", ":", ".."]),
    ),
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=URLISH, allow_private=st.booleans())
def test_check_url_and_resolve_raise_only_typed_errors(url: str, allow_private: bool) -> None:
    """URL parsing, host spelling, allowlist and the address check (DNS stubbed): a URL either passes with
    a host that the guard also accepts at connect time, or is refused with a ``MediaError``."""
    guard = DestinationGuard(
        allow_private_networks=allow_private,
        allowed_domains=("example.com", "*.media.test") if len(url) % 2 else (),
        resolver=_resolver({}, []),
    )
    try:
        parsed = guard.check_url(url)
    except MediaError:
        return
    host = parsed.raw_host.decode("ascii")
    try:
        addresses = asyncio.run(guard.resolve(host, parsed.port or 80))
    except MediaError:
        return
    for address in addresses:
        assert address_allowed(classify_address(address), allow_private_networks=allow_private)


@settings(max_examples=500, deadline=None)
@given(host=st.one_of(st.text(max_size=40), URLISH_ALPHABET, st.ip_addresses().map(str)))
def test_host_literal_parsing_is_total(host: str) -> None:
    try:
        literal = parse_host_literal(host)
    except InvalidMediaURL:
        return
    if literal is not None:
        classify_address(literal.address)  # total: every address has a class


@settings(max_examples=400, deadline=None)
@given(address=st.ip_addresses())
def test_embedded_ipv4_is_never_more_permissive_than_the_ipv4_itself(address: ipaddress._BaseAddress) -> None:
    cls = classify_address(address)  # type: ignore[arg-type]
    if isinstance(address, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(address))
        for embedded in (mapped, nat64):
            assert classify_address(embedded) is cls or cls is AddressClass.PUBLIC


DATA_HEADERS = st.sampled_from(
    [
        "data:image/png;base64,",
        "data:image/png,",
        "data:;base64,",
        "data:text/html;base64,",
        "data:audio/wav;base64,",
        "data:",
        "DATA:IMAGE/JPEG;BASE64,",
        "data:image/png;base64;charset=x,",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    header=DATA_HEADERS,
    payload=st.one_of(
        st.text(max_size=60), st.binary(max_size=45).map(lambda b: base64.b64encode(b).decode())
    ),
    modality=st.sampled_from(["image", "video", "audio"]),
)
def test_data_url_parsing_raises_only_typed_errors(header: str, payload: str, modality: str) -> None:
    try:
        data, _ = parse_data_url(header + payload, modality=modality, max_bytes=32)
    except MediaError:
        return
    assert 0 < len(data) <= 32


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.one_of(
        st.text(max_size=30),
        st.lists(
            st.sampled_from(["..", "a", "link", "pipe", "%2e%2e", "%00", "/", "//", "ok.png"]), max_size=6
        ).map("/".join),
    )
)
def test_file_urls_raise_only_typed_errors_and_never_leave_the_jail(
    tmp_path_factory: pytest.TempPathFactory, suffix: str
) -> None:
    root = _jail(tmp_path_factory)
    url = f"file://{root}/{suffix}"
    try:
        data = read_jailed_file(url, jail=str(root), max_bytes=1024)
    except MediaError:
        return
    assert data == b"inside"  # the only regular file reachable inside the jail
    assert str(file_url_path(url)).startswith(str(root)) or ".." in suffix


_JAILS: dict[str, Path] = {}


def _jail(factory: pytest.TempPathFactory) -> Path:
    """One jail for all examples (hypothesis reuses the function-scoped fixture, so build it once here)."""
    if "root" not in _JAILS:
        base = factory.mktemp("jail")
        root = base / "root"
        (root / "a").mkdir(parents=True)
        (root / "ok.png").write_bytes(b"inside")
        (base / "secret").write_bytes(b"outside")
        (root / "link").symlink_to(base / "secret")
        (root / "a" / "link").symlink_to(base)
        os.mkfifo(root / "pipe")
        _JAILS["root"] = root
    return _JAILS["root"]
