"""The egress NetworkPolicy's ipBlocks (``triptych_contract.networks.allowed_ip_blocks``) against the SSRF
guard (``media.netpolicy.classify_address`` + ``address_allowed``): the network must permit exactly what the
guard permits, except IPv6 forms carrying an IPv4 address, which it refuses wholesale (stricter, never
looser)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from triptych_contract.networks import METADATA_ADDRESSES, IpBlock, address_allowed, allowed_ip_blocks
from triptych_workers.media.netpolicy import classify_address

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
EMBEDDING_V4 = [
    ipaddress.ip_network(n)
    for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96", "2002::/16")
]


def permitted(blocks: Sequence[IpBlock], address: IPAddress) -> bool:
    return any(
        address.version == (net := ipaddress.ip_network(cidr)).version
        and address in net
        and not any(address in ipaddress.ip_network(e) for e in excepts)
        for cidr, excepts in blocks
    )


def guard_allows(address: IPAddress, *, allow_private: bool) -> bool:
    return address_allowed(classify_address(address), allow_private_networks=allow_private)


@settings(max_examples=3000, deadline=None)
@given(st.ip_addresses(v=4), st.booleans())
def test_ipv4_the_network_permits_exactly_what_the_guard_permits(address: IPAddress, allow: bool) -> None:
    blocks = allowed_ip_blocks(allow_private_networks=allow)
    assert permitted(blocks, address) == guard_allows(address, allow_private=allow)


@settings(max_examples=3000, deadline=None)
@given(st.ip_addresses(v=6), st.booleans())
def test_ipv6_the_network_is_never_looser_than_the_guard(address: IPAddress, allow: bool) -> None:
    blocks = allowed_ip_blocks(allow_private_networks=allow)
    if int(address) > 1 and any(address in net for net in EMBEDDING_V4):  # :: and ::1 are their own
        assert not permitted(blocks, address)
    else:
        assert permitted(blocks, address) == guard_allows(address, allow_private=allow)


@pytest.mark.parametrize(
    ("address", "allow", "expected"),
    [
        ("8.8.8.8", False, True),
        ("10.1.2.3", False, False),
        ("10.1.2.3", True, True),
        ("169.254.169.254", True, False),  # metadata stays closed when private networks are opened
        ("100.100.100.200", True, False),
        ("fd00:ec2::254", True, False),
        ("fd12::1", True, True),
        ("2606:4700::1111", False, True),
        ("::1", False, False),
        ("224.0.0.1", True, False),
    ],
)
def test_landmarks(address: str, allow: bool, expected: bool) -> None:
    """Hand-picked cases, so a table both sides got wrong the same way still fails here."""
    assert (
        permitted(allowed_ip_blocks(allow_private_networks=allow), ipaddress.ip_address(address)) is expected
    )


def test_every_metadata_address_is_refused_either_way() -> None:
    for allow in (False, True):
        blocks = allowed_ip_blocks(allow_private_networks=allow)
        assert not any(permitted(blocks, ipaddress.ip_address(a)) for a in METADATA_ADDRESSES)
