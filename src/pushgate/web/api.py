"""HTTP API for backends (``/api/*``), health, readiness and metrics.

Request bodies are decoded with msgspec into typed structs; ``data`` stays raw JSON and goes to
subscribers byte for byte. With an API key configured every ``/api`` call needs
``Authorization: Bearer <key>``; without one only loopback peers may call it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..backends import is_unavailable
from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from .openapi import openapi_document

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    data: msgspec.Raw


class BroadcastBody(msgspec.Struct, forbid_unknown_fields=True):
    data: msgspec.Raw


class SendBody(msgspec.Struct, forbid_unknown_fields=True):
    users: list[str]
    data: msgspec.Raw
    sender: str | None = None


class DisconnectBody(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    reason: str = "disconnected by server"


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _node(request: web.Request) -> Node:
    from ..server import NODE_KEY

    return request.app[NODE_KEY]


async def _body(request: web.Request, kind: type[T]) -> T:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise ClientError("bad_request", f"invalid body: {exc}") from exc


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth for /api, and one place that turns errors into JSON error bodies."""
    if not request.path.startswith("/api/") or request.path == "/api/openapi.json":
        return await handler(request)
    node = _node(request)
    key = node.config.api_key
    if key:
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), key.encode()):
            return error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
    elif not _is_loopback(request.remote):
        return error(403, "forbidden", "no API key configured: only loopback clients may call /api")
    try:
        return await handler(request)
    except ClientError as exc:
        return error(400, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error(exc.status, code, exc.reason)
    except Exception as exc:
        if is_unavailable(exc):
            return error(503, "unavailable", "broker unavailable, retry later")
        log.exception("API %s %s failed", request.method, request.path)
        return error(500, "internal", "internal error")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


async def publish(request: web.Request) -> web.Response:
    body = await _body(request, PublishBody)
    pos = await _node(request).publish(body.channel, bytes(body.data))
    return _json({"epoch": pos.epoch, "offset": pos.offset})


async def broadcast(request: web.Request) -> web.Response:
    body = await _body(request, BroadcastBody)
    await _node(request).broadcast(bytes(body.data))
    return _json({})


async def send(request: web.Request) -> web.Response:
    body = await _body(request, SendBody)
    await _node(request).send_to_users(body.users, bytes(body.data), sender=body.sender)
    return _json({})


async def disconnect(request: web.Request) -> web.Response:
    body = await _body(request, DisconnectBody)
    await _node(request).disconnect_user(body.user, CloseCode.DISCONNECTED, body.reason)
    return _json({})


async def online(request: web.Request) -> web.Response:
    counts = await _node(request).online()
    nodes = {n: {"connections": i.connections, "users": i.users} for n, i in counts.nodes.items()}
    return _json({"connections": counts.connections, "users": counts.users, "nodes": nodes})


async def presence(request: web.Request) -> web.Response:
    p = await _node(request).channel_presence(request.match_info["channel"])
    return _json({"channel": p.channel, "users": p.users, "connections": p.connections})


def _int_param(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise ClientError("bad_request", f"{name} must be an integer") from exc
    if number < 0:
        raise ClientError("bad_request", f"{name} must be >= 0")
    return number


async def history(request: web.Request) -> web.Response:
    channel = request.match_info["channel"]
    since_offset = _int_param(request, "since_offset")
    limit = _int_param(request, "limit")
    epoch = request.query.get("epoch")
    since = None
    if since_offset is not None:
        if not epoch:
            current = await _node(request).broker.position(channel)
            epoch = current.epoch
        since = StreamPosition(epoch, since_offset)
    res = await _node(request).history(channel, since, limit)
    return _json(
        {
            "channel": channel,
            "epoch": res.position.epoch,
            "offset": res.position.offset,
            "complete": res.complete,
            "publications": [{"offset": p.offset, "data": msgspec.Raw(p.data)} for p in res.publications],
        }
    )


async def channels(request: web.Request) -> web.Response:
    local = _node(request).local_channels()
    return _json({"channels": [{"channel": c, "subscribers": n} for c, n in sorted(local.items())]})


async def nodes(request: web.Request) -> web.Response:
    return _json({"nodes": await _node(request).presence.nodes()})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def healthz(request: web.Request) -> web.Response:
    node = _node(request)
    return _json({"status": "ok", "node": node.id, "scheduler_leader": node.scheduler.is_leader})


async def readyz(request: web.Request) -> web.Response:
    node = _node(request)
    if node.ready:
        return _json({"status": "ready", "node": node.id})
    reason = "draining" if node.draining else "broker unavailable" if not node.broker.healthy else "starting"
    return _json({"status": "unavailable", "reason": reason, "node": node.id}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(_node(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/publish", publish)
    app.router.add_post("/api/broadcast", broadcast)
    app.router.add_post("/api/send", send)
    app.router.add_post("/api/disconnect", disconnect)
    app.router.add_get("/api/online", online)
    app.router.add_get("/api/presence/{channel}", presence)
    app.router.add_get("/api/history/{channel}", history)
    app.router.add_get("/api/channels", channels)
    app.router.add_get("/api/nodes", nodes)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
