"""Which destinations are public: one table for the frontend's SSRF guard (``media/netpolicy.py`` in the
workers classifies each address a media URL resolves to) and the operator's egress NetworkPolicy (which
turns the same table into ``ipBlock`` rules), so the network layer refuses what the guard refuses.

Tables are written out rather than taken from ``ipaddress.is_global``: its answers changed between Python
patch releases, and a security boundary should not move with an interpreter upgrade. Standard library only
(this is the contract package).
"""

from __future__ import annotations

import functools
import ipaddress
from enum import StrEnum
from typing import Final


class AddressClass(StrEnum):
    """What kind of destination an address is. Only ``PUBLIC`` is fetched from by default."""

    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    LINK_LOCAL = "link-local"
    CGNAT = "shared address space (CGNAT)"
    METADATA = "cloud metadata endpoint"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    DOCUMENTATION = "documentation"
    BENCHMARKING = "benchmarking"
    RESERVED = "reserved"


# Classes that ``allow_private_networks`` opens (a cluster-internal media store, loopback in tests). The rest
# are never a sensible place to fetch media from: metadata endpoints hold credentials; 0.0.0.0 and :: reach
# the local host on Linux; multicast, documentation, benchmarking and reserved ranges are not real servers.
PRIVATE_USE_CLASSES: Final = frozenset(
    {AddressClass.LOOPBACK, AddressClass.PRIVATE, AddressClass.LINK_LOCAL, AddressClass.CGNAT}
)

# Well-known cloud metadata endpoints (AWS IMDS and ECS/EKS credentials, GCP, Azure, Alibaba Cloud).
METADATA_ADDRESSES: Final = (
    "169.254.169.254",
    "169.254.170.2",
    "169.254.170.23",
    "100.100.100.200",
    "fd00:ec2::254",
    "fd00:ec2::23",
)

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins (IANA IPv4 special-purpose registry, plus multicast and class E).
IPV4_TABLE: Final[tuple[tuple[ipaddress.IPv4Network, AddressClass], ...]] = (
    (_V4("0.0.0.0/8"), AddressClass.UNSPECIFIED),
    (_V4("127.0.0.0/8"), AddressClass.LOOPBACK),
    (_V4("10.0.0.0/8"), AddressClass.PRIVATE),
    (_V4("172.16.0.0/12"), AddressClass.PRIVATE),
    (_V4("192.168.0.0/16"), AddressClass.PRIVATE),
    (_V4("100.64.0.0/10"), AddressClass.CGNAT),
    (_V4("169.254.0.0/16"), AddressClass.LINK_LOCAL),
    (_V4("192.0.0.0/24"), AddressClass.RESERVED),
    (_V4("192.0.2.0/24"), AddressClass.DOCUMENTATION),
    (_V4("198.51.100.0/24"), AddressClass.DOCUMENTATION),
    (_V4("203.0.113.0/24"), AddressClass.DOCUMENTATION),
    (_V4("198.18.0.0/15"), AddressClass.BENCHMARKING),
    (_V4("192.88.99.0/24"), AddressClass.RESERVED),
    (_V4("224.0.0.0/4"), AddressClass.MULTICAST),
    (_V4("240.0.0.0/4"), AddressClass.RESERVED),
)

# IPv6 after the IPv4-embedding forms have been unwrapped (the guard's ``_embedded_ipv4``).
IPV6_TABLE: Final[tuple[tuple[ipaddress.IPv6Network, AddressClass], ...]] = (
    (_V6("::/128"), AddressClass.UNSPECIFIED),
    (_V6("::1/128"), AddressClass.LOOPBACK),
    (_V6("64:ff9b:1::/48"), AddressClass.PRIVATE),
    (_V6("100::/64"), AddressClass.RESERVED),
    (_V6("2001:db8::/32"), AddressClass.DOCUMENTATION),
    (_V6("3fff::/20"), AddressClass.DOCUMENTATION),
    (_V6("2001:2::/48"), AddressClass.BENCHMARKING),
    (_V6("2001::/23"), AddressClass.RESERVED),  # IETF protocol assignments, Teredo included
    (_V6("5f00::/16"), AddressClass.RESERVED),  # SRv6 SIDs
    (_V6("fc00::/7"), AddressClass.PRIVATE),
    (_V6("fec0::/10"), AddressClass.PRIVATE),  # deprecated site-local
    (_V6("fe80::/10"), AddressClass.LINK_LOCAL),
    (_V6("ff00::/8"), AddressClass.MULTICAST),
)
# Outside this, an IPv6 address that no table entry names is reserved.
IPV6_GLOBAL_UNICAST: Final = _V6("2000::/3")
# Inside global unicast, a form that carries an IPv4 address (judged by it in the guard).
IPV6_SIX_TO_FOUR: Final = _V6("2002::/16")


def address_allowed(cls: AddressClass, *, allow_private_networks: bool) -> bool:
    """Whether a policy lets a fetch connect to an address of this class."""
    return cls is AddressClass.PUBLIC or (allow_private_networks and cls in PRIVATE_USE_CLASSES)


IpBlock = tuple[str, tuple[str, ...]]
"""A NetworkPolicy ``ipBlock``: (cidr, except)."""


@functools.cache  # two possible answers, asked on every reconcile of every MultimodalDeployment
def allowed_ip_blocks(*, allow_private_networks: bool) -> tuple[IpBlock, ...]:
    """The destinations ``address_allowed`` permits, as NetworkPolicy ipBlocks.

    A NetworkPolicy cannot look inside an address, so IPv6 forms that carry an IPv4 address (6to4,
    IPv4-mapped, NAT64), which the guard judges by that IPv4 address, are left out entirely: stricter than
    the guard, never looser. Everything else matches the guard exactly (``test_networks`` checks both)."""
    meta_v4 = [_V4(a) for a in METADATA_ADDRESSES if ":" not in a]
    meta_v6 = [_V6(a) for a in METADATA_ADDRESSES if ":" in a]

    def refused(cls: AddressClass) -> bool:
        return not address_allowed(cls, allow_private_networks=allow_private_networks)

    v4_except = [net for net, cls in IPV4_TABLE if refused(cls)]
    v4_except += [m for m in meta_v4 if not any(m.subnet_of(net) for net in v4_except)]
    blocks: list[IpBlock] = [("0.0.0.0/0", tuple(str(net) for net in v4_except))]
    v6_except = [net for net, cls in IPV6_TABLE if net.subnet_of(IPV6_GLOBAL_UNICAST) and refused(cls)]
    blocks.append((str(IPV6_GLOBAL_UNICAST), tuple(str(net) for net in [*v6_except, IPV6_SIX_TO_FOUR])))
    for net, cls in IPV6_TABLE:
        if not net.subnet_of(IPV6_GLOBAL_UNICAST) and not refused(cls):
            blocks.append((str(net), tuple(str(m) for m in meta_v6 if m.subnet_of(net))))
    return tuple(blocks)


__all__ = [
    "IPV4_TABLE",
    "IPV6_GLOBAL_UNICAST",
    "IPV6_SIX_TO_FOUR",
    "IPV6_TABLE",
    "METADATA_ADDRESSES",
    "PRIVATE_USE_CLASSES",
    "AddressClass",
    "IpBlock",
    "address_allowed",
    "allowed_ip_blocks",
]
