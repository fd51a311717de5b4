"""HTTP API for backends (``/api/*``), health, readiness and metrics.

Request bodies are decoded with msgspec into typed structs; ``data`` stays raw JSON and goes to
subscribers byte for byte. With an API key configured every ``/api`` call needs
``Authorization: Bearer <key>``; without one only loopback peers may call it.

:class:`Api` holds the node it serves; :meth:`Api.routes` and :meth:`Api.middleware` are
mounted by :func:`pushgate.web.build_app` (or on any aiohttp application).
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

from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from ..names import valid_channel
from .errors import classify, error_response
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


async def _body(request: web.Request, kind: type[T]) -> T:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise ClientError("bad_request", f"invalid body: {exc}") from exc
    except RecursionError:
        raise ClientError("bad_request", "invalid body: nested too deeply") from None


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(body), status=status, content_type="application/json")


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


class Api:
    """The HTTP API (``/api/*``) of one node, as its own aiohttp application.

    Being a sub-application scopes :meth:`middleware` (API-key auth, JSON error bodies) to the
    API by routing, not by matching path strings, so it stays right when the whole app is
    mounted under a prefix. The OpenAPI document is public: the middleware lets it through.
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    def routes(self) -> list[web.RouteDef]:
        """The API's routes, relative to where it is mounted (``/api`` in :func:`build_app`)."""
        return [
            web.post("/publish", self.publish),
            web.post("/broadcast", self.broadcast),
            web.post("/send", self.send),
            web.post("/disconnect", self.disconnect),
            web.get("/online", self.online),
            web.get("/presence/{channel}", self.presence),
            web.get("/history/{channel}", self.history),
            web.get("/channels", self.channels),
            web.get("/nodes", self.nodes),
            web.get("/openapi.json", self.openapi),
        ]

    def application(self) -> web.Application:
        """The API as an application to mount with ``add_subapp("/api", ...)``.

        The request body limit is the serving (root) application's ``client_max_size``.
        """
        app = web.Application(middlewares=[self.middleware])
        app.add_routes(self.routes())
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Auth for the API, and the one place that turns its errors into JSON error bodies."""
        if getattr(request.match_info.route, "handler", None) == self.openapi:
            return await handler(request)
        key = self.node.config.api_key
        if key:
            header = request.headers.get("Authorization", "")
            given = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), key.encode()):
                return error_response(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
        elif not _is_loopback(request.remote):
            return error_response(403, "forbidden", "no API key configured: only loopback clients may call /api")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(*classify(exc))
        except Exception as exc:
            verdict = classify(exc)
            if verdict.internal:
                log.exception("API %s %s failed", request.method, request.path)
            return error_response(*verdict)

    async def publish(self, request: web.Request) -> web.Response:
        body = await _body(request, PublishBody)
        pos = await self.node.publish(body.channel, bytes(body.data))
        return _json({"epoch": pos.epoch, "offset": pos.offset})

    async def broadcast(self, request: web.Request) -> web.Response:
        body = await _body(request, BroadcastBody)
        await self.node.broadcast(bytes(body.data))
        return _json({})

    async def send(self, request: web.Request) -> web.Response:
        body = await _body(request, SendBody)
        await self.node.send_to_users(body.users, bytes(body.data), sender=body.sender)
        return _json({})

    async def disconnect(self, request: web.Request) -> web.Response:
        body = await _body(request, DisconnectBody)
        await self.node.disconnect_user(body.user, CloseCode.DISCONNECTED, body.reason)
        return _json({})

    async def online(self, request: web.Request) -> web.Response:
        counts = await self.node.online()
        nodes = {n: {"connections": i.connections, "users": i.users} for n, i in counts.nodes.items()}
        return _json({"connections": counts.connections, "users": counts.users, "nodes": nodes})

    async def presence(self, request: web.Request) -> web.Response:
        p = await self.node.channel_presence(request.match_info["channel"])
        return _json({"channel": p.channel, "users": p.users, "connections": p.connections})

    async def history(self, request: web.Request) -> web.Response:
        # Validate before anything touches the broker: asking a Redis broker for the position of
        # a channel creates its meta key, and an invalid name must not create keys. (The node's
        # operations check the name as well; this keeps the order obvious here.)
        channel = valid_channel(request.match_info["channel"])
        since_offset = _int_param(request, "since_offset")
        limit = _int_param(request, "limit")
        epoch = request.query.get("epoch")
        since = None
        if since_offset is not None:
            if not epoch:
                epoch = (await self.node.position(channel)).epoch
            since = StreamPosition(epoch, since_offset)
        res = await self.node.history(channel, since, limit)
        return _json(
            {
                "channel": channel,
                "epoch": res.position.epoch,
                "offset": res.position.offset,
                "complete": res.complete,
                "publications": [{"offset": p.offset, "data": msgspec.Raw(p.data)} for p in res.publications],
            }
        )

    async def channels(self, request: web.Request) -> web.Response:
        local = self.node.local_channels()
        return _json({"channels": [{"channel": c, "subscribers": n} for c, n in sorted(local.items())]})

    async def nodes(self, request: web.Request) -> web.Response:
        return _json({"nodes": await self.node.presence.nodes()})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())


class Probes:
    """``/healthz`` (the process is up), ``/readyz`` (send traffic here) and ``/metrics``.

    Outside the API on purpose: load balancers and Prometheus call them without an API key.
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        node = self.node
        return _json({"status": "ok", "node": node.id, "scheduler_leader": node.scheduler.is_leader})

    async def readyz(self, request: web.Request) -> web.Response:
        node = self.node
        if node.ready:
            return _json({"status": "ready", "node": node.id})
        reason = "draining" if node.draining else "broker unavailable" if not node.broker.healthy else "starting"
        return _json({"status": "unavailable", "reason": reason, "node": node.id}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.node.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
