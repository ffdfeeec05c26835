"""Client addresses and allowlists (invariant 3). Pure functions, no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(cidr: str) -> IPNetwork:
    """Parse a CIDR (or a bare address) strictly enough to reject typos.

    Host bits are allowed (``10.0.0.7/24`` means ``10.0.0.0/24``), since people paste them.
    A zone id (``fe80::1%eth0``) is refused: it names an interface of one host, so in an
    allowlist it would mean nothing, or silently never match. A /0 is the whole family
    (``0.0.0.0/0``: every IPv4 address), an explicit "allow all" that the caller can see.
    Raises ``ValueError`` with a readable reason.
    """
    text = cidr.strip()
    if not text or len(text) > 64 or not text.isascii():
        raise ValueError(f"{cidr!r} is not an IPv4 or IPv6 address or CIDR")
    if "%" in text:
        raise ValueError(f"{cidr!r} has a zone id (%...); allowlists take addresses without one")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{cidr!r} is not an IPv4 or IPv6 address or CIDR") from exc
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        mapped = network.network_address.ipv4_mapped
        prefix = max(network.prefixlen - 96, 0)
        return ipaddress.IPv4Network(f"{mapped}/{prefix}", strict=False)
    return network


def parse_address(text: str) -> IPAddress | None:
    """An address with IPv4-mapped IPv6 unwrapped to IPv4; ``None`` if it is not an address."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ip_allowed(address: IPAddress | None, allowlist: Sequence[IPNetwork]) -> bool:
    """True when the allowlist is empty (any address) or one of its networks holds the address."""
    if not allowlist:
        return True
    return address is not None and _in_any(address, allowlist)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: Iterable[IPNetwork]
) -> IPAddress | None:
    """The address a request really came from.

    The socket peer is the client unless the peer is a trusted proxy. Only then is
    ``X-Forwarded-For`` read, from the right, skipping further trusted proxies; the first
    untrusted hop is the client. A spoofed header from an untrusted peer is ignored.
    """
    proxies = list(trusted_proxies)
    address = parse_address(peer) if peer else None
    if address is None or not forwarded_for or not _in_any(address, proxies):
        return address
    hops = [hop for hop in (part.strip() for part in forwarded_for.split(",")) if hop]
    for hop in reversed(hops):
        hop_address = parse_address(hop)
        if hop_address is None:
            return address  # garbage in the chain: trust nothing beyond the last good hop
        address = hop_address
        if not _in_any(address, proxies):
            return address
    return address


def _in_any(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def request_scheme(
    scheme: str, peer: str | None, forwarded_proto: str | None, trusted_proxies: Iterable[IPNetwork]
) -> str:
    """``http`` or ``https`` as the browser sees it: the connection's own scheme, or the
    ``X-Forwarded-Proto`` a trusted proxy (the TLS terminator) sets. The header from anyone
    else is ignored, as ``X-Forwarded-For`` is."""
    address = parse_address(peer) if peer else None
    if forwarded_proto and address is not None and _in_any(address, list(trusted_proxies)):
        first = forwarded_proto.split(",")[0].strip().lower()
        if first in ("http", "https"):
            return first
    return scheme
