"""An asyncio client for pushgate's JSON WebSocket protocol: for backends, bots, devices and tests.

It does in Python what the browser client ``/pushgate.js`` does (docs/protocol.md)::

    from pushgate.client import Client

    async with Client("ws://localhost:8080/ws", user="bot") as client:
        sub = await client.subscribe("news")
        epoch, offset = await client.publish("news", {"text": "hello"})
        async for msg in sub:                       # survives reconnects: nothing lost, no duplicates
            print(msg.offset, msg.data)

    client.on("direct", lambda d: print(d.sender, d.data))   # or: async for ev in client.events("direct")

* Direct messages follow the user's stream: each :class:`Direct` has a ``position``; the client
  drops duplicates, passes ``user_since`` on every reconnect so missed ones are replayed, and
  ``await client.ack(direct)`` (or ``auto_ack=True``) tells the server they were processed.

* Stays connected: reconnects with exponential backoff and full jitter (:func:`backoff`) following
  the close-code table (:func:`close_code_action`); stops on 4500-4999, 1008 and refused handshakes.
* Renews every subscription with ``since`` after a reconnect and de-duplicates by offset.
* Commands return values or raise from one exception tree (see :mod:`pushgate.client._errors`);
  a command in flight when the connection drops raises :class:`Disconnected` and is not resent.
* Backpressure, not drops, when you read slower than the server writes (see ``_inbox``).

Only aiohttp (already a pushgate dependency) and msgspec are used.
"""

from __future__ import annotations

from ._client import Client, TokenSource
from ._errors import (
    ClientClosed,
    ConnectTimeout,
    Disconnected,
    HandshakeError,
    MessageTooBig,
    PushgateClientError,
    RequestError,
    RequestTimeout,
    UsageError,
)
from ._events import (
    Broadcast,
    Direct,
    ErrorEvent,
    Event,
    Join,
    Leave,
    Message,
    Position,
    PresenceInfo,
    Resync,
    State,
    StateChange,
    Subscribed,
    UserStream,
    Welcome,
)
from ._listeners import EventStream
from ._policy import Action, backoff, close_code_action, handshake_is_fatal
from ._subscription import Subscription

__all__ = [
    "Action",
    "Broadcast",
    "Client",
    "ClientClosed",
    "ConnectTimeout",
    "Direct",
    "Disconnected",
    "ErrorEvent",
    "Event",
    "EventStream",
    "HandshakeError",
    "Join",
    "Leave",
    "Message",
    "MessageTooBig",
    "Position",
    "PresenceInfo",
    "PushgateClientError",
    "RequestError",
    "RequestTimeout",
    "Resync",
    "State",
    "StateChange",
    "Subscribed",
    "Subscription",
    "TokenSource",
    "UsageError",
    "UserStream",
    "Welcome",
    "backoff",
    "close_code_action",
    "handshake_is_fatal",
]
