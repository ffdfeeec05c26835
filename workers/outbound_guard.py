"""Customer callback URLs may not reach inside our network (SSRF).

A callback URL is the customer's to choose, so a URL pointing at ``127.0.0.1``, a private
range, link-local metadata (``169.254.169.254``) or another reserved address would let a
customer make our workers call our own services. Every address a host name resolves to is
checked, and the connection is then made to the checked address itself (a custom httpcore
network backend), so a DNS answer that changes between the check and the connect
(rebinding) cannot slip through. ``allow_private`` (setting
``STREAMS_CALLBACK_ALLOW_PRIVATE_ADDRESSES``) turns the check off, for tests and closed
networks only.

The same backend holds an attempt to its total deadline (``attempt_deadline``): httpx's
timeouts limit each read, so a customer dripping its answer a byte at a time could hold a
worker thread for as long as it liked.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from core.network import IPAddress, parse_address


class ForbiddenAddress(httpcore.ConnectError):
    """The host resolves to an address callbacks may not reach."""


#: IPv6 prefixes that stand for an IPv4 address in their last 32 bits: NAT64's well-known
#: prefix (RFC 6052: on an IPv6-only network with NAT64, ``64:ff9b::a9fe:a9fe`` reaches
#: 169.254.169.254) and the deprecated IPv4-compatible form (``::a.b.c.d``).
_IPV4_IN_LAST_32_BITS = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("::/96"),
)
#: Prefixes Python counts as global that are not public: NAT64's local-use prefix (RFC 8215,
#: translated to whatever the operator chose) and the deprecated site-local range.
_NOT_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))


def forbidden(address: IPAddress) -> bool:
    """Loopback, private, link-local, multicast, reserved or otherwise not public, also when
    written as an IPv6 address that carries an IPv4 one (NAT64, IPv4-compatible). 6to4
    (2002::/16, deprecated by RFC 7526) is refused whatever it carries: Python 3.11's patch
    releases disagree on whether it is global. Teredo is not global in any. Pure."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.sixtofour is not None or any(address in net for net in _NOT_PUBLIC):
            return True
        if any(address in network for network in _IPV4_IN_LAST_32_BITS):
            return forbidden(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return not address.is_global or address.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (IPv4-mapped IPv6 unwrapped)."""
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = parse_address(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    return found


def refusal(url: str, *, allow_private: bool) -> str | None:
    """Why a callback may not go to ``url`` (scheme, or where it resolves), or None."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "the callback URL is not a valid URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "the callback URL must be http(s) with a host"
    if allow_private:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        addresses = resolve(parsed.host, port)
    except OSError:
        return None  # not resolvable now: a transient failure, found again at connect time
    bad = [a for a in addresses if forbidden(a)]
    if bad:
        return f"the callback host resolves to a non-public address ({bad[0]})"
    return None


#: When the current attempt must be over (a ``time.monotonic()`` value), or None: no limit.
attempt_deadline: ContextVar[float | None] = ContextVar("attempt_deadline", default=None)


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the attempt; raises ``expired`` when nothing is."""
    deadline = attempt_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt ran past its deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes stop at the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """Resolves, refuses non-public addresses, and connects to the address it checked."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = httpcore.SyncBackend()
        self._allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._connect(host, port, timeout, local_address, socket_options))

    def _connect(
        self,
        host: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Any,
    ) -> httpcore.NetworkStream:
        if self._allow_private:
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        bad = [a for a in addresses if forbidden(a)]
        if bad:
            raise ForbiddenAddress(f"{host} resolves to a non-public address ({bad[0]})")
        return self._inner.connect_tcp(
            str(addresses[0]), port, timeout, local_address, socket_options
        )

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not callback targets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def guarded_client(*, connect_timeout: float, timeout: float, allow_private: bool) -> httpx.Client:
    """An httpx client for customer callbacks: short timeouts, no redirects (a redirect could
    lead inside), no proxies from the environment, connections pinned to checked addresses."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx takes no network backend of its own, so its pool is rebuilt with ours (the pool
    # is what HTTPTransport wraps; httpcore's ConnectionPool accepts network_backend).
    transport._pool = httpcore.ConnectionPool(  # noqa: SLF001
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        network_backend=GuardedBackend(allow_private=allow_private),
    )
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    )
