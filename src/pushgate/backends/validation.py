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

from typing import Final

__all__ = [
    "CLUSTER_SCHEMES",
    "MEMORY_SCHEMES",
    "SINGLE_SCHEMES",
    "SUPPORTED_SCHEMES",
    "check_prefix",
    "check_url",
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
SUPPORTED_SCHEMES: Final[tuple[str, ...]] = (*MEMORY_SCHEMES, *SINGLE_SCHEMES, *CLUSTER_SCHEMES)


def url_scheme(url: str) -> str:
    """The lower-cased scheme of ``url`` (``""`` when it has no ``://``)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def check_url(url: str) -> str:
    """Return ``url``'s scheme, or raise ValueError naming the supported ones."""
    scheme = url_scheme(url)
    if scheme not in SUPPORTED_SCHEMES:
        listed = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES)
        raise ValueError(f"unsupported broker URL {url!r}: the scheme must be one of {listed}")
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
