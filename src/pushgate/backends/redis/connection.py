"""The Redis/Valkey deployment named by a URL, its shared command client, and error translation.

Every store of one node shares one :class:`RedisConnection` (one connection pool). Pub/sub
connections are separate (:meth:`RedisConnection.pubsub_connection`), owned by the links.

Sentinel (``redis+sentinel://``): the command client is redis-py's
``Sentinel(...).master_for(service)``, which asks the sentinels for the primary whenever it
connects and drops a connection that answers READONLY (the old primary, demoted). The hand
written hot paths (publish pipe, pub/sub links) connect by themselves; they ask
:meth:`RedisConnection.resolve` for a description of *the current primary* on every connect
and reconnect (never a cached address: a cached one is exactly what a failover invalidates),
and :meth:`RedisConnection.is_current_primary` lets a link notice that the primary moved
while its own connection still works. Every sentinel query is bounded: each sentinel by
``sentinel_timeout`` (tried in turn), the whole query by ``timeout``; when no sentinel answers,
or none knows a healthy primary of the service, the caller gets BrokerUnavailable.

Time: every store call is bounded by the connection's ``timeout`` (the ``broker_timeout``
setting). A Redis that accepts connections but answers nothing (SIGSTOP, a saturated server, a
dead peer without RST) would otherwise hold a caller for redis-py's socket timeout once per
retry; :func:`translate_errors` runs each public method under one deadline for everything it
does (pool wait, connect, retries), and the socket timeouts below are at most that deadline.

Errors: redis-py raises its own exception tree, and which of its errors mean "Redis cannot be
reached right now" is a Redis detail. The stores translate those, once, at their public methods
(:func:`translate_errors`, or an inline ``except UNAVAILABLE_ERRORS`` on the publish hot path)
into :class:`pushgate.errors.BrokerUnavailable`, raised ``from`` the original. Everything else
(a wrong type, a script bug) stays what it is: retrying it would not help.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, ParamSpec, Protocol, TypeVar, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pushgate.backends.validation import (
    CLUSTER_SCHEMES,
    SENTINEL_SCHEMES,
    SINGLE_SCHEMES,
    SentinelURL,
    parse_sentinel_url,
)
from pushgate.backoff import backoff_cap
from pushgate.errors import BrokerUnavailable

__all__ = [
    "MAX_POOL_CONNECTIONS",
    "UNAVAILABLE_ERRORS",
    "RedisClient",
    "RedisConnection",
    "millis",
    "timed_out",
    "translate_errors",
    "unavailable",
]

log = logging.getLogger(__name__)

MAX_POOL_CONNECTIONS = 256  # per node process, shared by broker, presence and leases
PRIMARY_WATCH_EVERY = 0.25  # seconds between sentinel queries while the primary is lost
PRIMARY_WATCH_FOR = 60.0  # seconds a watch for a new primary lasts at most

RedisClient = Redis | RedisCluster

# "Cannot reach Redis right now": refused/reset connections and timeouts (redis-py's and the
# builtins; redis-py's ConnectionError covers BusyLoading, MaxConnections and auth failures),
# a cluster without a quorum or mid-failover (CLUSTERDOWN, MASTERDOWN, TRYAGAIN) and a slot no
# node serves yet.
UNAVAILABLE_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
)


def _cluster_unreachable(exc: RedisClusterException) -> bool:
    """redis-py reports "no startup node reachable" as a bare RedisClusterException; its other
    RedisClusterExceptions are usage errors (cross-slot keys, a command without keys)."""
    return isinstance(exc.__cause__, UNAVAILABLE_ERRORS) or "cannot be connected" in str(exc)


def unavailable(exc: BaseException) -> BrokerUnavailable | None:
    """The BrokerUnavailable that ``exc`` stands for, or None if it is some other failure."""
    if isinstance(exc, BrokerUnavailable):
        return exc
    if isinstance(exc, UNAVAILABLE_ERRORS) or (isinstance(exc, RedisClusterException) and _cluster_unreachable(exc)):
        return BrokerUnavailable(f"Redis unavailable: {exc}")
    return None


_P = ParamSpec("_P")
_R = TypeVar("_R")


class _Store(Protocol):
    """What :func:`translate_errors` needs of the object whose method it wraps."""

    _conn: RedisConnection


def timed_out(seconds: float) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis did not answer within {seconds:g}s")


def translate_errors(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Wrap a store's public async method: bounded by the store's connection ``timeout``, and
    Redis-unreachable errors (the deadline passing among them) become BrokerUnavailable.

    Costs one try/except and one timer per call when nothing fails. Cancelling a redis-py
    command mid-reply disconnects its connection (redis-py does that for any BaseException), so
    a late reply can never be read by the next user of the pooled connection. Not used on the
    publish hot path, which bounds and translates inline (:meth:`.broker.RedisBroker.publish`).
    """

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        seconds = cast(_Store, args[0])._conn.timeout
        try:
            async with asyncio.timeout(seconds):
                return await method(*args, **kwargs)
        except TimeoutError as exc:  # the deadline (redis-py's own timeouts are RedisTimeoutError)
            raise timed_out(seconds) from exc
        except (*UNAVAILABLE_ERRORS, RedisClusterException) as exc:
            translated = unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

    return wrapper


class CommandBackoff(AbstractBackoff):
    """redis-py's command retries (a pooled connection that died with a server restart), timed by
    the shared policy of :mod:`pushgate.backoff` in a short window: 0.05 s growing to 1 s."""

    def __init__(self, min_delay: float = 0.05, max_delay: float = 1.0) -> None:
        self._window = (min_delay, max_delay)

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        # redis-py counts failures from 1; the policy numbers retries from 0.
        return random.uniform(0.0, backoff_cap(failures - 1, *self._window))


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (the primary's address from the sentinels on every connect,
    READONLY drops the connection) that, like the single-server pool, makes callers wait
    briefly for a free connection under a connect storm instead of failing."""


def millis(seconds: float) -> int:
    """Seconds to a positive millisecond count for PX / PEXPIRE."""
    return max(1, round(seconds * 1000))


class RedisConnection:
    """One Redis/Valkey deployment named by URL, and the command client the stores share.

    ``redis://host:port/db`` (also ``rediss://``, ``unix://``, ``valkey://``) is a single
    server; ``redis+cluster://host:port`` (``rediss+cluster://``, ``valkey+cluster://``) is a
    cluster reached through that seed node; ``redis+sentinel://h1,h2,h3/service[/db]`` is the
    primary the sentinels name (module docstring); the scheme table is
    :mod:`pushgate.backends.validation`.
    The command client is created on first use and closed when the last started store releases
    it (:meth:`release`), so a broker, presence store and lease store built by ``create_stores``
    share one connection pool. The lease store has no lifecycle in its protocol, so it borrows
    the client without holding it: closing the node's broker and presence store closes the pool.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        health_check_interval: float = 10.0,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError(f"not a Redis URL: {url!r}")
        scheme = scheme.lower()
        #: the parsed Sentinel URL, or None when the URL names the server(s) directly
        self.sentinel: SentinelURL | None = None
        if scheme in SENTINEL_SCHEMES:
            self.cluster = False
            self.sentinel = parse_sentinel_url(url)
            self.base_url = ""  # no fixed server: see :meth:`resolve`
        elif scheme in CLUSTER_SCHEMES:
            self.cluster = True
            self.base_url = f"{CLUSTER_SCHEMES[scheme]}://{rest}"
        elif scheme in SINGLE_SCHEMES:
            self.cluster = False
            self.base_url = f"{SINGLE_SCHEMES[scheme]}://{rest}"
        else:
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        self.url = url
        # TCP keepalive is a TCP option: redis-py's Unix socket connection refuses the argument.
        self._tcp = not self.base_url.startswith("unix://")
        self.health_check_interval = health_check_interval
        #: the deadline of one store call, everything included (the ``broker_timeout`` setting)
        self.timeout = timeout
        # A socket wait longer than the whole call's deadline could never finish in time.
        self.socket_timeout = timeout if socket_timeout is None else min(socket_timeout, timeout)
        self.connect_timeout = timeout if connect_timeout is None else min(connect_timeout, timeout)
        #: one sentinel's time to answer before the next is asked (all of them within ``timeout``)
        self.sentinel_timeout = min(self.connect_timeout, 1.0)
        self._client: RedisClient | None = None
        self._sentinels: Sentinel | None = None
        self._failover_listeners: list[Callable[[], None]] = []
        self._moved_listeners: list[Callable[[], None]] = []
        self._primary_watch: asyncio.Task[None] | None = None
        self._resolved: tuple[str, int] | None = None  # the primary :meth:`resolve` named last
        self._users = 0

    @property
    def client(self) -> RedisClient:
        """The shared command client; created on demand (so a lease store works unstarted)."""
        if self._client is None:
            opts: dict[str, Any] = {
                "health_check_interval": self.health_check_interval,
                "socket_timeout": self.socket_timeout,
                "socket_connect_timeout": self.connect_timeout,
                # from_url clients retry nothing by default; a pooled connection that died
                # with a server restart must be reconnected, not surfaced as an error.
                "retry": Retry(CommandBackoff(), 3),
            }
            if self._tcp:
                opts["socket_keepalive"] = True
            if self.sentinel is not None:
                self._client = self._sentinel_manager().master_for(
                    self.sentinel.service,
                    redis_class=Redis,
                    connection_pool_class=_BlockingSentinelPool,
                    max_connections=MAX_POOL_CONNECTIONS,
                    timeout=self.timeout,
                    **opts,
                )
            elif self.cluster:
                self._client = RedisCluster.from_url(self.base_url, **opts)
            else:
                # A blocking pool: under a connect storm (every handshake writes presence) callers
                # wait briefly for a free connection instead of failing with "Too many connections".
                pool = BlockingConnectionPool.from_url(
                    self.base_url, max_connections=MAX_POOL_CONNECTIONS, timeout=self.timeout, **opts,
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
        if self._users == 0:
            await self.close_watch()
        if self._users == 0 and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._users == 0 and self._sentinels is not None:
            sentinels, self._sentinels = self._sentinels, None
            await sentinels.aclose()

    # --- Sentinel ------------------------------------------------------------------------------

    def _sentinel_manager(self) -> Sentinel:
        """redis-py's Sentinel object, one per connection: the sentinels' own clients (bounded by
        ``sentinel_timeout`` each) and the primary's connection settings."""
        url = self.sentinel
        assert url is not None
        if self._sentinels is None:
            sentinel_kwargs: dict[str, Any] = {
                "socket_timeout": self.sentinel_timeout,
                "socket_connect_timeout": self.sentinel_timeout,
                "retry": Retry(NoBackoff(), 0),  # the next sentinel is the retry
            }
            if url.sentinel_password is not None:
                sentinel_kwargs["password"] = url.sentinel_password
                if url.sentinel_username is not None:
                    sentinel_kwargs["username"] = url.sentinel_username
            primary: dict[str, Any] = {"db": url.db}
            if url.password is not None:
                primary["password"] = url.password
                if url.username is not None:
                    primary["username"] = url.username
            if url.tls:
                sentinel_kwargs["ssl"] = True
                primary["ssl"] = True
            self._sentinels = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                list(url.sentinels), sentinel_kwargs=sentinel_kwargs, **primary
            )
        return self._sentinels

    async def primary_address(self) -> tuple[str, int]:
        """Ask the sentinels, now, where the primary is: each in turn until one names a primary
        it considers healthy (not subjectively or objectively down), all within ``timeout``.

        BrokerUnavailable when none answers in time or none knows the service."""
        url = self.sentinel
        if url is None:
            raise RuntimeError("primary_address needs a redis+sentinel:// URL")
        try:
            async with asyncio.timeout(self.timeout):
                host, port = await self._sentinel_manager().discover_master(url.service)
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"no sentinel of {url.hosts} named the primary of {url.service!r} within {self.timeout:g}s"
            ) from exc
        except (RedisError, OSError) as exc:  # MasterNotFoundError lists what each sentinel said
            raise BrokerUnavailable(f"no primary for {url.service!r} from the sentinels {url.hosts}: {exc}") from exc
        return str(host), int(port)

    async def resolve(self, host: str | None = None, port: int | None = None) -> AbstractConnection:
        """The description (an unconnected redis-py connection) of the server to connect to now.

        With Sentinel it is the current primary, asked of the sentinels on every call (one
        place for the query, used by every publish pipe and pub/sub link at every connect);
        otherwise :meth:`pubsub_connection` of the URL's server or of the cluster node given."""
        if self.sentinel is not None:
            host, port = self._resolved = await self.primary_address()
        return self.pubsub_connection(host, port)

    async def is_current_primary(self, desc: AbstractConnection) -> bool | None:
        """With Sentinel: whether the sentinels still name the server ``desc`` describes as the
        primary (False after a failover), or None when they cannot say right now (then the
        caller keeps what it has rather than churn). Always True without Sentinel."""
        if self.sentinel is None:
            return True
        try:
            address = await self.primary_address()
        except BrokerUnavailable:
            return None
        return address == (str(getattr(desc, "host", "")), int(getattr(desc, "port", 0)))

    def add_failover_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called when a user of this connection saw a sign of failover (a
        READONLY reply): pub/sub links then check at once whether the primary moved."""
        self._failover_listeners.append(listener)

    def remove_failover_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._failover_listeners.remove(listener)

    def suspect_failover(self) -> None:
        for listener in list(self._failover_listeners):
            listener()
        self.watch_primary()

    def add_primary_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` is called when :meth:`watch_primary` saw the sentinels name a new
        primary: a publish pipe or link waiting out its reconnect backoff retries at once."""
        self._moved_listeners.append(listener)

    def remove_primary_listener(self, listener: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._moved_listeners.remove(listener)

    def watch_primary(self) -> None:
        """With Sentinel: a user of this connection lost the primary (a failed connect, READONLY).
        Until the sentinels name a primary other than the one :meth:`resolve` named last, ask them every
        :data:`PRIMARY_WATCH_EVERY` seconds (for at most :data:`PRIMARY_WATCH_FOR`), then tell
        the primary listeners. Without it the pipe and the links would find the new primary only
        when their reconnect backoff ends, which during a long outage grows to seconds: the
        failover would be over well before they notice. One watch per connection at a time."""
        if self.sentinel is None or self._primary_watch is not None:
            return
        self._primary_watch = asyncio.get_running_loop().create_task(
            self._watch_primary(), name="pushgate-sentinel-watch")

    async def _watch_primary(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            lost = self._resolved  # the primary the pipes and links were last sent to
            deadline = loop.time() + PRIMARY_WATCH_FOR
            while loop.time() < deadline:
                try:
                    address: tuple[str, int] | None = await self.primary_address()
                except BrokerUnavailable:
                    address = None  # no sentinel can say right now: ask again
                if lost is None:
                    lost = address
                elif address is not None and address != lost:
                    log.info("sentinels name a new primary for %r: %s:%d", self.sentinel and self.sentinel.service,
                             *address)
                    for listener in list(self._moved_listeners):
                        listener()
                    return
                await asyncio.sleep(PRIMARY_WATCH_EVERY)
        finally:
            self._primary_watch = None

    async def close_watch(self) -> None:
        """Stop a running :meth:`watch_primary` (the node is stopping)."""
        task, self._primary_watch = self._primary_watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def pubsub_connection(self, host: str | None = None, port: int | None = None) -> AbstractConnection:
        """A fresh, unconnected connection for pub/sub, to the URL's server or a cluster node.

        RESP2 and no redis-py retries or health checks: the link owns reconnects and its own
        PING-based liveness check, and a health check would steal replies from its reader.
        """
        kwargs: dict[str, Any]
        if self.sentinel is not None:
            url = self.sentinel
            kwargs = {"db": url.db, "username": url.username, "password": url.password,
                      "connection_class": SSLConnection if url.tls else Connection}
        else:
            kwargs = dict(parse_url(self.base_url))
        connection_class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        if host is not None:
            kwargs["host"] = host
        if port is not None:
            kwargs["port"] = port
        if self._tcp:
            kwargs["socket_keepalive"] = True
        kwargs.update(
            socket_timeout=None,
            socket_connect_timeout=self.connect_timeout,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        return connection_class(**kwargs)
