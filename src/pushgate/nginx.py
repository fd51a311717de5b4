"""``pushgate nginx-config``: the nginx configuration for a pushgate cluster, written from a few facts.

Every directive that matters here was learned the hard way by people who put WebSocket servers
behind nginx by hand, so the generator writes the reason next to each one:

- ``map $http_upgrade $connection_upgrade``, ``proxy_http_version 1.1`` and the ``Upgrade`` /
  ``Connection`` headers, or the WebSocket handshake never reaches the node; the map sends
  ``Connection: ""`` on plain requests so they keep using the upstream ``keepalive`` pool.
- ``proxy_read_timeout`` derived from the heartbeats (:func:`read_timeout`): nginx cuts a proxied
  connection whose upstream stays silent that long (60 s by default). pushgate writes at least
  every ``ping_interval`` (WebSocket) and ``sse_ping_interval`` (SSE), so the timeout is 1.5× the
  longer one plus slack: an idle client is never cut, and a node that vanished without a TCP reset
  (power loss, partition) frees its clients within the same bound instead of an hour.
- ``least_conn`` (or round-robin), never ``ip_hash``: ``ip_hash`` maps a client address to one
  node, so a client of a dead node — and every client behind the same NAT — keeps being sent
  back to it until nginx marks it failed, and a restarted node gets no share of the reconnect
  wave. ``least_conn`` sends each new connection to the node with the fewest open ones, which is
  what long-lived connections need after a node restarts (round-robin would leave it near empty).
- ``proxy_next_upstream error timeout http_503``: a refused connect or a draining node's 503
  sends the handshake on to the next node. Never ``non_idempotent``: nginx would then resend a
  POST (``/api/publish``, SockJS ``xhr_send``) that a node may already have applied before
  failing; a refused connect is retried anyway, because nothing was sent.
- passive health checks (``max_fails`` / ``fail_timeout``) on the upstream of short requests only.
  nginx clears a failure mark when the next request to that node *ends* well; a WebSocket ends
  hours later, so with marks a restarted node got one connection per ``fail_timeout``. The
  upstream of WebSocket and SSE (no ``keepalive`` either: upgrades must reach the node's lean
  ``/ws`` front on fresh connections) has ``max_fails=0``.
- SockJS sessions (``<stomp_path>/<server>/<session>/...``) are several HTTP requests that must
  reach the node holding the session, so they go to a second upstream that hashes the session id
  (``hash ... consistent``, which still moves away from a failed node).
- ``/api`` and ``/metrics`` answer 404 on the public server; an internal server (loopback by
  default) proxies them for backends and Prometheus. pushgate believes ``X-Forwarded-For`` /
  ``X-Real-IP`` only from ``trusted_proxies``; the header comment says which value to set.

The output is the body of nginx's ``http { }`` context (include it from your nginx.conf);
:func:`standalone` wraps it into a whole file for a foreground nginx (tests, ``pushgate cluster up``).
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, first_bad_network, strip_flags

__all__ = ["NginxOptionError", "NginxOptions", "read_timeout", "render", "standalone"]

_HOST_PORT = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_LISTEN = re.compile(r"^(?:(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):)?(\d{1,5})$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9*_.~-]+$")
_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")
#: slack added to 1.5 x the heartbeat: scheduling delays, a busy node, a slow client's pong
READ_TIMEOUT_SLACK = 10.0
_DEFAULTS = Config()


class NginxOptionError(ValueError):
    """An option the generator cannot turn into a working config: one line naming the option."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


@dataclass(frozen=True, slots=True)
class NginxOptions:
    """What the generated config needs to know. Defaults are pushgate's own defaults."""

    upstreams: Sequence[str]
    listen: str = ""  # "" = 80, or 443 with TLS
    server_name: str = "_"
    tls_cert: str | None = None
    tls_key: str | None = None
    internal_listen: str = "127.0.0.1:8081"
    #: where the nodes see nginx's connections come from (their ``trusted_proxies``)
    proxy_addresses: Sequence[str] = ("127.0.0.1/32",)
    ping_interval: float = _DEFAULTS.ping_interval
    sse_ping_interval: float = _DEFAULTS.sse_ping_interval
    read_timeout: float | None = None  # None: derived from the heartbeats
    stomp_paths: Sequence[str] = field(default_factory=lambda: ("/stomp",))
    max_fails: int = 1
    fail_timeout: float = 5.0
    balance: str = "least_conn"
    keepalive: int = 64

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def read_timeout(ping_interval: float, sse_ping_interval: float) -> int:
    """Seconds for ``proxy_read_timeout``: above the longest silence a live node allows itself.

    A node writes to every WebSocket at least every ``ping_interval`` and to every SSE stream every
    ``sse_ping_interval``; it closes a peer silent for 1.5x ``ping_interval`` itself. nginx must
    wait longer than that, or it cuts healthy idle connections (its 60 s default did, for the
    people who wrote the seeds); much longer only delays noticing a node that vanished silently.
    """
    return math.ceil(1.5 * max(ping_interval, sse_ping_interval) + READ_TIMEOUT_SLACK)


def _check(opts: NginxOptions) -> None:
    if not opts.upstreams:
        raise NginxOptionError("--upstream", "give at least one node, e.g. --upstream 127.0.0.1:8001")
    for up in opts.upstreams:
        m = _HOST_PORT.match(up)
        if not m or not 0 < int(m.group(1)) < 65536:
            raise NginxOptionError("--upstream", f"{up!r} is not HOST:PORT")
    if len(set(opts.upstreams)) != len(opts.upstreams):
        raise NginxOptionError("--upstream", "the same node is given twice")
    for name, value in (("--listen", opts.listen), ("--internal-listen", opts.internal_listen)):
        m = _LISTEN.match(value)
        if value and (not m or not 0 < int(m.group(1)) < 65536):
            raise NginxOptionError(name, f"{value!r} is not PORT or ADDRESS:PORT")
    if not all(_SERVER_NAME.match(n) for n in opts.server_name.split()) or not opts.server_name.split():
        raise NginxOptionError("--server-name", f"{opts.server_name!r} is not a list of host names")
    if (opts.tls_cert is None) != (opts.tls_key is None):
        raise NginxOptionError("--tls-cert", "give --tls-cert and --tls-key together")
    for name, path in (("--tls-cert", opts.tls_cert), ("--tls-key", opts.tls_key)):
        if path is not None and (not path.startswith("/") or re.search(r"[\s;{}'\"#$]", path)):
            raise NginxOptionError(name, f"{path!r}: give an absolute path without spaces or quotes")
    if not opts.proxy_addresses:
        raise NginxOptionError("--proxy-address", "give at least one network")
    bad = first_bad_network(opts.proxy_addresses)
    if bad is not None:
        raise NginxOptionError("--proxy-address", f"{bad!r} is not an IP network")
    for name, v in (("--ping-interval", opts.ping_interval), ("--sse-ping-interval", opts.sse_ping_interval)):
        if not (v > 0 and math.isfinite(v)):
            raise NginxOptionError(name, "must be a positive number of seconds")
    floor = 1.5 * max(opts.ping_interval, opts.sse_ping_interval)
    if opts.read_timeout is not None and not (floor < opts.read_timeout < 10**7):
        raise NginxOptionError(
            "--read-timeout", f"{opts.read_timeout:g}s is not above 1.5 x the heartbeat ({floor:g}s): nginx would "
            "cut idle connections the node keeps alive")
    for path in opts.stomp_paths:
        if not _PATH.match(path) or path in ("/", "/ws", "/sse", "/api", "/metrics"):
            raise NginxOptionError("--stomp-path", f"{path!r} is not a STOMP endpoint path")
    if opts.balance not in ("least_conn", "round-robin"):
        raise NginxOptionError("--balance", "least_conn or round-robin (ip_hash pins clients to dead nodes)")
    if opts.max_fails < 1 or not 0 < opts.fail_timeout < 3600 or not 0 < opts.keepalive < 100000:
        raise NginxOptionError("--max-fails", "max_fails >= 1, 0 < fail_timeout < 3600, 0 < keepalive")


def _seconds(value: float) -> str:
    return f"{math.ceil(value)}s"


def _proxy(upstream: str, timeout_s: int, *, upgrade: bool, stream: bool) -> list[str]:
    """The directives every proxied location shares (``upgrade``: WebSocket; ``stream``: SSE/xhr)."""
    lines = [
        f"proxy_pass http://{upstream};",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;" if upgrade else None,
        "proxy_set_header Connection $connection_upgrade;" if upgrade else 'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        'proxy_set_header Forwarded "";',
        f"proxy_read_timeout {timeout_s}s;",
        f"proxy_send_timeout {timeout_s}s;",
        "proxy_buffering off;" if stream else None,
        "proxy_cache off;" if stream else None,
        "proxy_connect_timeout 1s;  # loopback or LAN: a live node answers in microseconds",
        "proxy_next_upstream error timeout http_503;",
        "proxy_next_upstream_tries 3;",
        "proxy_next_upstream_timeout 10s;",
    ]
    return [line for line in lines if line is not None]


def _location(match: str, body: list[str], indent: str = "    ") -> list[str]:
    return [f"{indent}location {match} {{", *(f"{indent}    {line}" for line in body), f"{indent}}}"]


def render(opts: NginxOptions, *, command: str | None = None) -> str:
    """The ``http { }`` body for ``opts`` (raises :class:`NginxOptionError` for a bad option).

    ``command``, when given, is written in the header so that the file says how to regenerate it.
    """
    _check(opts)
    timeout_s = int(opts.read_timeout) if opts.read_timeout is not None else read_timeout(
        opts.ping_interval, opts.sse_ping_interval)
    listen = opts.listen or ("443" if opts.tls else "80")
    internal = opts.internal_listen
    out: list[str] = [
        "# nginx in front of a pushgate cluster: WebSocket, SSE, STOMP/SockJS, failover; the HTTP API and",
        "# the metrics kept off the public server. Written by `pushgate nginx-config`"
        + (":" if command else "."),
    ]
    if command:
        out.append(f"#   {command}")
    out += [
        "# Include it inside `http { ... }` of your nginx.conf. Docs: docs/deployment.md#behind-nginx",
        "#",
        f"# Public server ({listen}{', TLS' if opts.tls else ''}): browsers and apps; /api and /metrics answer 404.",
        f"# Internal server ({internal}): your backends and Prometheus; /api and /metrics.",
        "#",
        "# Run every node with",
        f"#   trusted_proxies = [{', '.join(f'{chr(34)}{n}{chr(34)}' for n in opts.proxy_addresses)}]"
        f"   (or --trusted-proxies {','.join(opts.proxy_addresses)})",
        "# so it takes the client address from X-Forwarded-For / X-Real-IP (per-IP limits, logs) -- and",
        "# only from nginx: the same headers from anyone else are ignored. Without an api_key a node",
        "# serves /api only to loopback callers, which through the internal server means backends on",
        "# nginx's host; to call it from other machines set api_key and listen on a private address.",
        "#",
        "# X-Forwarded-For is appended to ($proxy_add_x_forwarded_for) and read from the right, so a",
        "# client's own value cannot hide its address; a client's own Forwarded header is cleared.",
        "#",
        f"# Timeouts: nodes write at least every ping_interval ({opts.ping_interval:g}s, WebSocket) and every",
        f"# sse_ping_interval ({opts.sse_ping_interval:g}s, SSE). proxy_read_timeout {timeout_s}s is above 1.5x the",
        "# longer one: idle connections live (nginx's 60 s default would cut a longer heartbeat), and a",
        "# node that vanished without a TCP reset frees its clients within that bound, not an hour.",
        "# Regenerate this file when you change either interval (or pass --config with the nodes' file).",
        "",
        "map $http_upgrade $connection_upgrade {",
        "    default upgrade;",
        '    ""      "";         # plain requests keep the upstream keep-alive connection',
        "}",
        "",
    ]
    stomp_re = "|".join(re.escape(p.strip("/")).replace("/", "\\/") for p in opts.stomp_paths)
    out += [
        "# A SockJS session is several requests that must reach the node holding it: hash its id.",
        "map $uri $pushgate_sockjs_session {",
        f'    "~^/(?:{stomp_re})/[^/.]+/(?<sid>[^/.]+)/"  $sid;',
        "    default  $request_id;   # /info and the like: any node",
        "}",
        "",
    ]
    servers = [f"    server {up} max_fails={opts.max_fails} fail_timeout={_seconds(opts.fail_timeout)};"
               for up in opts.upstreams]
    long_lived = [f"    server {up} max_fails=0;" for up in opts.upstreams]
    balance = ["    least_conn;"] if opts.balance == "least_conn" else ["    # round-robin (nginx's default)"]
    out += [
        "# WebSocket and SSE: long-lived connections.",
        "upstream pushgate_streams {",
        "    # least_conn, not ip_hash: ip_hash sends a client (and everyone behind its NAT) back to the",
        "    # same node, dead or not; a reconnect must land on a live node, and a restarted node",
        "    # must get its share of new connections.",
        *balance,
        "    # max_fails=0: no passive marking here. nginx clears a node's failure mark only when the",
        "    # next request it sends there *ends* well, and a WebSocket ends hours later: a node that",
        "    # failed once (killed, or draining with 503s) would get one connection per fail_timeout",
        "    # after its restart (measured: 1 of 150). Without the mark a dead node costs each new",
        "    # connection one refused connect (microseconds) before proxy_next_upstream moves on; a",
        "    # vanished host costs proxy_connect_timeout. The short requests below keep the marks.",
        *long_lived,
        "    # No keepalive pool on purpose: each upgrade then arrives on a fresh connection, which the",
        "    # node's lean /ws front answers (~2-4 KB per socket). An upgrade sent down a kept-alive",
        "    # connection that already carried a plain request is served by aiohttp (~16 KB, ~4x the",
        "    # accept CPU: docs/performance.md), and an upgraded connection never returns to a pool.",
        "}",
        "",
        "# Short requests: the page, pushgate.js, probes, and the API and metrics (internal server).",
        "# Passive health check: a node is skipped for fail_timeout after max_fails failed attempts.",
        "upstream pushgate {",
        *balance,
        *servers,
        f"    keepalive {opts.keepalive};  # after the balancing method, as nginx requires",
        "}",
        "",
        "upstream pushgate_sockjs {",
        "    hash $pushgate_sockjs_session consistent;  # moves only a failed node's sessions",
        "    # max_fails=0 as for the streams: xhr-streaming requests are long-lived too",
        *long_lived,
        f"    keepalive {opts.keepalive};",
        "}",
        "",
    ]
    if opts.tls:
        port = listen.rsplit(":", 1)[-1]
        out += [
            "# Plain HTTP only redirects: wss:// and https:// are terminated here, the nodes speak plain HTTP.",
            "server {",
            "    listen 80;",
            f"    server_name {opts.server_name};",
            f"    return 308 https://$host{'' if port == '443' else ':' + port}$request_uri;",
            "}",
            "",
        ]
    out += ["# Public.", "server {", f"    listen {listen}{' ssl' if opts.tls else ''};",
            f"    server_name {opts.server_name};"]
    if opts.tls:
        out += [
            f"    ssl_certificate     {opts.tls_cert};",
            f"    ssl_certificate_key {opts.tls_key};",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            "    ssl_session_cache shared:pushgate_tls:10m;",
            "    ssl_session_timeout 1h;",
        ]
    out += [
        "",
        "    # The HTTP API and the metrics are for your backends and monitoring only. `^~` makes these",
        "    # prefixes win over every other location; nginx matches the normalised path (%-decoded,",
        "    # `..` and `//` resolved), so /%61pi/publish or //api/publish end here too.",
        "    location ^~ /api     { return 404; }",
        "    location ^~ /metrics { return 404; }",
        "",
        "    # The page, pushgate.js, /healthz, /readyz (and any other WebSocket path, upgraded).",
        *_location("/", _proxy("pushgate", timeout_s, upgrade=True, stream=False)),
        "",
        "    # The WebSocket endpoint (JSON protocol, or STOMP when the client offers it).",
        *_location("= /ws", _proxy("pushgate_streams", timeout_s, upgrade=True, stream=False)),
        "",
        "    # SSE: each event must leave at once, so no buffering.",
        *_location("/sse", _proxy("pushgate_streams", timeout_s, upgrade=False, stream=True)),
    ]
    for path in opts.stomp_paths:
        out += ["", f"    # STOMP over WebSocket at {path}; SockJS under {path}/ (xhr-streaming: unbuffered).",
                *_location(f"= {path}", _proxy("pushgate_streams", timeout_s, upgrade=True, stream=False)),
                *_location(f"{path}/", _proxy("pushgate_sockjs", timeout_s, upgrade=True, stream=True))]
    out += [
        "}",
        "",
        "# Internal: backends and Prometheus. Keep it off the internet.",
        "server {",
        f"    listen {internal};",
        "",
        *_location("/", _proxy("pushgate", timeout_s, upgrade=True, stream=False)),
        "}",
        "",
    ]
    return "\n".join(out)


def standalone(http_body: str, prefix: Path, *, worker_connections: int = 4096, access_log: bool = False) -> str:
    """A whole nginx.conf around ``http_body`` that runs in the foreground with every file under
    ``prefix`` (error log, pid, temp paths): for tests and ``pushgate cluster up``, not for
    production, where the body is included from the system's nginx.conf."""
    temp = "\n".join(f"    {d}_temp_path {prefix / d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # the upstream columns show nginx's retries: "127.0.0.1:8002, 127.0.0.1:8001 503, 101"
    log = ("log_format pushgate_upstreams '$status $request_method $uri [$upstream_addr] [$upstream_status]';\n"
           f"    access_log {prefix / 'access.log'} pushgate_upstreams;") if access_log else "access_log off;"
    body = "\n".join(("    " + line) if line else "" for line in http_body.splitlines())
    return (f"daemon off;\nmaster_process off;\nerror_log {prefix / 'error.log'} warn;\npid {prefix / 'nginx.pid'};\n"
            f"events {{ worker_connections {worker_connections}; }}\n"
            f"http {{\n    {log}\n{temp}\n{body}\n}}\n")


# -- the command line (`pushgate nginx-config`) ------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pushgate nginx-config``'s options (the wiring lives here, next to what it configures)."""
    p = sub.add_parser(
        "nginx-config", help="write the nginx configuration for a cluster of nodes",
        description="Print (or write with -o) the nginx config for the nodes given with --upstream: "
        "WebSocket upgrade, SSE, SockJS affinity, failover, a read timeout derived from the heartbeats, "
        "/api and /metrics on an internal server only. Include it inside http { } of nginx.conf.",
    )
    p.add_argument("--upstream", action="append", required=True, metavar="HOST:PORT",
                   help="a node (repeat for each node)")
    p.add_argument("--listen", default="", metavar="[ADDR:]PORT", help="public listen [80, or 443 with TLS]")
    p.add_argument("--server-name", default="_", metavar="NAMES", help="public server_name [%(default)s]")
    p.add_argument("--tls-cert", default=None, metavar="PATH",
                   help="terminate TLS with this certificate chain (absolute path on the nginx host)")
    p.add_argument("--tls-key", default=None, metavar="PATH", help="the private key of --tls-cert")
    p.add_argument("--internal-listen", default="127.0.0.1:8081", metavar="[ADDR:]PORT",
                   help="the internal server for /api and /metrics [%(default)s]")
    p.add_argument("--proxy-address", action="append", default=None, metavar="CIDR",
                   help="where the nodes see nginx's connections come from: their trusted_proxies "
                        "(repeat for several) [127.0.0.1/32]")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="the nodes' TOML file: take ping_interval, sse_ping_interval and stomp_paths from it")
    p.add_argument("--ping-interval", type=float, default=None, metavar="SECONDS",
                   help=f"the nodes' ping_interval [the config's, else {_DEFAULTS.ping_interval:g}]")
    p.add_argument("--sse-ping-interval", type=float, default=None, metavar="SECONDS",
                   help=f"the nodes' sse_ping_interval [the config's, else {_DEFAULTS.sse_ping_interval:g}]")
    p.add_argument("--read-timeout", type=float, default=None, metavar="SECONDS",
                   help="proxy_read_timeout/proxy_send_timeout [1.5 x the longer heartbeat + 10]")
    p.add_argument("--balance", choices=("least_conn", "round-robin"), default="least_conn",
                   help="balancing method [%(default)s] (never ip_hash: it pins clients to dead nodes)")
    p.add_argument("--max-fails", type=int, default=1, help="passive health check: failures [%(default)s]")
    p.add_argument("--fail-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="passive health check: how long a failed node is skipped [%(default)s]")
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write here instead of stdout")


def options_from_args(args: argparse.Namespace) -> NginxOptions:
    """:class:`NginxOptions` from the parsed command line (flags over ``--config`` over defaults)."""
    from .config import load_config_sources

    config = load_config_sources(file=args.config, cli={}).config if args.config else _DEFAULTS
    return NginxOptions(
        upstreams=tuple(args.upstream), listen=args.listen, server_name=args.server_name,
        tls_cert=args.tls_cert, tls_key=args.tls_key, internal_listen=args.internal_listen,
        proxy_addresses=tuple(args.proxy_address or ("127.0.0.1/32",)),
        ping_interval=config.ping_interval if args.ping_interval is None else args.ping_interval,
        sse_ping_interval=config.sse_ping_interval if args.sse_ping_interval is None else args.sse_ping_interval,
        read_timeout=args.read_timeout, stomp_paths=tuple(config.stomp_paths), max_fails=args.max_fails,
        fail_timeout=args.fail_timeout, balance=args.balance,
    )


def command_line(argv: Sequence[str]) -> str:
    """``pushgate nginx-config ...`` as a shell would take it (for the file's header), minus -o."""
    return "pushgate " + " ".join(shlex.quote(arg) for arg in strip_flags(argv, {"-o", "--output"}))
