"""What configuration can check about a backend without loading it: URL schemes, key prefix.

Kept apart from the Redis code (no redis-py import) so that configuration validation and a
memory-only node can check settings without loading the Redis client. ``SUPPORTED_SCHEMES`` is
the one list of what :func:`pushgate.backends.create_stores` accepts:

=====================  =====================================================================
scheme                 deployment
=====================  =====================================================================
``memory://``          this process only (single node, the default)
``redis://``           one Redis/Valkey server, plain TCP (``redis://host:port/db``)
``rediss://``          one server over TLS
``valkey://``          same as ``redis://``
``unix://``            one server over a Unix socket (``unix:///path/to/sock?db=0``)
``redis+cluster://``   a Redis/Valkey Cluster through a seed node (sharded pub/sub)
``rediss+cluster://``  a cluster over TLS
``valkey+cluster://``  same as ``redis+cluster://``
=====================  =====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, unquote

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_SENTINEL_PORT",
    "MEMORY_SCHEMES",
    "SENTINEL_SCHEMES",
    "SINGLE_SCHEMES",
    "SUPPORTED_SCHEMES",
    "SentinelURL",
    "check_prefix",
    "check_url",
    "parse_sentinel_url",
    "url_scheme",
]

MEMORY_SCHEMES: Final = ("memory",)
# Our scheme -> the scheme redis-py's URL parser understands.
SINGLE_SCHEMES: Final[dict[str, str]] = {"redis": "redis", "rediss": "rediss", "unix": "unix", "valkey": "redis"}
CLUSTER_SCHEMES: Final[dict[str, str]] = {
    "redis+cluster": "redis",
    "rediss+cluster": "rediss",
    "valkey+cluster": "redis",
}
# Our scheme -> whether the primary (and the sentinels) are reached over TLS.
SENTINEL_SCHEMES: Final[dict[str, bool]] = {
    "redis+sentinel": False,
    "rediss+sentinel": True,
    "valkey+sentinel": False,
}
SUPPORTED_SCHEMES: Final[tuple[str, ...]] = (*MEMORY_SCHEMES, *SINGLE_SCHEMES, *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)
DEFAULT_SENTINEL_PORT: Final = 26379
_SENTINEL_QUERY: Final = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (see the module docstring). Its ``repr`` hides passwords."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False

    def __repr__(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"SentinelURL({hosts}/{self.service}/{self.db}, tls={self.tls})"

    @property
    def hosts(self) -> str:
        """``host:port,...`` of the sentinels, for messages."""
        return ",".join(f"{h}:{p}" for h, p in self.sentinels)


def _sentinel_host(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, sep, tail = item[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise ValueError(f"bad sentinel address {item!r}: expected [ipv6]:port")
        port_text = tail[1:]
    elif item.count(":") > 1:
        raise ValueError(f"bad sentinel address {item!r}: write an IPv6 address as [addr]:port")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"bad sentinel address {item!r}: no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad sentinel port in {item!r}: must be 1..65535")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL; ValueError says what is wrong (never echoing a password)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL: the scheme must be one of {', '.join(SENTINEL_SCHEMES)}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist, userinfo = netloc, ""
    items = [h.strip() for h in hostlist.split(",")] if hostlist.strip() else []
    if not items or any(not h for h in items):
        raise ValueError(
            f"{scheme}:// URL needs the sentinels as host:port,host:port,... before the service name "
            f"({scheme}://host1:{DEFAULT_SENTINEL_PORT},host2:{DEFAULT_SENTINEL_PORT}/<service>)"
        )
    sentinels = tuple(_sentinel_host(h) for h in items)
    parts = [p for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ValueError(
            f"{scheme}:// URL needs the service name (as in `sentinel monitor <service> ...`) after the "
            f"sentinels: {scheme}://host:{DEFAULT_SENTINEL_PORT}/<service>[/<db>]"
        )
    if len(parts) > 2:
        raise ValueError(f"{scheme}:// URL path must be /<service>[/<db>], got {len(parts)} parts")
    service = unquote(parts[0])
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"{scheme}:// URL: the database after the service name must be a number")
        db = int(parts[1])
    params: dict[str, list[str]] = parse_qs(query, keep_blank_values=True) if query else {}
    unknown = sorted(set(params) - set(_SENTINEL_QUERY))
    if unknown:
        raise ValueError(f"{scheme}:// URL: unknown parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(_SENTINEL_QUERY)}")
    username, colon, password = userinfo.partition(":")

    def single(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    return SentinelURL(
        sentinels=sentinels,
        service=service,
        db=db,
        username=unquote(username) if username else None,
        password=unquote(password) if colon and password else None,
        sentinel_username=single("sentinel_username") or None,
        sentinel_password=single("sentinel_password") or None,
        tls=SENTINEL_SCHEMES[scheme],
    )


def url_scheme(url: str) -> str:
    """The lower-cased scheme of ``url`` (``""`` when it has no ``://``)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def check_url(url: str) -> str:
    """Return ``url``'s scheme, or raise ValueError naming the supported ones (or, for a
    Sentinel URL, what is wrong with it)."""
    scheme = url_scheme(url)
    if scheme not in SUPPORTED_SCHEMES:
        listed = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise ValueError(f"unsupported broker URL {url!r}: the scheme must be one of {listed}")
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)
    return scheme


def check_prefix(prefix: str) -> str:
    """Return the Redis key ``prefix``, or raise ValueError if it holds ``{`` or ``}``.

    Redis Cluster hashes the text between the first ``{`` and the next ``}`` of a key: a brace
    in the prefix would become the hash tag of every key (one slot for the whole deployment, and
    multi-key scripts spanning slots). See the key layout in :mod:`pushgate.backends.redis.keys`.
    """
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"key prefix must not contain braces: {prefix!r}")
    return prefix
