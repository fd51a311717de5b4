"""Command line: ``pushgate serve`` runs a node; the other commands talk to a running cluster.

``publish`` pushes from a shell or cron job; ``listen`` prints a channel's messages as JSON lines;
``history``, ``presence`` and ``online`` read the cluster's state through a node's HTTP API;
``config`` prints the effective configuration with the source of every value (or checks it);
``token`` mints a JWT for development. Errors a user can cause are one line on stderr, never a
traceback: exit code 2 for bad configuration or usage, 1 when something else fails (the port
is taken, the broker or the node cannot be reached), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from . import __version__
from .config import SCALAR_FIELDS, Config, add_cli_options, cli_values, load_config_sources
from .errors import BrokerUnavailable, ClientError, ConfigError, PushgateError, StartupError

DEFAULT_URL = "http://127.0.0.1:8080"
#: shown as ``***`` by ``pushgate config`` (the output ends up in tickets and chat)
SECRET_SETTINGS = frozenset({"jwt_secret", "api_key"})


class UsageError(Exception):
    """A command line that cannot be run as given: one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushgate", description="Real-time push gateway.",
        epilog="Exit codes: 0 ok, 1 failure (port taken, broker or node unreachable), 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"pushgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run a node",
        description="Run a pushgate node. Settings come from defaults < --config TOML < PUSHGATE_* env "
        "< these flags.",
    )
    add_cli_options(serve)

    pub = sub.add_parser(
        "publish",
        help="publish a message (through a node's HTTP API or straight through the broker)",
        description="pushgate publish CHANNEL DATA | --users a,b DATA | --broadcast DATA. DATA is JSON "
        "(plain text is sent as a JSON string); '-' reads it from stdin.",
    )
    pub.add_argument("words", nargs="+", metavar="[CHANNEL] DATA", help="channel (unless --users/--broadcast), data")
    _http_options(pub)
    pub.add_argument("--broker", default=None, help="publish through this Redis URL instead of HTTP")
    pub.add_argument("--redis-prefix", default=None,
                     help="key prefix with --broker [the config's redis_prefix, else 'pg']")
    pub.add_argument("--config", metavar="FILE", default=None,
                     help="with --broker: the nodes' TOML file (env PUSHGATE_CONFIG), so namespace history "
                     "settings apply as on a node")
    pub.add_argument("--users", default=None, help="comma-separated user ids: send to these users")
    pub.add_argument("--broadcast", action="store_true", help="send to every connection")

    listen = sub.add_parser(
        "listen", help="print a channel's messages as JSON lines",
        description="Subscribe to CHANNEL over WebSocket and print one JSON object per message "
        '({"channel", "epoch", "offset", "data"}, and "from" when a client published it); '
        'a gap the server could not fill prints '
        '{"resync": ...}. Reconnects and recovers on its own. Ctrl-C stops.',
    )
    listen.add_argument("channel")
    listen.add_argument("--since", metavar="EPOCH:OFFSET", help="first replay what came after this position")
    listen.add_argument("--url", default=DEFAULT_URL, help="node base URL [%(default)s]")
    listen.add_argument("--user", default=None, help="dev mode: connect as this user")
    listen.add_argument("--token", default=None, help="JWT (env PUSHGATE_TOKEN)")
    listen.add_argument("--count", type=int, default=0, metavar="N", help="exit after N messages (0: never)")
    listen.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up if the first connection takes longer [%(default)s]")

    hist = sub.add_parser("history", help="print a channel's history (JSON)")
    hist.add_argument("channel")
    hist.add_argument("--since", metavar="EPOCH:OFFSET", help="only what came after this position")
    hist.add_argument("--limit", type=int, default=None, metavar="N", help="at most N publications")
    _http_options(hist)

    pres = sub.add_parser("presence", help="print who is subscribed to a channel (JSON)")
    pres.add_argument("channel")
    _http_options(pres)

    online = sub.add_parser("online", help="print cluster-wide online counts (JSON)")
    _http_options(online)

    conf = sub.add_parser(
        "config", help="print the effective configuration and where each value came from",
        description="Load the configuration exactly as `serve` would (same flags, env and file) and print "
        "every setting with its source, secrets masked. --check prints nothing on success; exit 2 if invalid.",
    )
    conf.add_argument("--check", action="store_true", help="only validate")
    conf.add_argument("--json", action="store_true", help="print JSON: {key: {value, source}}")
    add_cli_options(conf)

    tok = sub.add_parser(
        "token", help="mint a development JWT (HS256) for a user",
        description="Sign a token with the configured jwt_secret (--jwt-secret, PUSHGATE_JWT_SECRET or "
        "--config), with the configured audience and issuer. For development and tests: production "
        "tokens come from your identity provider.",
    )
    tok.add_argument("user", help="the `sub` claim")
    tok.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS", help="lifetime [%(default)s]")
    tok.add_argument("--channel", action="append", default=None, metavar="PATTERN",
                     help="limit subscriptions to these channel patterns (repeatable; `channels` claim)")
    tok.add_argument("--config", metavar="FILE", default=None, help="TOML config file (env PUSHGATE_CONFIG)")
    tok.add_argument("--jwt-secret", default=None, help="HS256 secret (env PUSHGATE_JWT_SECRET)")

    from . import cluster_up, nginx

    nginx.add_parser(sub)
    cluster_up.add_parser(sub)
    return parser


def _http_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="node base URL [%(default)s]")
    parser.add_argument("--api-key", default=None, help="API key (env PUSHGATE_API_KEY)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "publish": _publish, "listen": _listen, "history": _history, "presence": _presence,
        "online": _online, "config": _config, "token": _token,
        "nginx-config": lambda a: _nginx_config(a, argv), "cluster": _cluster,
    }
    who = "pushgate" if args.command == "serve" else f"pushgate {args.command}"
    try:
        if args.command == "serve":
            return _serve(args, argv)
        return commands[args.command](args)
    except (ConfigError, UsageError, ClientError) as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 2
    except (StartupError, BrokerUnavailable, RequestFailed) as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `pushgate config | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    loaded = load_config_sources(file=args.config, cli=cli_values(args))
    config = loaded.config
    app = None
    if config.app:
        from .app import load_app

        app = load_app(config.app)
    if config.workers > 1 and config.port == 0:
        raise ConfigError("port", "--workers > 1 needs a fixed port")
    from .logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    if config.workers > 1:
        from .server import serve_workers

        return serve_workers(config, argv)
    from redis.exceptions import RedisError

    from .server import serve

    try:
        return _run(serve(config, app))
    except BrokerUnavailable as exc:
        # Chosen: fail at once rather than start not-ready. A node that cannot reach its broker
        # at start has nothing to serve; systemd, Kubernetes and compose restart it (with backoff).
        raise StartupError(f"broker {_redact(config.broker)} unreachable at start-up: {exc}") from exc
    except RedisError as exc:  # something answers there, but not as Redis does (wrong port, a proxy)
        raise StartupError(f"broker {_redact(config.broker)} did not answer as Redis/Valkey at start-up: "
                           f"{' '.join(str(exc).split())[:300]}") from exc


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)


def _redact(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` → ``redis://host``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url


def _payload(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _publish(args: argparse.Namespace) -> int:
    users = [u for u in (args.users or "").split(",") if u]
    words: list[str] = args.words
    if users or args.broadcast:
        if users and args.broadcast:
            raise UsageError("give --users or --broadcast, not both")
        if len(words) != 1:
            raise UsageError("with --users or --broadcast give only DATA (no channel)")
        channel, text = None, words[0]
    elif len(words) == 2:
        channel, text = words
    elif len(words) == 1:
        raise UsageError(f"no DATA to publish to {words[0]!r}: pushgate publish CHANNEL DATA "
                         "(DATA '-' reads stdin; --users or --broadcast instead of CHANNEL)")
    else:
        raise UsageError("too many arguments: pushgate publish CHANNEL DATA (quote DATA)")
    if args.broker is not None and args.broker.lower().startswith("memory:"):
        raise UsageError("--broker memory:// reaches no node (each process has its own); give the nodes' "
                         "redis:// URL, or publish through --url")
    data = _payload(text)
    if args.broker:
        print(json.dumps(_run(_publish_via_broker(args, channel, users, data))))
        return 0
    if users:
        path, body = "/api/send", {"users": users, "data": data}
    elif args.broadcast:
        path, body = "/api/broadcast", {"data": data}
    else:
        path, body = "/api/publish", {"channel": channel, "data": data}
    print(json.dumps(_request(args, "POST", path, body)))
    return 0


async def _publish_via_broker(args: argparse.Namespace, channel: str | None, users: list[str], data: Any) -> Any:
    """Publish through the broker with the nodes' history settings (``--config``, env), so a
    namespace's ``history_size`` holds whichever way a message entered the cluster."""
    from .publisher import Publisher

    flags = {"broker": args.broker, "redis_prefix": args.redis_prefix}
    config = load_config_sources(file=args.config, cli=flags).config
    async with Publisher(args.broker, config=config) as pub:
        if users:
            positions = await pub.send_to_users(users, data)
            return {u: {"epoch": p.epoch, "offset": p.offset} for u, p in positions.items()}
        if args.broadcast:
            return {"sent": await pub.broadcast(data)}
        assert channel is not None
        pos = await pub.publish(channel, data)
        return {"epoch": pos.epoch, "offset": pos.offset}


class RequestFailed(PushgateError):
    """The node could not be reached or answered with an error (exit code 1)."""


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One call to a node's HTTP API; its JSON answer, or :class:`RequestFailed` in one line."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    key = args.api_key or os.environ.get("PUSHGATE_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = args.url.rstrip("/") + path
    req = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip()
        raise RequestFailed(f"{method} {url}: HTTP {exc.code}: {detail[:500]}") from exc
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RequestFailed(f"{method} {url}: {reason}") from exc
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RequestFailed(f"{method} {url}: the answer is not JSON") from exc


def _position(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    epoch, sep, offset = text.rpartition(":")
    if not sep or not epoch or not offset.isdigit():
        raise UsageError(f"--since {text!r}: expected EPOCH:OFFSET, e.g. 9f2c4e1ab03d7e55:40")
    return epoch, int(offset)


def _history(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {}
    since = _position(args.since)
    if since is not None:
        query.update(epoch=since[0], since_offset=since[1])
    if args.limit is not None:
        query["limit"] = args.limit
    path = "/api/history/" + urllib.parse.quote(args.channel, safe="")
    if query:
        path += "?" + urllib.parse.urlencode(query)
    print(json.dumps(_request(args, "GET", path)))
    return 0


def _presence(args: argparse.Namespace) -> int:
    print(json.dumps(_request(args, "GET", "/api/presence/" + urllib.parse.quote(args.channel, safe=""))))
    return 0


def _online(args: argparse.Namespace) -> int:
    print(json.dumps(_request(args, "GET", "/api/online")))
    return 0


def _listen(args: argparse.Namespace) -> int:
    since = _position(args.since)
    token = args.token or os.environ.get("PUSHGATE_TOKEN")
    return _run(_listen_loop(args, since, token))


async def _listen_loop(args: argparse.Namespace, since: tuple[str, int] | None, token: str | None) -> int:
    from .client import Client, HandshakeError, Position, PushgateClientError, Resync

    base = args.url.rstrip("/")
    ws_url = ("wss://" + base[8:] if base.startswith("https://") else "ws://" + base.removeprefix("http://")) + "/ws"
    client = Client(ws_url, user=args.user, token=token)
    seen = 0
    try:
        try:
            # the first connection is bounded (a wrong --url must not hang); later ones are retried
            async with asyncio.timeout(args.connect_timeout):
                await client.connect()
        except TimeoutError:
            raise RequestFailed(f"{ws_url}: no connection within {args.connect_timeout:g}s "
                                "(is a node running there?)") from None
        client.on("resync", lambda ev: _print_resync(ev) if isinstance(ev, Resync) else None)
        sub = await client.subscribe(args.channel, since=Position(*since) if since else None)
        async for msg in sub:
            line = {"channel": msg.channel, "epoch": msg.epoch, "offset": msg.offset, "data": msg.data}
            if msg.sender is not None:
                line["from"] = msg.sender
            print(json.dumps(line), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except HandshakeError as exc:
        raise RequestFailed(f"{ws_url}: {exc}") from exc
    except PushgateClientError as exc:
        raise RequestFailed(f"{args.channel}: {exc}") from exc
    except OSError as exc:
        raise RequestFailed(f"{ws_url}: {exc}") from exc
    finally:
        await client.close()
    return 0


def _print_resync(event: Any) -> None:
    print(json.dumps({"resync": {"channel": event.channel, "epoch": event.position.epoch,
                                 "offset": event.position.offset}}), flush=True)


def _config(args: argparse.Namespace) -> int:
    loaded = load_config_sources(file=args.config, cli=cli_values(args))
    if args.check:
        return 0
    shown = {f.name: _shown(f.name, getattr(loaded.config, f.name)) for f in SCALAR_FIELDS}
    if args.json:
        print(json.dumps({k: {"value": v, "source": loaded.sources[k]} for k, v in shown.items()}, indent=2))
        return 0
    width = max(map(len, shown))
    for key, value in shown.items():
        print(f"{key:<{width}} = {json.dumps(value)}  # {loaded.sources[key]}")
    for key in ("namespaces", "schedule"):
        if loaded.sources[key] != "default":
            print(f"{key:<{width}} = ({len(getattr(loaded.config, key))} in {loaded.sources[key]})")
    return 0


def _nginx_config(args: argparse.Namespace, argv: list[str]) -> int:
    from .nginx import NginxOptionError, command_line, options_from_args, render

    try:
        text = render(options_from_args(args), command=command_line(argv))
    except NginxOptionError as exc:
        raise UsageError(str(exc)) from exc
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w") as f:
            f.write(text)
    except OSError as exc:
        raise RequestFailed(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from .cluster_up import run

    return run(args)


def _shown(key: str, value: Any) -> Any:
    if key in SECRET_SETTINGS and value:
        return "***"
    return list(value) if isinstance(value, tuple) else value


def _token(args: argparse.Namespace) -> int:
    import jwt

    config: Config = load_config_sources(file=args.config, cli={"jwt_secret": args.jwt_secret}).config
    if not config.jwt_secret:
        raise UsageError("no jwt_secret configured (give --jwt-secret, PUSHGATE_JWT_SECRET or --config): "
                         "a node in dev mode needs no token, connect with ?user=<id>")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": args.user, "iat": now, "exp": now + int(args.ttl)}
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    if args.channel:
        claims["channels"] = args.channel
    with warnings.catch_warnings():  # a short secret is the node's to warn about, at start-up
        warnings.simplefilter("ignore")
        print(jwt.encode(claims, config.jwt_secret, algorithm="HS256"))
    return 0


logging.getLogger(__name__).addHandler(logging.NullHandler())

if __name__ == "__main__":
    raise SystemExit(main())
