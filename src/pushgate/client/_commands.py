"""The protocol's commands as typed methods: thin wrappers over :meth:`Commands.request`.

Kept apart from the connection machinery so the command table of docs/protocol.md#commands reads
in one place; :class:`~pushgate.client.Client` provides ``request`` (send, match the reply by id,
raise on an error reply).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import RequestError
from ._events import Position, PresenceInfo, parse_position


class Commands:
    async def request(self, command: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> Position:
        """Publish ``data`` (any JSON value) to ``channel``; returns the publication's position.

        If the connection drops before the reply, :class:`Disconnected` is raised and the
        publication may or may not exist. With an ``idempotency_key`` (1-128 chars of
        ``A-Za-z0-9_.:~+/=-``) a retry is safe: within the server's ``idempotency_window`` the
        same key on the same channel is applied once, cluster-wide, and the retry answers the
        first publication's position.
        """
        cmd: dict[str, Any] = {"type": "publish", "channel": channel, "data": data}
        if idempotency_key is not None:
            cmd["idempotency_key"] = idempotency_key
        reply = await self.request(cmd)
        position = parse_position(reply)
        if position is None:
            raise RequestError("bad_reply", f"publish reply without a position: {reply}", reply)
        return position

    async def send(self, users: str | Iterable[str], data: Any, *,
                   idempotency_key: str | None = None) -> dict[str, Position]:
        """Send ``data`` to every connection of each user; they get a :class:`Direct` from you.

        Returns, per user, the message's position in that user's stream (empty from servers
        without user streams). Offline users are not an error: the message waits in their stream
        within retention. ``idempotency_key`` makes a retry after :class:`Disconnected` safe: the
        server applies the same key once per recipient within its ``idempotency_window``.
        """
        to = [users] if isinstance(users, str) else list(users)
        cmd: dict[str, Any] = {"type": "send", "to": to, "data": data}
        if idempotency_key is not None:
            cmd["idempotency_key"] = idempotency_key
        reply = await self.request(cmd)
        positions = reply.get("positions")
        if not isinstance(positions, dict):
            return {}
        return {user: pos for user, value in positions.items()
                if isinstance(user, str) and isinstance(value, dict) and (pos := parse_position(value)) is not None}

    async def presence(self, channel: str) -> PresenceInfo:
        """Who is subscribed to ``channel`` across the cluster (you need not be subscribed)."""
        reply = await self.request({"type": "presence", "channel": channel})
        users, connections = reply.get("users"), reply.get("connections")
        return PresenceInfo(
            channel,
            tuple(u for u in users if isinstance(u, str)) if isinstance(users, list) else (),
            connections if isinstance(connections, int) else 0,
        )

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Call a server-side handler (``@app.rpc(method)``); returns its result."""
        reply = await self.request({"type": "rpc", "method": method, "data": data})
        return reply.get("data")

    async def ping(self) -> float:
        """An application-level round trip; returns its duration in seconds."""
        start = time.monotonic()
        await self.request({"type": "ping"})
        return time.monotonic() - start
