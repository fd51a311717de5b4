"""Who is on the other end: the client's address, through trusted proxies only.

Behind nginx every client arrives from the proxy's address, so per-IP limits and logs would see
one client. ``X-Forwarded-For``, ``X-Real-IP`` and ``Forwarded`` (RFC 7239) name the real one,
but any client can send those headers: they are believed only when the TCP peer is in
``trusted_proxies``. ``X-Forwarded-For`` is read from the right (the hops our proxies appended),
skipping addresses that are themselves trusted proxies; the first other address is the client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Protocol

from multidict import CIMultiDictProxy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
_FORWARDED_FOR = re.compile(r'for="?\[?([^\]";,]+)', re.IGNORECASE)


class PeerRequest(Protocol):
    """What these functions read of a request: an aiohttp request and a
    :class:`~pushgate.web.request_view.RequestView` both have it."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def remote(self) -> str | None: ...


@lru_cache(maxsize=64)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.count(":") == 1 and "." in text:  # "1.2.3.4:5678"
        text = text.rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: Sequence[Network]) -> bool:
    return addr is not None and any(addr in net for net in networks)


def _header_hops(request: PeerRequest, header: str) -> list[str]:
    """The hops one forwarding header lists, client-side first."""
    values = request.headers.getall(header, [])
    if header == "Forwarded":
        return [m.group(1) for value in values for m in _FORWARDED_FOR.finditer(value)]
    return [part for value in values for part in value.split(",") if part.strip()]


def _hops(request: PeerRequest) -> list[str]:
    """Client-side first, as the headers list them: Forwarded, else X-Forwarded-For, else X-Real-IP."""
    for header in FORWARDING_HEADERS:
        if header in request.headers:
            return _header_hops(request, header)
    return []


def _client_from(hops: list[str], networks: Sequence[Network], remote: str | None) -> str | None:
    """Read ``hops`` from the right: the first address that is not one of our proxies is the client."""
    addrs = [_ip(h) for h in hops]
    for addr in reversed(addrs):
        if addr is None:
            break  # garbage in a header our proxy passed on: stop believing the chain here
        if not _trusted(addr, networks):
            return str(addr)
    first = next((a for a in addrs if a is not None), None)
    return str(first) if first is not None else remote


def _trusted_peer(request: PeerRequest, trusted_proxies: Iterable[str]) -> tuple[Network, ...] | None:
    """Our proxy networks when the TCP peer is one of them, else None (its headers mean nothing)."""
    networks = parse_networks(tuple(trusted_proxies))
    if networks and _trusted(_ip(request.remote or ""), networks):
        return networks
    return None


def client_address(request: PeerRequest, trusted_proxies: Iterable[str]) -> str | None:
    """The client's IP address as text (None when the peer is not an IP socket)."""
    networks = _trusted_peer(request, trusted_proxies)
    if networks is None:
        return request.remote
    return _client_from(_hops(request), networks, request.remote)


def is_trusted_proxy(request: PeerRequest, trusted_proxies: Iterable[str]) -> bool:
    """True when the TCP peer is in ``trusted_proxies`` (so its forwarding headers are believed)."""
    return _trusted_peer(request, trusted_proxies) is not None


def forwarded_clients(request: PeerRequest, trusted_proxies: Iterable[str]) -> list[str | None]:
    """The client each forwarding header present names, one per header (empty when there are none).

    :func:`client_address` reads one header (the first of :data:`FORWARDING_HEADERS` present), but a
    proxy that sets one of them usually passes the others through from the client untouched (nginx
    appends to ``X-Forwarded-For`` and forwards a client's ``Forwarded`` as it came). A decision
    that a client could win by adding the header nobody checks, such as "is this caller local?",
    must hold for every header: this gives what each one claims. From an untrusted peer every
    header is ignored and each entry is the peer's own address.
    """
    present = [h for h in FORWARDING_HEADERS if h in request.headers]
    networks = _trusted_peer(request, trusted_proxies)
    if networks is None:
        return [request.remote for _ in present]
    return [_client_from(_header_hops(request, h), networks, request.remote) for h in present]


def has_forwarding_headers(request: PeerRequest) -> bool:
    """True when the request names a client other than its TCP peer (it came through a proxy)."""
    return any(h in request.headers for h in FORWARDING_HEADERS)


__all__ = [
    "FORWARDING_HEADERS",
    "PeerRequest",
    "client_address",
    "forwarded_clients",
    "has_forwarding_headers",
    "is_trusted_proxy",
    "parse_networks",
]
