"""Where media may be fetched from: the SSRF guard.

Two halves, kept apart so that each can be tested on its own:

* pure classification — ``parse_host_literal`` reads every spelling of an IP address that a resolver or a
  browser would accept (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``, bracketed IPv6 with a zone),
  and ``classify_address`` puts an address in an ``AddressClass`` (IPv4-mapped, -compatible, -translated,
  6to4 and NAT64 forms are unwrapped and judged by the IPv4 address they carry);
* ``DestinationGuard`` — applies a policy: ``check_url`` (no I/O) before every request and every redirect
  hop, and ``resolve`` which the connector's transport calls at connect time, so the socket goes to exactly
  the addresses that were checked (no DNS-rebinding window between the check and the connection).

The tables of special ranges live in ``triptych_contract.networks``, shared with the operator's egress
NetworkPolicy, so the network refuses what this guard refuses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx
from triptych_contract.networks import (
    IPV4_TABLE,
    IPV6_GLOBAL_UNICAST,
    IPV6_SIX_TO_FOUR,
    IPV6_TABLE,
    METADATA_ADDRESSES,
    AddressClass,
    address_allowed,
)

from triptych_workers.media.errors import InvalidMediaURL, MediaFetchError, MediaURLRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``async (host, port) -> addresses``: the textual IP addresses ``host`` resolves to (IPv4 or IPv6)."""


_V6 = ipaddress.IPv6Network
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in METADATA_ADDRESSES)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "instance-data.ec2.internal"})

_MAPPED = _V6("::ffff:0:0/96")
_TRANSLATED = _V6("::ffff:0:0:0/96")
_COMPATIBLE = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = IPV6_SIX_TO_FOUR


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, bool] | None:
    """The IPv4 address an IPv6 address carries, and whether the form itself is routable on the internet.

    ``::ffff:127.0.0.1`` reaches 127.0.0.1 through a dual-stack socket; ``2002:7f00:1::`` and
    ``64:ff9b::7f00:1`` reach it through a 6to4 relay or NAT64 gateway, so each is judged by what it carries.
    """
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _MAPPED or address in _TRANSLATED or address in _NAT64:
        return low32, True
    if address in _COMPATIBLE:  # deprecated (RFC 4291); never a real destination
        return low32, False
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF), True
    return None


def classify_address(address: IPAddress) -> AddressClass:
    """Classify one address. Pure; total over every IPv4 and IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address):
        return _classify_ipv6(address)
    if address in _METADATA_ADDRESSES:
        return AddressClass.METADATA
    return next((cls for net, cls in IPV4_TABLE if address in net), AddressClass.PUBLIC)


def _classify_ipv6(address: ipaddress.IPv6Address) -> AddressClass:
    if address.scope_id is not None:  # fe80::1%eth0: the zone does not change what the address is
        address = ipaddress.IPv6Address(int(address))
    if address in _METADATA_ADDRESSES:
        return AddressClass.METADATA
    embedded = _embedded_ipv4(address) if int(address) > 1 else None  # :: and ::1 are their own classes
    if embedded is not None:
        inner, routable = embedded
        inner_class = classify_address(inner)
        return AddressClass.RESERVED if inner_class is AddressClass.PUBLIC and not routable else inner_class
    fallback = AddressClass.PUBLIC if address in IPV6_GLOBAL_UNICAST else AddressClass.RESERVED
    return next((cls for net, cls in IPV6_TABLE if address in net), fallback)


# --- host spellings -------------------------------------------------------------------------------------

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCT_DIGITS = frozenset("01234567")
_DEC_DIGITS = frozenset("0123456789")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


def _ipv4_number(part: str) -> int | None:
    """One dotted part as WHATWG and ``inet_aton`` read it: ``0x`` hex, leading-zero octal, else decimal."""
    if part == "":
        return None
    radix, digits, alphabet = 10, part, _DEC_DIGITS
    if part[:2] in ("0x", "0X"):
        radix, digits, alphabet = 16, part[2:], _HEX_DIGITS
    elif len(part) > 1 and part[0] == "0":
        radix, digits, alphabet = 8, part[1:], _OCT_DIGITS
    if digits == "":
        return 0
    if not set(digits) <= alphabet or len(digits) > 64:
        return None
    return int(digits, radix)


def _ends_in_number(labels: list[str]) -> bool:
    last = labels[-1]
    return last != "" and (set(last) <= _DEC_DIGITS or _ipv4_number(last) is not None)


@dataclass(frozen=True)
class HostLiteral:
    """An IP address written as a URL host; ``canonical`` is False for spellings like ``0x7f.1``."""

    address: IPAddress
    canonical: bool


def parse_host_literal(host: str) -> HostLiteral | None:
    """Read ``host`` as an IP address literal, or return None for a DNS name.

    A host whose last label is a number must be a valid IPv4 address (the WHATWG rule): ``1.2.3.4.5`` and
    ``256.1.1.1`` raise ``InvalidMediaURL`` instead of going to DNS, where a resolver might read them its own
    way.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            v6 = ipaddress.IPv6Address(host.replace("%25", "%"))
        except ValueError as exc:
            raise InvalidMediaURL(f"invalid IPv6 host {host!r}", param="url") from exc
        return HostLiteral(v6, canonical=True)
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not _ends_in_number(labels):
        return None
    numbers = [_ipv4_number(label) for label in labels]
    if len(labels) > 4 or any(n is None for n in numbers):
        raise InvalidMediaURL(f"host {host!r} looks numeric but is not an IPv4 address", param="url")
    parts = [n for n in numbers if n is not None]
    if any(n > 255 for n in parts[:-1]) or parts[-1] >= 256 ** (5 - len(parts)):
        raise InvalidMediaURL(f"host {host!r} is an out-of-range IPv4 address", param="url")
    value = parts[-1]
    for i, n in enumerate(parts[:-1]):
        value += n << (8 * (3 - i))
    v4 = ipaddress.IPv4Address(value)
    return HostLiteral(v4, canonical=host == str(v4))


def normalize_domain(host: str) -> str:
    """Lower-case, one trailing dot removed: the form that allowlists and name checks compare."""
    host = host.lower()
    return host[:-1] if host.endswith(".") and len(host) > 1 else host


def domain_allowed(host: str, allowed_domains: Iterable[str]) -> bool:
    """``example.com`` matches only that host; ``*.example.com`` (or ``.example.com``) its subdomains."""
    host = normalize_domain(host)
    for entry in allowed_domains:
        pattern = normalize_domain(entry.strip())
        if pattern.startswith("*."):
            pattern = pattern[1:]
        if pattern.startswith("."):
            if host.endswith(pattern) and len(host) > len(pattern):
                return True
        elif host == pattern:
            return True
    return False


def _refuse_address(host: str, address: IPAddress, cls: AddressClass) -> MediaURLRefused:
    via = "" if host == str(address) else f" ({host!r} -> {address})"
    return MediaURLRefused(f"destination {address} is {cls.value}{via}", param="url")


# --- the guard ------------------------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The real resolver: the event loop's ``getaddrinfo`` (runs in the loop's default executor)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise MediaFetchError(f"cannot resolve {host!r}: {exc}", param="url") from exc
    return [str(info[4][0]) for info in infos]


class DestinationGuard:
    """Applies one policy to URLs (``check_url``, no I/O) and to resolved addresses (``resolve``).

    ``resolver`` is injectable so that tests can map names to addresses without DNS; production uses
    ``system_resolver``.
    """

    def __init__(
        self,
        *,
        allowed_domains: Sequence[str] = (),
        allow_private_networks: bool = False,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowed_domains = tuple(normalize_domain(d) for d in allowed_domains if d.strip())
        self.allow_private_networks = allow_private_networks
        self._resolver = resolver

    def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """Parse with httpx's own parser (the one that will send the request, so no parser differential)
        and refuse what the policy does not allow. Returns the parsed URL."""
        if isinstance(url, str):
            try:
                parsed = httpx.URL(url)
            except (httpx.InvalidURL, ValueError, TypeError, UnicodeError) as exc:
                raise InvalidMediaURL(f"cannot parse media URL: {exc}", param="url") from exc
        else:
            parsed = url
        if parsed.scheme not in ("http", "https"):
            raise InvalidMediaURL(f"unsupported URL scheme {parsed.scheme!r} for a remote fetch", param="url")
        if parsed.userinfo:
            raise MediaURLRefused("credentials in media URLs are not allowed", param="url")
        port = parsed.port
        if port is not None and not 0 < port < 65536:
            raise InvalidMediaURL(f"invalid port {port}", param="url")
        try:
            host = parsed.raw_host.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidMediaURL("host is not ASCII after IDNA encoding", param="url") from exc
        self.check_host(host)
        return parsed

    def check_host(self, host: str) -> None:
        """The host-level half of ``check_url``: spelling, name rules, allowlist, literal address class."""
        if host == "":
            raise InvalidMediaURL("media URL has no host", param="url")
        literal = parse_host_literal(host)
        if literal is None:
            name = normalize_domain(host)
            if not _HOSTNAME.match(name):
                raise InvalidMediaURL(f"invalid host name {host!r}", param="url")
            if not self.allow_private_networks and (name == "localhost" or name.endswith(".localhost")):
                raise MediaURLRefused(f"host {host!r} is loopback", param="url")
            if name in _METADATA_NAMES:
                raise MediaURLRefused(f"host {host!r} is a cloud metadata endpoint", param="url")
            if self.allowed_domains and not domain_allowed(name, self.allowed_domains):
                raise MediaURLRefused(f"host {host!r} is not in the allowed domains", param="url")
            return
        cls = classify_address(literal.address)
        if not address_allowed(cls, allow_private_networks=self.allow_private_networks):
            raise _refuse_address(host, literal.address, cls)
        if not literal.canonical:
            raise MediaURLRefused(
                f"host {host!r} is a non-canonical spelling of {literal.address}", param="url"
            )
        if self.allowed_domains and not domain_allowed(host, self.allowed_domains):
            raise MediaURLRefused(f"host {host!r} is not in the allowed domains", param="url")

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` once and check every address; the caller connects only to what this returns.

        All addresses must pass, not just one: a name that answers with one public and one private address
        is hostile or misconfigured either way.
        """
        self.check_host(host)
        literal = parse_host_literal(host)
        if literal is not None:
            return [literal.address]
        answers = await self._resolver(host, port)
        addresses: list[IPAddress] = []
        for text in answers:
            try:
                address = ipaddress.ip_address(text)
            except ValueError as exc:
                raise MediaFetchError(f"resolver returned a non-address {text!r}", param="url") from exc
            cls = classify_address(address)
            if not address_allowed(cls, allow_private_networks=self.allow_private_networks):
                raise _refuse_address(host, address, cls)
            addresses.append(address)
        if not addresses:
            raise MediaFetchError(f"{host!r} resolved to no address", param="url")
        return addresses
