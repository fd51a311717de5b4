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

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
_FORWARDED_FOR = re.compile(r'for="?\[?([^\]";,]+)', re.IGNORECASE)


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


def _hops(request: web.Request) -> list[str]:
    """Client-side first, as the headers list them: Forwarded, else X-Forwarded-For, else X-Real-IP."""
    forwarded = request.headers.getall("Forwarded", [])
    if forwarded:
        return [m.group(1) for value in forwarded for m in _FORWARDED_FOR.finditer(value)]
    xff = request.headers.getall("X-Forwarded-For", [])
    if xff:
        return [part for value in xff for part in value.split(",") if part.strip()]
    real = request.headers.get("X-Real-IP")
    return [real] if real else []


def client_address(request: web.Request, trusted_proxies: Iterable[str]) -> str | None:
    """The client's IP address as text (None when the peer is not an IP socket)."""
    remote = request.remote
    networks = parse_networks(tuple(trusted_proxies))
    if not networks or not _trusted(_ip(remote or ""), networks):
        return remote
    hops = [_ip(h) for h in _hops(request)]
    for addr in reversed(hops):
        if addr is None:
            break  # garbage in a header our proxy passed on: stop believing the chain here
        if not _trusted(addr, networks):
            return str(addr)
    first = next((a for a in hops if a is not None), None)
    return str(first) if first is not None else remote


def has_forwarding_headers(request: web.Request) -> bool:
    return any(h in request.headers for h in FORWARDING_HEADERS)


__all__ = ["FORWARDING_HEADERS", "client_address", "has_forwarding_headers", "parse_networks"]
