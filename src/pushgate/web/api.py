"""HTTP API for backends (``/api/*``), health, readiness and metrics.

Request bodies are decoded with msgspec into typed structs; ``data`` stays raw JSON and goes to
subscribers byte for byte. With an API key configured every ``/api`` call needs
``Authorization: Bearer <key>``. Without one the API trusts "this machine", and three checks keep
other machines from borrowing that trust (:func:`keyless_refusal`): the caller is on loopback and
no proxy stands between it and us (a proxy on the same host makes everyone look local), the
``Host`` names this machine by a loopback name (a DNS-rebinding page reaches us under its own
domain name), and POST bodies are ``application/json`` (a cross-site form can only send
``text/plain``, form or multipart bodies without a CORS preflight, which we never answer).

:class:`Api` holds the node it serves; :meth:`Api.routes` and :meth:`Api.middleware` are
mounted by :func:`pushgate.web.build_app` (or on any aiohttp application).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..backends.broker import StreamPosition
from ..errors import ClientError, CloseCode
from ..names import valid_channel, valid_users
from ..protocol import jsonwire
from .errors import Classified, classify, error_response
from .openapi import openapi_document
from .peer import client_address, forwarded_clients, has_forwarding_headers, is_trusted_proxy

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    data: msgspec.Raw
    idempotency_key: str | None = None


class BroadcastBody(msgspec.Struct, forbid_unknown_fields=True):
    data: msgspec.Raw
    idempotency_key: str | None = None


class SendBody(msgspec.Struct, forbid_unknown_fields=True):
    users: list[str]
    data: msgspec.Raw
    sender: str | None = None
    idempotency_key: str | None = None
    wait_for_ack: float | None = None  # seconds to wait for the recipients' acks (delivery receipts)
    destination: str | None = None  # STOMP recipients receive it on /user<destination>


class DisconnectBody(msgspec.Struct, forbid_unknown_fields=True):
    user: str
    reason: str = "disconnected by server"


JSON_ONLY_MESSAGE = "POST bodies must be sent with Content-Type: application/json"
MAX_REASON_CHARS = 512  # the close reason a kicked client reads; WebSocket keeps its first 123 bytes


async def _body(request: web.Request, kind: type[T], read_timeout: float) -> T:
    """The request body decoded as ``kind``; anything wrong with it is a ``bad_request``.

    The body must arrive within ``read_timeout`` (the ``handshake_timeout`` setting): a client
    that sends a head and then trickles, or never finishes, a body would otherwise hold the
    handler forever (aiohttp has no body timeout of its own and, for a chunk-size error that
    arrives after the head, never wakes the reading handler).

    ``asyncio.timeout`` rather than ``wait_for``: a body that already arrived with the head (the
    common case) is read without a task switch, so the handler goes on in the same loop
    iteration. That matters for fan-out: broadcasts handled in one iteration leave in one write
    per socket (the hub's coalescing); a task per body spread them over iterations and cost
    about 30 % of fan-out throughput with 16 requests in flight (bench/fanout.py, N=5k).
    """
    try:
        async with asyncio.timeout(read_timeout):
            raw = await request.read()
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        # a broken chunked or compressed body, or fewer bytes than Content-Length: the client's fault
        raise ClientError("bad_request", "malformed request body") from exc
    except ConnectionError as exc:
        raise ClientError("bad_request", "request body incomplete: the connection closed") from exc
    except TimeoutError as exc:
        raise ClientError("request_timeout", f"request body not complete within {read_timeout:g} s") from exc
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise ClientError("bad_request", f"invalid body: {exc}") from exc
    except RecursionError:
        raise ClientError("bad_request", "invalid body: nested too deeply") from None


def _valid_reason(reason: str) -> str:
    """``reason`` if it is 1..``MAX_REASON_CHARS`` characters of text, else a ``bad_request``.

    Control characters (NUL, escape sequences that repaint a terminal showing a log) have no
    place in a close reason; tabs and line breaks are prose. A lone surrogate cannot be encoded
    as UTF-8 at all (msgspec already refuses a JSON ``\\ud800``; checked again here so it can
    never fail later, on a socket of another node).
    """
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise ClientError("bad_request", f"reason must be 1-{MAX_REASON_CHARS} characters")
    if not reason.isprintable() and not all(c.isprintable() or c in "\t\n\r" for c in reason):
        raise ClientError("bad_request", "reason must be text (no control characters but tabs and line breaks)")
    try:
        reason.encode()
    except UnicodeEncodeError as exc:
        raise ClientError("bad_request", "reason must be valid Unicode text") from exc
    return reason


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_is_loopback(host: str | None) -> bool:
    """True when a ``Host`` header names this machine by a loopback name, with or without a port.

    ``localhost`` or a loopback IP literal (``127.0.0.1``, any of 127/8, ``[::1]``). A DNS
    rebinding attack needs a domain name of its own to point at 127.0.0.1, and the browser
    sends that name as ``Host``, so only names that cannot be rebound pass.
    """
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name, closed, rest = host[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return False
    else:
        name, colon, port = host.partition(":")
        if colon and not port.isdigit():
            return False
    return name == "localhost" or _is_loopback(name)


def keyless_refusal(request: web.Request, trusted_proxies: tuple[str, ...]) -> Classified | None:
    """Why a call to an API without a key is refused, or None: only this machine may call it.

    * Through a proxy (``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP`` present): only from a
      trusted proxy, and only when every one of those headers names a loopback client. A proxy
      on the same host connects from 127.0.0.1 for every internet client; its headers are the
      only thing that tells them apart.
    * Otherwise the TCP peer must be loopback.
    * ``Host`` must be a loopback name (:func:`host_is_loopback`): DNS rebinding.
    * A POST must be ``application/json`` (CSRF): answered 415.
    """
    if has_forwarding_headers(request):
        clients = forwarded_clients(request, trusted_proxies)
        if not is_trusted_proxy(request, trusted_proxies) or not all(_is_loopback(c) for c in clients):
            return Classified(403, "forbidden", "no API key configured: requests through a proxy (Forwarded, "
                              "X-Forwarded-For or X-Real-IP) are refused unless a trusted proxy forwards them "
                              "for a loopback client; set api_key to call /api through a proxy")
    elif not _is_loopback(request.remote):
        return Classified(403, "forbidden", "no API key configured: only loopback clients may call /api "
                          "(set api_key)")
    if not host_is_loopback(request.headers.get("Host")):
        return Classified(403, "forbidden", "no API key configured: the Host header must name this machine "
                          "(localhost, 127.0.0.1 or [::1]); set api_key to call /api under another name")
    if request.method == "POST" and request.content_type != "application/json":
        return Classified(415, "unsupported_media_type", JSON_ONLY_MESSAGE)
    return None


def _publication(offset: int, entry: bytes) -> dict[str, Any]:
    """One history entry as the API shows it: ``from`` when a client published it (stamped)."""
    sender, data = jsonwire.unstamp(entry)
    item: dict[str, Any] = {"offset": offset, "data": msgspec.Raw(data)}
    if sender is not None:
        item["from"] = sender
    return item


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
            web.get("/info", self.info),
            web.get("/users/{user}/connections", self.user_connections),
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
        config = self.node.config
        refusal = self._key_refusal(request, config.api_key) if config.api_key else keyless_refusal(
            request, config.trusted_proxies)
        if refusal is not None:
            # one line, no traceback: a client decides how often this is logged
            log.info("API %s %s from %s refused: %s %s", request.method, request.path,
                     client_address(request, config.trusted_proxies), refusal.status, refusal.code)
            return error_response(*refusal)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(*classify(exc))
        except Exception as exc:
            verdict = classify(exc)
            if verdict.internal:
                log.exception("API %s %s from %s failed", request.method, request.path,
                              client_address(request, config.trusted_proxies))
            return error_response(*verdict)

    @staticmethod
    def _key_refusal(request: web.Request, key: str) -> Classified | None:
        """With a key the key decides, wherever the call comes from (compared in constant time)."""
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if hmac.compare_digest(given.encode(), key.encode()):
            return None
        return Classified(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")

    async def _body(self, request: web.Request, kind: type[T]) -> T:
        return await _body(request, kind, self.node.config.handshake_timeout)

    async def publish(self, request: web.Request) -> web.Response:
        body = await self._body(request, PublishBody)
        # the key's rule (1-128 of A-Z a-z 0-9 _ . : ~ + / = -) is the brokers', checked there once
        pos = await self.node.publish(body.channel, bytes(body.data), idempotency_key=body.idempotency_key)
        return _json({"epoch": pos.epoch, "offset": pos.offset})

    async def broadcast(self, request: web.Request) -> web.Response:
        body = await self._body(request, BroadcastBody)
        await self.node.broadcast(bytes(body.data), idempotency_key=body.idempotency_key)
        return _json({})  # a retry the key made a no-op answers the same

    async def send(self, request: web.Request) -> web.Response:
        body = await self._body(request, SendBody)
        wait = body.wait_for_ack
        if wait is not None and not 0 <= wait <= self.node.config.max_ack_wait:
            raise ClientError("bad_request", f"wait_for_ack must be 0..{self.node.config.max_ack_wait:g} seconds")
        async with contextlib.AsyncExitStack() as stack:
            # listen for acks before sending: a quick device may ack before the send returns
            users = valid_users(body.users)
            receipts = None if wait is None else await stack.enter_async_context(self.node.receipts(users))
            positions = await self.node.send_to_users(
                users, bytes(body.data), sender=body.sender, idempotency_key=body.idempotency_key,
                destination=body.destination,
            )
            config = self.node.config
            reply: dict[str, Any] = {
                "stored": config.user_history_size > 0 and config.user_history_ttl > 0,
                "positions": {u: {"epoch": p.epoch, "offset": p.offset} for u, p in positions.items()},
                # connections of each user open right now, cluster-wide: they got it live
                "live": await self.node.presence.user_connections(list(positions)),
            }
            if receipts is not None and wait is not None:
                acked = await receipts.wait(positions, wait)
                reply["acked"] = {u: conns for u, conns in acked.items() if conns is not None}
                reply["pending"] = [u for u, conns in acked.items() if conns is None]
        return _json(reply)

    async def disconnect(self, request: web.Request) -> web.Response:
        body = await self._body(request, DisconnectBody)
        reason = _valid_reason(body.reason)
        await self.node.disconnect_user(body.user, CloseCode.DISCONNECTED, reason)
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
                "publications": [_publication(p.offset, p.data) for p in res.publications],
            }
        )

    async def channels(self, request: web.Request) -> web.Response:
        local = self.node.local_channels()
        return _json({"channels": [{"channel": c, "subscribers": n} for c, n in sorted(local.items())]})

    async def nodes(self, request: web.Request) -> web.Response:
        return _json({"nodes": await self.node.presence.nodes()})

    async def info(self, request: web.Request) -> web.Response:
        """What a dashboard or the page shows first: which node, which build, which mode."""
        node = self.node
        hub = node.hub
        return _json({
            "node": node.id,
            "version": __version__,
            "mode": "jwt" if node.config.jwt_enabled else "dev",
            "broker": node.config.broker.split("://", 1)[0],
            "ready": node.ready,
            "draining": node.draining,
            "connections": len(hub.connections),
            "users": hub.user_count(),
            "channels": hub.channel_count(),
        })

    async def user_connections(self, request: web.Request) -> web.Response:
        """A user's connections: the count on every live node, and each one held by this node.

        Other nodes' connections are counted (presence) but not listed: listing them would take
        a request to every node, and the page asks the node it is connected to.
        """
        (user,) = valid_users([request.match_info["user"]])
        counts = await self.node.presence.user_connections([user])
        local = sorted(self.node.hub.users.get(user, ()), key=lambda c: c.id)
        return _json({
            "user": user,
            "connections": counts.get(user, 0),
            "node": self.node.id,
            "here": [{"id": c.id, "transport": c.transport_name, "address": c.address,
                      "channels": sorted(ch for ch in c.channels if ch[:1] != "!")} for c in local],
        })

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
