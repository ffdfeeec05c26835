"""Client addresses and allowlists: invariant 3, a token opens one stream from its allowed IPs
only. The client is the socket peer unless that peer is a trusted proxy."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest

from core.network import client_address, ip_allowed, parse_address, parse_network

PROXIES = [IPv4Network("10.0.0.0/8"), IPv6Network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # untrusted peer: the header is ignored, however it looks
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.7", "203.0.113.9"),
        ("203.0.113.9", "10.0.0.1", "203.0.113.9"),
        ("203.0.113.9", "198.51.100.7, 10.0.0.2", "203.0.113.9"),
        ("2001:db8::9", "198.51.100.7", "2001:db8::9"),
        # trusted peer without a header: the proxy itself
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", " , ,", "10.0.0.1"),
        # trusted peer: the rightmost untrusted hop wins; what the client wrote on the left is
        # not believed
        ("10.0.0.1", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", " 198.51.100.7 ", "198.51.100.7"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.7, 10.0.0.3, 10.9.9.9", "198.51.100.7"),
        ("10.0.0.1", "1.1.1.1,198.51.100.7,,10.0.0.3", "198.51.100.7"),
        # every hop a trusted proxy: the leftmost one
        ("10.0.0.1", "10.0.0.2, 10.0.0.3", "10.0.0.2"),
        # garbage: nothing left of it is believed; the last good hop stands
        ("10.0.0.1", "1.1.1.1, not-an-ip", "10.0.0.1"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.7:5555", "10.0.0.1"),
        ("10.0.0.1", "1.1.1.1, garbage, 10.0.0.3", "10.0.0.3"),
        ("10.0.0.1", "garbage, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", "unknown", "10.0.0.1"),
        # IPv6 proxies and hops
        ("fd00::1", "2001:db8::7", "2001:db8::7"),
        ("fd00::1", "[2001:db8::7]", "2001:db8::7"),
        ("fd00::1", "198.51.100.7, fd00::2", "198.51.100.7"),
        ("10.0.0.1", "2001:db8::7, fd00::2", "2001:db8::7"),
        # IPv4-mapped IPv6 is IPv4: as a peer and as a hop
        ("::ffff:10.0.0.5", "198.51.100.7", "198.51.100.7"),
        ("::ffff:203.0.113.9", "198.51.100.7", "203.0.113.9"),
        ("10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),
        ("10.0.0.1", "1.1.1.1, ::ffff:10.0.0.3", "1.1.1.1"),
    ],
)
def test_client_address(peer: str, forwarded_for: str | None, expected: str) -> None:
    assert client_address(peer, forwarded_for, PROXIES) == ip_address(expected)


@pytest.mark.parametrize("peer", [None, "", "testclient", "not-an-ip"])
def test_client_address_without_a_usable_peer_is_none(peer: str | None) -> None:
    assert client_address(peer, "198.51.100.7", PROXIES) is None


def test_no_trusted_proxies_means_the_header_is_never_read() -> None:
    assert client_address("10.0.0.1", "198.51.100.7", []) == IPv4Address("10.0.0.1")


def test_trusted_proxies_may_be_any_iterable() -> None:
    proxies = (network for network in PROXIES)
    assert client_address("10.0.0.1", "198.51.100.7", proxies) == IPv4Address("198.51.100.7")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.7", IPv4Address("198.51.100.7")),
        (" 198.51.100.7 ", IPv4Address("198.51.100.7")),
        ("2001:db8::7", IPv6Address("2001:db8::7")),
        ("[2001:db8::7]", IPv6Address("2001:db8::7")),
        ("::ffff:10.0.0.5", IPv4Address("10.0.0.5")),
        ("::ffff:a00:5", IPv4Address("10.0.0.5")),
        ("garbage", None),
        ("198.51.100.7:80", None),
        ("010.0.0.1", None),
        ("１０.0.0.1", None),
        ("١٠.٠.٠.١", None),
        ("", None),
    ],
)
def test_parse_address(text: str, expected: object) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("address", "allowlist", "allowed"),
    [
        # empty list: any address, even an unknown one
        ("198.51.100.7", [], True),
        ("2001:db8::7", [], True),
        (None, [], True),
        # IPv4 CIDR
        ("198.51.100.7", ["198.51.100.0/24"], True),
        ("198.51.100.255", ["198.51.100.0/24"], True),
        ("198.51.101.0", ["198.51.100.0/24"], False),
        ("198.51.100.7", ["198.51.100.7"], True),
        ("198.51.100.8", ["198.51.100.7"], False),
        ("198.51.100.8", ["203.0.113.0/24", "198.51.100.0/28"], True),
        ("198.51.100.8", ["203.0.113.0/24", "198.51.100.0/29"], False),
        # IPv6 CIDR
        ("2001:db8::7", ["2001:db8::/32"], True),
        ("2001:db9::7", ["2001:db8::/32"], False),
        ("2001:db8::7", ["198.51.100.0/24", "2001:db8::/125"], True),
        ("2001:db8::8", ["198.51.100.0/24", "2001:db8::/125"], False),
        # /0 holds its own family only
        ("198.51.100.7", ["0.0.0.0/0"], True),
        ("2001:db8::7", ["0.0.0.0/0"], False),
        ("2001:db8::7", ["::/0"], True),
        ("198.51.100.7", ["::/0"], False),
        # IPv4-mapped IPv6 on either side is matched as IPv4
        ("::ffff:10.0.0.5", ["10.0.0.0/8"], True),
        ("::ffff:10.0.0.5", ["10.0.0.0/8", "::/0"], True),
        ("::ffff:11.0.0.5", ["10.0.0.0/8", "::/0"], False),
        ("10.0.0.5", ["::ffff:10.0.0.0/104"], True),
        ("11.0.0.5", ["::ffff:10.0.0.0/104"], False),
        # an unknown address never passes a non-empty list
        (None, ["0.0.0.0/0"], False),
        (None, ["0.0.0.0/0", "::/0"], False),
    ],
)
def test_ip_allowed(address: str | None, allowlist: list[str], allowed: bool) -> None:
    parsed = parse_address(address) if address is not None else None
    networks = [parse_network(cidr) for cidr in allowlist]
    assert ip_allowed(parsed, networks) is allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/24", IPv4Network("10.0.0.0/24")),
        ("10.0.0.7/24", IPv4Network("10.0.0.0/24")),
        ("10.0.0.7", IPv4Network("10.0.0.7/32")),
        (" 10.0.0.0/8 ", IPv4Network("10.0.0.0/8")),
        ("0.0.0.0/0", IPv4Network("0.0.0.0/0")),
        ("2001:db8::1/64", IPv6Network("2001:db8::/64")),
        ("2001:DB8::/32", IPv6Network("2001:db8::/32")),
        ("::/0", IPv6Network("::/0")),
        ("::1", IPv6Network("::1/128")),
        ("::ffff:10.0.0.0/104", IPv4Network("10.0.0.0/8")),
        ("::ffff:10.0.0.5", IPv4Network("10.0.0.5/32")),
        ("::ffff:0:0/96", IPv4Network("0.0.0.0/0")),
    ],
)
def test_parse_network(text: str, expected: object) -> None:
    assert parse_network(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "10.0.0",
        "10.0.0.256",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0.0/",
        "/8",
        "10.0.0.0 /8",
        "10.0.0.0/8/8",
        "010.0.0.1",  # leading zeros read as octal by some tools
        "2001:db8::/129",
        "2001:db8:::1",
        "10.0.0.1\x00",
        "1" * 65,
        # non-ASCII digits that str.isdigit() accepts
        "１０.0.0.1",  # fullwidth
        "١٠.٠.٠.١",  # Arabic-Indic
        "۱۰.0.0.1",  # extended Arabic-Indic
        "10.0.0.1/２４",
        "२००१:db8::/32",  # Devanagari
    ],
)
def test_parse_network_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an IPv4 or IPv6 address or CIDR"):
        parse_network(text)


@pytest.mark.parametrize("text", ["fe80::1%eth0", "fe80::%eth0/64", "fe80::1%1", "fe80::1%"])
def test_parse_network_refuses_zone_ids(text: str) -> None:
    with pytest.raises(ValueError, match=r"has a zone id"):
        parse_network(text)
