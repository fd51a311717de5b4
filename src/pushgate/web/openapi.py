"""The OpenAPI 3.1 document served at ``/api/openapi.json`` (kept next to the routes it describes)."""

from __future__ import annotations

from typing import Any

from .. import __version__

_ANY: dict[str, Any] = {"description": "any JSON value; delivered to subscribers byte for byte"}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["code", "message"],
                    }
                },
            }
        }
    },
}
_POSITION = {
    "type": "object",
    "properties": {"epoch": {"type": "string"}, "offset": {"type": "integer"}},
    "required": ["epoch", "offset"],
}
_PRESENCE = {
    "type": "object",
    "properties": {
        "channel": {"type": "string"},
        "users": {"type": "array", "items": {"type": "string"}},
        "connections": {"type": "integer"},
    },
}


def _op(summary: str, *, body: dict[str, Any] | None = None, result: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, rate_limited: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": result or {"type": "object"}}}},
            "400": _ERROR,
            "401": _ERROR,
            "403": _ERROR,
            "503": _ERROR,
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"]["413"] = _ERROR
        op["responses"]["415"] = _ERROR  # without an API key, a body not sent as application/json
    if rate_limited:
        op["responses"]["429"] = _ERROR
    if params:
        op["parameters"] = params
    return op


def _obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


_CHANNEL_PARAM = {"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    users = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pushgate HTTP API",
            "version": __version__,
            "description": "Publish to channels, users and everyone; read presence, online counts and history. "
            "With an API key configured send `Authorization: Bearer <key>`. Without one only this machine may "
            "call: a loopback peer with no proxy headers (or a trusted proxy forwarding for a loopback client), "
            "a loopback `Host` (localhost, 127.0.0.1, [::1]), and POST bodies sent as `application/json` "
            "(else 415). Every error is `{\"error\": {\"code\", \"message\"}}`.",
        },
        "components": {"securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
        "security": [{"apiKey": []}],
        "paths": {
            "/api/publish": {"post": _op(
                "Publish to a channel (kept in history)",
                body=_obj({"channel": {"type": "string"}, "data": _ANY, "idempotency_key": {
                    "type": "string", "pattern": "^[A-Za-z0-9_.:~+/=-]{1,128}$",
                    "description": "makes retries safe: a publish to the same channel with the same key "
                    "within `idempotency_window` seconds (cluster-wide) is not applied again and answers "
                    "the first one's epoch and offset"}}, ["channel", "data"]),
                result=_POSITION, rate_limited=True)},
            "/api/broadcast": {"post": _op(
                "Send to every connection on every node", body=_obj({"data": _ANY, "idempotency_key": {
                    "type": ["string", "null"], "pattern": "^[A-Za-z0-9_.:~+/=-]{1,128}$",
                    "description": "a retry with the same key within the window is not delivered again"}},
                    ["data"]))},
            "/api/send": {"post": _op(
                "Append to each user's stream: every connection of the user gets it now, wherever connected, "
                "and a user who is offline gets it on connecting within retention (`from` is `sender` or null)",
                body=_obj({
                    "users": users, "data": _ANY, "sender": {"type": ["string", "null"]},
                    "idempotency_key": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_.:~+/=-]{1,128}$",
                                        "description": "a retry with the same key is applied once per user"},
                    "destination": {"type": ["string", "null"], "pattern": "^/[A-Za-z0-9_\\-:.@/=+#$]{1,254}$",
                                    "description": "STOMP clients of the user receive it on /user<destination>"},
                    "wait_for_ack": {"type": ["number", "null"], "minimum": 0, "maximum": 30,
                                     "description": "seconds to wait for each user's acknowledgement (receipts)"},
                }, ["users", "data"]),
                result={"type": "object", "properties": {
                    "stored": {"type": "boolean"},
                    "positions": {"type": "object", "additionalProperties": _POSITION},
                    "live": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "acked": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                    "pending": {"type": "array", "items": {"type": "string"}},
                }, "required": ["stored", "positions", "live"]},
                rate_limited=True)},
            "/api/disconnect": {"post": _op(
                "Close every connection of a user with code 4500 (do not reconnect)",
                body=_obj({"user": {"type": "string"}, "reason": {
                    "type": "string", "minLength": 1, "maxLength": 512,
                    "description": "printable text; a WebSocket close frame carries its first 123 UTF-8 bytes, "
                    "cut on a character boundary"}}, ["user"]))},
            "/api/online": {"get": _op("Online connections and distinct users, cluster-wide and per node", result={
                "type": "object",
                "properties": {
                    "connections": {"type": "integer"},
                    "users": {"type": "integer"},
                    "nodes": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                        "connections": {"type": "integer"}, "users": {"type": "integer"}}}},
                },
            })},
            "/api/presence/{channel}": {"get": _op(
                "Users and connection count subscribed to a channel", params=[_CHANNEL_PARAM],
                result=_PRESENCE)},
            "/api/history/{channel}": {"get": _op(
                "Publications kept for a channel, oldest first",
                params=[
                    _CHANNEL_PARAM,
                    {"name": "since_offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "epoch", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                result={"type": "object", "properties": {
                    "channel": {"type": "string"}, "epoch": {"type": "string"}, "offset": {"type": "integer"},
                    "complete": {"type": "boolean"},
                    "publications": {"type": "array", "items": {"type": "object", "properties": {
                        "offset": {"type": "integer"}, "data": _ANY, "from": {"type": "string"}}}},
                }})},
            "/api/channels": {"get": _op("Channels with subscribers on this node", result={
                "type": "object", "properties": {"channels": {"type": "array", "items": {
                    "type": "object", "properties": {
                        "channel": {"type": "string"}, "subscribers": {"type": "integer"}}}}}})},
            "/api/nodes": {"get": _op("Live nodes of the cluster", result={
                "type": "object", "properties": {"nodes": {"type": "array", "items": {"type": "string"}}}})},
            "/api/info": {"get": _op("This node: id, version, auth mode, broker kind, readiness and local counts",
                                     result={"type": "object", "properties": {
                                         "node": {"type": "string"}, "version": {"type": "string"},
                                         "mode": {"type": "string", "enum": ["dev", "jwt"]},
                                         "broker": {"type": "string"}, "ready": {"type": "boolean"},
                                         "draining": {"type": "boolean"}, "connections": {"type": "integer"},
                                         "users": {"type": "integer"}, "channels": {"type": "integer"}}})},
            "/api/users/{user}/connections": {"get": _op(
                "A user's connections: the count on all live nodes, and the ones this node holds",
                params=[{"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}],
                result={"type": "object", "properties": {
                    "user": {"type": "string"}, "connections": {"type": "integer"}, "node": {"type": "string"},
                    "here": {"type": "array", "items": {"type": "object", "properties": {
                        "id": {"type": "string"}, "transport": {"type": "string"},
                        "address": {"type": ["string", "null"]},
                        "channels": {"type": "array", "items": {"type": "string"}}}}}}})},
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: 503 while draining or while the broker is down",
                                "security": [],
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                                 "responses": {"200": {"description": "text exposition format"}}}},
        },
    }
