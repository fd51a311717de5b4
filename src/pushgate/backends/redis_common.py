"""What the Redis broker, presence store and lease store share: URL handling, the command
client, key names, the pub/sub envelope and the reconnect backoff.

Key layout (``P`` is the prefix; ``{…}`` is a Redis Cluster hash tag, so everything that one
Lua script touches lives in one slot)::

    P:m:{ch}            channel meta hash: e = epoch, o = newest offset
    P:h:{ch}            channel history list (raw JSON data, oldest first)
    P:c:{ch}            channel pub/sub topic (publications and join/leave events)
    P:u:{user}          user pub/sub topic (direct messages, disconnects)
    P:b                 broadcast topic, every node subscribes
    P:nodes             set of registered node ids
    P:node:{id}:alive   string with PX = node ttl, refreshed by heartbeat
    P:node:{id}:conns   hash conn_id -> encoded user
    P:node:{id}:users   hash user -> number of the node's connections of that user
    P:node:{id}:chans   set of channels the node has presence in
    P:pres:{ch}:id      hash conn_id -> encoded user: node ``id``'s members of channel ``ch``
    P:lease:{name}      leader lease, value = holder
    P:once:{key}        once-per-tick claim
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any, Literal

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from pushgate.backends.broker import ChannelEvent, UserMessage

MAX_POOL_CONNECTIONS = 256  # per node process, shared by broker, presence and leases

__all__ = [
    "Keys",
    "RedisConnection",
    "backoff_delays",
    "decode_event",
    "decode_user_message",
    "encode_event",
    "encode_user_message",
    "hash_tag",
]

RedisClient = Redis | RedisCluster

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss", "valkey+cluster": "redis"}
_SINGLE_SCHEMES = {"redis": "redis", "rediss": "rediss", "unix": "unix", "valkey": "redis"}


def hash_tag(name: str) -> str:
    """The text placed between ``{`` and ``}`` in every key of ``name``.

    Redis hashes the text between the first ``{`` and the next ``}``; a name that is empty or
    contains ``}`` would break that, so such names are replaced by a digest (80 bits).
    """
    if name and "}" not in name:
        return name
    return "#" + hashlib.sha1(name.encode()).hexdigest()[:20]


class Keys:
    """Key and topic names under one prefix (see the module docstring for the layout)."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix must not contain braces: {prefix!r}")
        self.prefix = prefix
        self.broadcast_topic = f"{prefix}:b".encode()
        self.nodes = f"{prefix}:nodes"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}:m:{{{hash_tag(channel)}}}"

    def history(self, channel: str) -> str:
        return f"{self.prefix}:h:{{{hash_tag(channel)}}}"

    def channel_topic(self, channel: str) -> bytes:
        return f"{self.prefix}:c:{{{hash_tag(channel)}}}".encode()

    def user_topic(self, user: str) -> bytes:
        return f"{self.prefix}:u:{{{hash_tag(user)}}}".encode()

    def alive(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:alive"

    def node_conns(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:conns"

    def node_users(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:users"

    def node_channels(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:chans"

    def presence(self, channel: str, node: str) -> str:
        return f"{self.prefix}:pres:{{{hash_tag(channel)}}}:{node}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}:lease:{{{hash_tag(name)}}}"

    def once(self, key: str) -> str:
        return f"{self.prefix}:once:{{{hash_tag(key)}}}"


def millis(seconds: float) -> int:
    """Seconds to a positive millisecond count for PX / PEXPIRE."""
    return max(1, round(seconds * 1000))


def backoff_delays(minimum: float, maximum: float, factor: float = 2.0) -> Iterator[float]:
    """Reconnect delays: a random first delay, then exponential growth with jitter, capped.

    The random first delay spreads a whole cluster of nodes that lost Redis at the same
    moment, so they do not all reconnect in the same millisecond.
    """
    yield random.uniform(0, minimum)
    delay = minimum
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(delay * factor, maximum)


# --- pub/sub envelope -------------------------------------------------------------------------
# Written for speed on purpose: a publication is b"P<offset>:<epoch>:<data>", built by the publish
# script and parsed with one split, so the raw JSON ``data`` passes through without re-encoding.
# Events are b"J"/b"L" + (b"=" + user | b"") on the same topic. User messages are one msgpack
# array, encoded once for all recipients; broadcast payloads are the raw data itself.

PUBLICATION_TAG = ord("P")
_EVENT_TAGS: dict[str, bytes] = {"join": b"J", "leave": b"L"}
_EVENT_KINDS: dict[int, Literal["join", "leave"]] = {ord("J"): "join", ord("L"): "leave"}


def encode_user(user: str | None) -> bytes:
    """Anonymous is the empty string; a named user is ``=`` + name (so ``""`` stays a name)."""
    return b"" if user is None else b"=" + user.encode()


def decode_user(raw: bytes) -> str | None:
    return raw[1:].decode() if raw else None


def encode_event(event: ChannelEvent) -> bytes:
    return _EVENT_TAGS[event.kind] + encode_user(event.user)


def decode_event(channel: str, payload: bytes) -> ChannelEvent | None:
    kind = _EVENT_KINDS.get(payload[0]) if payload else None
    if kind is None:
        return None
    return ChannelEvent(channel=channel, kind=kind, user=decode_user(payload[1:]))


class _UserEnvelope(msgspec.Struct, array_like=True):
    kind: Literal["direct", "disconnect"]
    sender: str | None
    data: bytes
    code: int
    reason: str


_user_encoder = msgspec.msgpack.Encoder()
_user_decoder = msgspec.msgpack.Decoder(_UserEnvelope)


def encode_user_message(message: UserMessage) -> bytes:
    return _user_encoder.encode(_UserEnvelope(message.kind, message.sender, message.data, message.code, message.reason))


def decode_user_message(payload: bytes) -> UserMessage:
    env = _user_decoder.decode(payload)
    return UserMessage(kind=env.kind, sender=env.sender, data=env.data, code=env.code, reason=env.reason)


# --- connections ------------------------------------------------------------------------------


class RedisConnection:
    """One Redis/Valkey deployment named by URL, and the command client the stores share.

    ``redis://host:port/db`` (also ``rediss://``, ``unix://``, ``valkey://``) is a single
    server; ``redis+cluster://host:port`` (``rediss+cluster://``, ``valkey+cluster://``) is a
    cluster reached through that seed node. The command client is created on first use and
    closed when the last started store releases it (:meth:`release`), so a broker, presence store and
    lease store built by ``create_stores`` share one connection pool. The lease store has no
    lifecycle in its protocol, so it borrows the client without holding it: closing the node's
    broker and presence store closes the pool.
    """

    def __init__(
        self,
        url: str,
        *,
        health_check_interval: float = 10.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"not a Redis URL: {url!r}")
        scheme = scheme.lower()
        if scheme in _CLUSTER_SCHEMES:
            self.cluster = True
            self.base_url = f"{_CLUSTER_SCHEMES[scheme]}://{rest}"
        elif scheme in _SINGLE_SCHEMES:
            self.cluster = False
            self.base_url = f"{_SINGLE_SCHEMES[scheme]}://{rest}"
        else:
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        self.url = url
        self.health_check_interval = health_check_interval
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self._client: RedisClient | None = None
        self._users = 0

    @property
    def client(self) -> RedisClient:
        """The shared command client; created on demand (so a lease store works unstarted)."""
        if self._client is None:
            opts: dict[str, Any] = {
                "socket_keepalive": True,
                "health_check_interval": self.health_check_interval,
                "socket_timeout": self.socket_timeout,
                "socket_connect_timeout": self.connect_timeout,
                # from_url clients retry nothing by default; a pooled connection that died
                # with a server restart must be reconnected, not surfaced as an error.
                "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3),
            }
            if self.cluster:
                self._client = RedisCluster.from_url(self.base_url, **opts)
            else:
                # A blocking pool: under a connect storm (every handshake writes presence) callers
                # wait briefly for a free connection instead of failing with "Too many connections".
                pool = BlockingConnectionPool.from_url(
                    self.base_url, max_connections=MAX_POOL_CONNECTIONS,
                    timeout=self.connect_timeout + self.socket_timeout, **opts,
                )
                self._client = Redis.from_pool(pool)
        return self._client

    def acquire(self) -> RedisClient:
        self._users += 1
        return self.client

    async def release(self) -> None:
        self._users = max(0, self._users - 1)
        await self.close_if_unused()

    async def close_if_unused(self) -> None:
        """Close the client unless a started broker or presence store still holds it."""
        if self._users == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def pubsub_connection(self, host: str | None = None, port: int | None = None) -> AbstractConnection:
        """A fresh, unconnected connection for pub/sub, to the URL's server or a cluster node.

        RESP2 and no redis-py retries or health checks: the link owns reconnects and its own
        PING-based liveness check, and a health check would steal replies from its reader.
        """
        kwargs: dict[str, Any] = dict(parse_url(self.base_url))
        connection_class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        if host is not None:
            kwargs["host"] = host
        if port is not None:
            kwargs["port"] = port
        kwargs.update(
            socket_keepalive=True,
            socket_timeout=None,
            socket_connect_timeout=self.connect_timeout,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        return connection_class(**kwargs)
