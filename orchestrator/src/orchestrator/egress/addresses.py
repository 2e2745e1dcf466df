"""Addresses no job may reach through the gateway, whatever name led there.

A job that may reach ``api.example`` must not reach the host, the orchestrator, the Docker
bridge, another job, the LAN or the cloud's metadata service because that name (or a record an
attacker controls) resolves there. So an address is refused when it is loopback, unspecified,
private (RFC 1918, IPv6 unique-local), shared (CGNAT, RFC 6598), link-local, multicast, a cloud
metadata address, or anything else not globally routable (documentation, benchmarking and
reserved ranges). IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64)
are judged by the address they embed.
"""

from __future__ import annotations

import ipaddress

from orchestrator.egress.policy import IpAddress

# AWS, GCP, Azure, OpenStack and most others answer on 169.254.169.254; AWS also on
# fd00:ec2::254 (IPv6 instances) and Alibaba on 100.100.100.200. Named first, so the log says so.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_PRIVATE = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
)


def embedded_ipv4(address: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
        if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_refusal(address: IpAddress) -> str | None:
    """Why no job may connect to ``address`` (e.g. "a loopback address"), None if it may."""
    inner = embedded_ipv4(address)
    if address in METADATA_ADDRESSES or inner in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if inner.is_loopback:
        return "a loopback address"
    if inner.is_unspecified:
        return "an unspecified address"
    if inner.is_link_local:
        return "a link-local address"
    if inner.is_multicast:
        return "a multicast address"
    if any(inner in network for network in _PRIVATE if network.version == inner.version):
        return "a private address"
    if inner in _CGNAT:
        return "a shared (CGNAT) address"
    if not inner.is_global:
        return "a reserved address"
    return None


# Refusals an operator may lift by listing the literal address (an internal package mirror
# at 10.0.0.5): never loopback, link-local (the metadata service), multicast or unspecified.
LITERAL_OVERRIDABLE = frozenset({"a private address", "a shared (CGNAT) address"})
