"""Command line: ``pushgate serve`` runs a node; ``pushgate publish`` pushes from a shell or cron job."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from .config import add_cli_options, cli_values, load_config
from .errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushgate", description="Real-time push gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
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
        description="Publish DATA (JSON; plain text is sent as a JSON string) to CHANNEL, to --users, "
        "or to everyone with --broadcast.",
    )
    pub.add_argument("channel", nargs="?", help="channel name (omit with --users or --broadcast)")
    pub.add_argument("data", help="JSON payload")
    pub.add_argument("--url", default="http://127.0.0.1:8080", help="node base URL [%(default)s]")
    pub.add_argument("--api-key", default=None, help="API key for --url (env PUSHGATE_API_KEY)")
    pub.add_argument("--broker", default=None, help="publish through this Redis URL instead of HTTP")
    pub.add_argument("--redis-prefix", default="pg", help="key prefix when using --broker [%(default)s]")
    pub.add_argument("--users", default=None, help="comma-separated user ids: send to these users")
    pub.add_argument("--broadcast", action="store_true", help="send to every connection")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args, argv)
    return _publish(args)


def _serve(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = load_config(file=args.config, cli=cli_values(args))
        app = None
        if config.app:
            from .app import load_app

            app = load_app(config.app)
        if config.workers > 1 and config.port == 0:
            raise ConfigError("port", "--workers > 1 needs a fixed port")
    except ConfigError as exc:
        print(f"pushgate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.workers > 1:
        from .server import serve_workers

        return serve_workers(config, argv)
    from .server import serve

    try:
        try:
            import uvloop

            return uvloop.run(serve(config, app))
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            return asyncio.run(serve(config, app))
    except ConfigError as exc:  # found while building the node: key file, schedule.call
        print(f"pushgate: {exc}", file=sys.stderr)
        return 2


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _publish(args: argparse.Namespace) -> int:
    import os

    data = _payload(args.data)
    users = [u for u in (args.users or "").split(",") if u]
    if not users and not args.broadcast and not args.channel:
        print("pushgate publish: give a CHANNEL, --users or --broadcast", file=sys.stderr)
        return 2
    if args.broker:
        from .publisher import Publisher

        async def via_broker() -> Any:
            async with Publisher(args.broker, prefix=args.redis_prefix) as pub:
                if users:
                    await pub.send_to_users(users, data)
                    return {}
                if args.broadcast:
                    await pub.broadcast(data)
                    return {}
                pos = await pub.publish(args.channel, data)
                return {"epoch": pos.epoch, "offset": pos.offset}

        print(json.dumps(asyncio.run(via_broker())))
        return 0
    import urllib.request

    if users:
        path, body = "/api/send", {"users": users, "data": data}
    elif args.broadcast:
        path, body = "/api/broadcast", {"data": data}
    else:
        path, body = "/api/publish", {"channel": args.channel, "data": data}
    headers = {"Content-Type": "application/json"}
    key = args.api_key or os.environ.get("PUSHGATE_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(args.url.rstrip("/") + path, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"pushgate publish: HTTP {exc.code}: {exc.read().decode()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pushgate publish: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
