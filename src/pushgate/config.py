"""One typed configuration, read from a TOML file, ``PUSHGATE_*`` environment variables and CLI flags.

Precedence, lowest to highest: built-in defaults < TOML file (``--config`` / ``PUSHGATE_CONFIG``)
< environment variables < command-line flags. Every scalar setting has all three spellings:
``max_message_size`` in TOML, ``PUSHGATE_MAX_MESSAGE_SIZE`` in the environment,
``--max-message-size`` on the command line. Namespaces and schedules exist only in TOML.

Bad values raise :class:`~pushgate.errors.ConfigError` naming the key; the CLI exits with 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import ipaddress
import math
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .names import CHANNEL_RE


@dataclass(frozen=True, slots=True)
class NamespaceConfig:
    """Options for channels named ``<namespace>:<rest>`` (channels without ``:`` use ``default``)."""

    publish: bool | None = None  # client publish; None = allowed in dev mode, refused in JWT mode
    subscribe: str = "any"  # "any" | "authenticated" (anonymous connections refused, for every operation)
    #: track presence; "subscribers": tracked, and only connections subscribed to the channel may ask it
    presence: bool | Literal["subscribers"] = True
    join_leave: bool = False
    history_size: int | None = None  # None = the server-wide history_size
    history_ttl: float | None = None
    #: a client's publication carries its publisher's user id (``"from"``), stamped by the server
    stamp_publisher: bool = True


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """A periodic publication: every ``every`` seconds publish ``call()``'s result or ``url``'s JSON."""

    channel: str
    every: float
    call: str | None = None
    url: str | None = None
    name: str = ""


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True, slots=True)
class Config:
    host: str = _opt("127.0.0.1", "interface to listen on")
    port: int = _opt(8080, "TCP port for HTTP, WebSocket and SSE")
    node_id: str = _opt("", "this node's id in the cluster (default: hostname-pid)")
    broker: str = _opt(
        "memory://",
        "memory:// (one node); redis://, rediss://, valkey://, unix:// (one server); "
        "redis+cluster://, rediss+cluster://, valkey+cluster:// (a cluster); "
        "redis+sentinel://, rediss+sentinel://, valkey+sentinel:// (Sentinel: sentinel1:26379,.../<service>[/<db>])",
    )
    redis_prefix: str = _opt("pg", "key and channel prefix in Redis")
    workers: int = _opt(1, "worker processes sharing the port (SO_REUSEPORT); >1 needs a Redis broker")
    app: str | None = _opt(None, "embedding application 'pkg.module:attr' (hooks and rpc handlers)")
    log_level: str = _opt("info", "debug | info | warning | error")
    log_format: str = _opt("text", "text | json (one JSON object per line, for log shippers)")
    access_log: bool = _opt(False, "log one line per HTTP request and WebSocket/SSE session (path without query)")

    jwt_secret: str | None = _opt(None, "HS256 secret: enables JWT mode")
    jwt_public_key: str | None = _opt(None, "PEM file (or PEM text) of an RS256/ES256 key: enables JWT mode")
    jwt_audience: str | None = _opt(None, "required `aud` claim, if set")
    jwt_issuer: str | None = _opt(None, "required `iss` claim, if set")
    api_key: str | None = _opt(None, "HTTP API key (Bearer); without one only loopback may call /api")
    allowed_origins: tuple[str, ...] = _opt(
        (), "comma-separated Origin patterns allowed to open /ws (fnmatch); empty = any origin"
    )

    max_message_size: int = _opt(65536, "largest client frame in bytes; bigger closes with 1009")
    max_connections: int = _opt(0, "connections per node (0 = unlimited); over it closes with 4003")
    max_subscriptions: int = _opt(128, "channels per connection")
    ping_interval: float = _opt(25.0, "seconds between WebSocket pings; a peer silent for 1.5x is closed")
    write_buffer_limit: int = _opt(
        262144, "unsent bytes per connection before it is closed as a slow consumer (4001)"
    )
    client_publish: bool | None = _opt(None, "default for client publish (None: yes in dev mode, no with JWT)")
    history_size: int = _opt(100, "publications kept per channel for recovery")
    history_ttl: float = _opt(300.0, "seconds a publication stays in history")
    user_history_size: int = _opt(100, "messages kept per user for offline delivery and recovery (0 = none)")
    user_history_ttl: float = _opt(86400.0, "seconds a user message is kept for offline delivery")
    max_ack_wait: float = _opt(30.0, "longest `wait_for_ack` a send may ask for, in seconds")
    drain_period: float = _opt(5.0, "seconds over which connections are closed (1012) at shutdown")
    node_ttl: float = _opt(10.0, "seconds after the last heartbeat before a node's presence is purged")
    lease_ttl: float = _opt(10.0, "seconds of the periodic-job leader lease")
    sse_ping_interval: float = _opt(15.0, "seconds between SSE keep-alive comments")

    # -- security and hardening (docs/security.md) --
    production: bool = _opt(
        False, "refuse to start in dev mode (no JWT key), without an API key, or with a weak secret"
    )
    jwks_url: str | None = _opt(None, "JWKS URL (https) whose keys verify tokens (RS256/ES256); enables JWT mode")
    jwt_require_exp: bool = _opt(False, "refuse tokens without an `exp` claim")
    trusted_proxies: tuple[str, ...] = _opt(
        (), "comma-separated proxy CIDRs whose X-Forwarded-For / X-Real-IP / Forwarded name the client"
    )
    tls_cert: str | None = _opt(None, "PEM certificate chain: serve https and wss on the same port")
    tls_key: str | None = _opt(None, "PEM private key of tls_cert")
    max_connections_per_ip: int = _opt(
        0, "open connections per client address (0 = unlimited); over it the handshake gets 429"
    )
    max_connections_per_user: int = _opt(100, "open connections per user on this node (0 = unlimited); over it 429")
    handshake_timeout: float = _opt(10.0, "seconds a client has to send a complete HTTP request head")
    keepalive_timeout: float = _opt(30.0, "seconds an idle HTTP keep-alive connection stays open")
    client_command_rate: float = _opt(100.0, "commands per second per connection (0 = unlimited)")
    client_command_burst: int = _opt(200, "commands a connection may send at once before `rate_limited` errors")
    client_publish_bytes_rate: int = _opt(1048576, "publish/send data bytes per second per connection (0 = unlimited)")
    client_publish_bytes_burst: int = _opt(4194304, "publish/send data bytes a connection may send at once")
    rate_limit_close_after: int = _opt(
        100, "`rate_limited` errors in a row before the connection is closed with 4004 (0 = never close)"
    )
    max_json_depth: int = _opt(32, "deepest nesting of arrays/objects accepted in `data`")
    history_max_channels: int = _opt(100000, "memory broker: channels that keep history (oldest dropped first)")
    history_max_bytes: int = _opt(268435456, "memory broker: bytes of history kept in all (oldest dropped first)")
    node_publish_rate: float = _opt(
        50000.0, "publications per second this node accepts (0 = unlimited); over it `rate_limited` / 429"
    )
    broker_timeout: float = _opt(5.0, "seconds a broker call may take before it fails with `unavailable`")
    broker_publish_max_in_flight: int = _opt(
        10000, "publications queued or awaiting a reply per Redis server; more wait (bounded by broker_timeout)"
    )
    idempotency_window: float = _opt(
        120.0, "seconds a publish `idempotency_key` is remembered cluster-wide (a retry within it is not re-applied)"
    )

    # -- STOMP over WebSocket (docs/stomp.md) --
    stomp_paths: tuple[str, ...] = _opt(
        ("/stomp",), "comma-separated paths that speak STOMP with or without a subprotocol (/ws does when offered one)"
    )
    stomp_broker_prefixes: tuple[str, ...] = _opt(
        ("/topic",), "STOMP destination prefixes mapped onto channels: /topic/x is channel x, /<p>/x is channel <p>:x"
    )
    stomp_app_prefix: str = _opt("/app", "STOMP destinations whose SENDs go to the App's @app.message handlers")
    stomp_user_prefix: str = _opt("/user", "STOMP prefix of user destinations (/user/queue/x: this user's messages)")
    stomp_user_destination: str = _opt(
        "/queue/messages", "where STOMP clients receive user messages sent without a destination (under /user)"
    )
    stomp_heartbeat: float = _opt(
        10.0, "seconds between STOMP heart-beats the server offers to send and asks the client for (0 = none)"
    )
    stomp_heartbeat_tolerance: float = _opt(
        2.0, "a STOMP client silent for this many times its negotiated heart-beat interval is closed"
    )
    stomp_transaction_frames: int = _opt(100, "SEND frames one STOMP transaction may buffer")
    sockjs_heartbeat: float = _opt(25.0, "seconds between SockJS heartbeat frames on an idle session")
    sockjs_disconnect_delay: float = _opt(
        5.0, "seconds a SockJS session lives without a receiving request before it is closed"
    )
    sockjs_response_limit: int = _opt(
        131072, "bytes one SockJS xhr-streaming response carries before the client opens the next"
    )
    sockjs_max_pending_sessions: int = _opt(10000, "SockJS sessions that have not sent their STOMP CONNECT yet")

    # -- performance (docs/performance.md) --
    flush_window: float = _opt(
        0.0, "seconds a flush is held after the last one so frames for a socket leave in one write (0 = none)"
    )
    flush_pacing: float = _opt(
        1.0,
        "after a busy flush (more frames than sockets, or writes filling 80 percent of the loop) "
        "the next waits this many times as long as it took (0 = no hold)",
    )
    gc_freeze: bool = _opt(True, "freeze long-lived objects out of full garbage collections (docs/performance.md)")
    gc_refreeze_connections: int = _opt(
        1000, "connections accepted since the last freeze that trigger the next one (with gc_freeze)"
    )

    namespaces: Mapping[str, NamespaceConfig] = field(default_factory=dict, metadata={"toml_only": True})
    schedule: Sequence[ScheduleConfig] = field(default_factory=tuple, metadata={"toml_only": True})

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key or self.jwks_url)

    def namespace(self, channel: str) -> NamespaceConfig:
        """The namespace options that apply to ``channel``."""
        name = channel.split(":", 1)[0] if ":" in channel else "default"
        ns = self.namespaces.get(name)
        if ns is None:
            ns = self.namespaces.get("default") or _DEFAULT_NS
        return ns

    def client_may_publish(self, channel: str) -> bool:
        ns = self.namespace(channel)
        if ns.publish is not None:
            return ns.publish
        if self.client_publish is not None:
            return self.client_publish
        return not self.jwt_enabled

    def history_for(self, channel: str) -> tuple[int, float]:
        if channel.startswith("!u:"):  # a user stream (pushgate.names.user_stream)
            return self.user_history_size, self.user_history_ttl
        ns = self.namespace(channel)
        size = self.history_size if ns.history_size is None else ns.history_size
        ttl = self.history_ttl if ns.history_ttl is None else ns.history_ttl
        return size, ttl


_DEFAULT_NS = NamespaceConfig()
MAX_FLUSH_WINDOW = 0.05  # seconds: the longest any flush is held (flush_window, paced holds); longer is a latency bug
MAX_FLUSH_PACING = 10.0  # holds over 10x a flush's duration only add latency (the hold is capped anyway)
SCALAR_FIELDS = [f for f in dataclasses.fields(Config) if not f.metadata.get("toml_only")]


_HINTS: dict[str, Any] = {}


def _field_type(name: str) -> tuple[Any, bool]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Config))
    tp = _HINTS[name]
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) != len(typing.get_args(tp))
        tp = args[0]
    return tp, optional


def _coerce(key: str, value: Any) -> Any:
    """Turn a TOML/env/CLI value into the field's type, or raise ConfigError naming ``key``."""
    tp, optional = _field_type(key)
    if value is None or (isinstance(value, str) and value == "" and optional):
        if optional:
            return None
        raise ConfigError(key, "a value is required")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
                return True
            if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"expected true/false, got {value!r}")
        if tp is int:
            return _integer(value)
        if tp is float:
            return _number(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value
        if typing.get_origin(tp) is tuple:
            if isinstance(value, str):
                return tuple(p.strip() for p in value.split(",") if p.strip())
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError(f"expected a list of strings, got {value!r}")
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from exc
    raise ConfigError(key, f"unsupported type {tp}")  # pragma: no cover


def _integer(value: Any) -> int:
    """An int from TOML or text; the message is ours, never Python's ``invalid literal for int()``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def _number(value: Any) -> float:
    """A finite float from TOML or text (``nan``/``inf`` would slip past every range check)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
    else:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"expected a number, got {value!r}")
    return number


def _namespaces(raw: Any) -> dict[str, NamespaceConfig]:
    if not isinstance(raw, dict):
        raise ConfigError("namespaces", "must be a table of tables")
    out: dict[str, NamespaceConfig] = {}
    allowed = {f.name for f in dataclasses.fields(NamespaceConfig)}
    for name, opts in raw.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"namespaces.{name}", "must be a table")
        unknown = set(opts) - allowed
        if unknown:
            raise ConfigError(f"namespaces.{name}.{sorted(unknown)[0]}", "unknown option")
        if opts.get("subscribe", "any") not in {"any", "authenticated"}:
            raise ConfigError(f"namespaces.{name}.subscribe", "must be 'any' or 'authenticated'")
        for key in ("publish", "presence", "join_leave", "stamp_publisher"):
            value = opts.get(key)
            if key in opts and not isinstance(value, bool) and not (key == "presence" and value == "subscribers"):
                allowed_values = 'true, false or "subscribers"' if key == "presence" else "true or false"
                raise ConfigError(f"namespaces.{name}.{key}", f"must be {allowed_values}")
        for key in ("history_size", "history_ttl"):
            if key in opts and (not isinstance(opts[key], int | float) or opts[key] < 0):
                raise ConfigError(f"namespaces.{name}.{key}", "must be a number >= 0")
        out[name] = NamespaceConfig(**opts)
    return out


def _schedule(raw: Any) -> tuple[ScheduleConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("schedule", "must be an array of tables ([[schedule]])")
    jobs = []
    for i, entry in enumerate(raw):
        key = f"schedule[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(key, "must be a table")
        unknown = set(entry) - {"channel", "every", "call", "url", "name"}
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown option")
        channel = entry.get("channel")
        if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
            raise ConfigError(f"{key}.channel", "a valid channel name is required")
        every = entry.get("every")
        if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
            raise ConfigError(f"{key}.every", "must be a number of seconds > 0")
        call, url = entry.get("call"), entry.get("url")
        if (call is None) == (url is None):
            raise ConfigError(key, "needs exactly one of `call` or `url`")
        if call is not None and (not isinstance(call, str) or ":" not in call):
            raise ConfigError(f"{key}.call", "must be 'pkg.module:function'")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ConfigError(f"{key}.url", "must be an http(s) URL")
        name = entry.get("name") or f"{channel}#{i}"
        jobs.append(ScheduleConfig(channel=channel, every=float(every), call=call, url=url, name=str(name)))
    return tuple(jobs)


#: ``PUSHGATE_*`` variables that are not settings yet are read by pushgate or its tools: the TOML
#: file, the workers' port sharing, and the test suite's knobs (``PUSHGATE_TEST_*`` and caches).
RESERVED_ENV = frozenset({
    "PUSHGATE_CONFIG", "PUSHGATE_REUSE_PORT", "PUSHGATE_AUTOBAHN_ENV", "PUSHGATE_CHROMIUM",
    "PUSHGATE_NODE_CACHE", "PUSHGATE_SOCKJS_NODE_CACHE",
})
RESERVED_ENV_PREFIX = "PUSHGATE_TEST_"


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated :class:`Config` and where each setting's value came from: ``default``, the
    TOML file's path, ``PUSHGATE_<KEY>`` or ``--<key>`` (what ``pushgate config`` prints)."""

    config: Config
    sources: Mapping[str, str]


def load_config(
    *,
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from the three sources (see module docstring)."""
    return load_config_sources(file=file, env=env, cli=cli).config


def load_config_sources(
    *,
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """:func:`load_config`, keeping the source of every value.

    Every :class:`ConfigError` says which source held the bad value (``--port``,
    ``PUSHGATE_PORT`` or the file), so an operator knows where to fix it. An unknown
    ``PUSHGATE_*`` variable is an error too: a misspelt ``PUSHGATE_JWT_SECRT`` would otherwise
    start a node silently in dev mode.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = file or env.get("PUSHGATE_CONFIG")
    if path:
        path_source = str(path) if file else f"{path} (PUSHGATE_CONFIG)"
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from exc
        known = {f.name for f in dataclasses.fields(Config)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(key, f"unknown setting in {path}{_suggest(key, known)}")
            with _source(key, f"from {path}"):
                if key == "namespaces":
                    values[key] = _namespaces(value)
                elif key == "schedule":
                    values[key] = _schedule(value)
                else:
                    values[key] = _coerce(key, value)
            sources[key] = path_source
    _check_env_names(env)
    for f in SCALAR_FIELDS:
        env_key = "PUSHGATE_" + f.name.upper()
        if env_key in env:
            with _source(f.name, f"from {env_key}"):
                values[f.name] = _coerce(f.name, env[env_key])
            sources[f.name] = env_key
    for key, value in (cli or {}).items():
        if value is not None:
            flag = "--" + key.replace("_", "-")
            with _source(key, f"from {flag}"):
                values[key] = _coerce(key, value)
            sources[key] = flag
    cfg = Config(**values)
    try:
        _validate(cfg)
    except ConfigError as exc:
        where = sources.get(exc.key.split(".", 1)[0].split("[", 1)[0])
        if where is None:
            raise
        raise ConfigError(exc.key, f"{exc.message} (from {where})") from exc
    return LoadedConfig(cfg, {f.name: sources.get(f.name, "default") for f in dataclasses.fields(Config)})


@contextlib.contextmanager
def _source(key: str, where: str) -> Iterator[None]:
    """Add ``(from <where>)`` to a ConfigError about ``key`` raised inside the block."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(exc.key, f"{exc.message} ({where})") from exc


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""


def _check_env_names(env: Mapping[str, str]) -> None:
    settings = {"PUSHGATE_" + f.name.upper() for f in SCALAR_FIELDS}
    for name in sorted(env):
        if not name.startswith("PUSHGATE_") or name in settings or name in RESERVED_ENV:
            continue
        if name.startswith(RESERVED_ENV_PREFIX):
            continue
        toml_only = {"PUSHGATE_" + f.name.upper(): f.name
                     for f in dataclasses.fields(Config) if f.metadata.get("toml_only")}
        if name in toml_only:
            raise ConfigError(name, f"{toml_only[name]} can only be set in the TOML file (--config)")
        raise ConfigError(name, f"unknown environment variable{_suggest(name, settings)}")


def _validate(cfg: Config) -> None:
    # The backends own the list of URL schemes and the key-prefix rule (one place, light to
    # import: no redis-py), so a scheme the backends accept is never refused here and vice versa.
    from .backends.validation import check_prefix, check_url

    if not 0 <= cfg.port <= 65535:
        raise ConfigError("port", "must be 0..65535")
    if cfg.workers < 1:
        raise ConfigError("workers", "must be >= 1")
    try:
        scheme = check_url(cfg.broker)
    except ValueError as exc:
        raise ConfigError("broker", str(exc)) from exc
    if cfg.workers > 1 and scheme == "memory":
        raise ConfigError(
            "workers", "--workers > 1 needs a shared broker (--broker redis://...): memory brokers cannot share"
        )
    try:
        check_prefix(cfg.redis_prefix)
    except ValueError as exc:
        raise ConfigError("redis_prefix", str(exc)) from exc
    if cfg.jwt_secret and cfg.jwt_public_key:
        raise ConfigError("jwt_secret", "set either jwt_secret or jwt_public_key, not both")
    positive = ("max_message_size", "max_subscriptions", "write_buffer_limit", "ping_interval",
                "node_ttl", "lease_ttl", "sse_ping_interval", "handshake_timeout", "keepalive_timeout",
                "client_command_burst", "client_publish_bytes_burst", "max_json_depth", "broker_timeout",
                "idempotency_window", "stomp_heartbeat_tolerance", "stomp_transaction_frames",
                "sockjs_heartbeat", "sockjs_disconnect_delay", "sockjs_response_limit",
                "sockjs_max_pending_sessions", "gc_refreeze_connections",
                "broker_publish_max_in_flight")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(key, "must be > 0")
    for key in ("history_size", "history_ttl", "user_history_size", "user_history_ttl", "max_ack_wait",
                "drain_period", "max_connections", "max_connections_per_ip",
                "max_connections_per_user", "rate_limit_close_after", "history_max_channels",
                "history_max_bytes", "node_publish_rate", "client_command_rate", "client_publish_bytes_rate",
                "stomp_heartbeat", "flush_window", "flush_pacing"):
        if getattr(cfg, key) < 0:
            raise ConfigError(key, "must be >= 0")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        missing = "tls_cert" if cfg.tls_cert is None else "tls_key"
        raise ConfigError(missing, "set both tls_cert and tls_key, or neither")
    if cfg.jwks_url is not None and not cfg.jwks_url.startswith(("https://", "http://")):
        raise ConfigError("jwks_url", "must be an http(s) URL")
    if cfg.jwks_url and (cfg.jwt_secret or cfg.jwt_public_key):
        raise ConfigError("jwks_url", "set one of jwt_secret, jwt_public_key or jwks_url")
    bad = first_bad_network(cfg.trusted_proxies)
    if bad is not None:
        raise ConfigError("trusted_proxies", f"{bad!r} is not an IP network (CIDR)")
    if cfg.flush_pacing > MAX_FLUSH_PACING:
        raise ConfigError("flush_pacing", f"must be <= {MAX_FLUSH_PACING}")
    if cfg.flush_window > MAX_FLUSH_WINDOW:
        raise ConfigError("flush_window", f"must be <= {MAX_FLUSH_WINDOW} (it delays every frame by up to that long)")
    _validate_stomp(cfg)
    if cfg.log_level.lower() not in {"debug", "info", "warning", "error"}:
        raise ConfigError("log_level", "must be debug, info, warning or error")
    if cfg.log_format not in {"text", "json"}:
        raise ConfigError("log_format", "must be text or json")
    if cfg.production:
        # the rules live with the other secret rules (auth.startup_warnings uses them too)
        from .auth import production_problems

        problems = production_problems(cfg)
        if problems:
            first = next(iter(problems))
            raise ConfigError(first, "production: " + "; ".join(f"{k}: {v}" for k, v in problems.items()))


def _validate_stomp(cfg: Config) -> None:
    """STOMP paths and prefixes are ``/`` followed by something, without a trailing ``/``."""
    for key in ("stomp_paths", "stomp_broker_prefixes", "stomp_app_prefix", "stomp_user_prefix",
                "stomp_user_destination"):
        value = getattr(cfg, key)
        for item in value if isinstance(value, tuple) else (value,):
            if not item.startswith("/") or item.endswith("/") or len(item) < 2 or " " in item:
                raise ConfigError(key, f"{item!r} must start with '/', not end with one, and hold no spaces")
    if "/ws" in cfg.stomp_paths:
        raise ConfigError("stomp_paths", "/ws is the JSON endpoint (it speaks STOMP when the client offers it)")


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per scalar setting; unset flags stay None so lower layers show through."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (env PUSHGATE_CONFIG)")
    for f in SCALAR_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _field_type(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata['help']} [default: {default!r}; env PUSHGATE_{f.name.upper()}]"
        metavar = {int: "N", float: "SECONDS", bool: "BOOL"}.get(tp, "VALUE")
        parser.add_argument(flag, dest=f.name, default=None, metavar=metavar, help=help_text)


def cli_values(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name, None) for f in SCALAR_FIELDS}


def strip_flags(argv: Sequence[str], flags: set[str]) -> list[str]:
    """``argv`` without the ``--flag value`` and ``--flag=value`` pairs of ``flags`` (a command
    line passed on: worker processes, the header of a generated file)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def first_bad_network(cidrs: Iterable[str]) -> str | None:
    """The first of ``cidrs`` that is not an IP network (``10.0.0.0/8``, ``::1``), or None."""
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return cidr
    return None
