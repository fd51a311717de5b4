"""What the client hands to your code: publications, server pushes and its own state changes.

All are frozen, slotted dataclasses (immutable, cheap, safe to pass between tasks). Parsing the
server's JSON objects into them is pure and never raises: a frame that does not fit is dropped
(``None``), because docs/protocol.md asks clients to ignore what they do not understand.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "Broadcast",
    "Direct",
    "ErrorEvent",
    "Event",
    "Join",
    "Leave",
    "Message",
    "Position",
    "PresenceInfo",
    "Resync",
    "State",
    "StateChange",
    "Subscribed",
    "UserStream",
    "Welcome",
]


class Position(NamedTuple):
    """A point in a channel's stream. A tuple so ``epoch, offset = await client.publish(...)`` works.

    Offsets are only comparable within one epoch: do not order positions with ``<``.
    """

    epoch: str
    offset: int


class State(StrEnum):
    """The client's connection state (same names as the browser client)."""

    CONNECTING = "connecting"  # opening a socket / waiting for welcome
    CONNECTED = "connected"  # welcome received, commands flow
    DISCONNECTED = "disconnected"  # not connected; a (re)connect is scheduled or not started yet
    CLOSED = "closed"  # terminal: close() was called or the server said do not reconnect


@dataclass(frozen=True, slots=True)
class Message:
    """One publication in a channel you subscribed to."""

    channel: str
    data: Any
    offset: int
    epoch: str
    #: the user id of the client that published it, stamped by the server (``None``: a backend
    #: or an anonymous client published it, or the namespace does not stamp)
    sender: str | None = None

    @property
    def position(self) -> Position:
        """Persist this (e.g. after processing) and pass it as ``since`` to resume later."""
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class UserStream:
    """The state of your user's stream at connect time (``welcome.stream``; named users only).

    ``position`` is the stream's head (the newest message's offset; the missed messages follow
    the welcome). ``recovered`` is the server's flag: false when it cannot prove it delivers
    everything after the position the client passed. ``since`` is the position the client passed
    as ``user_since`` on this connection (``None``: none, so the server sends what the user has not
    acknowledged yet).
    """

    position: Position
    recovered: bool
    since: Position | None = None

    @property
    def maybe_missed(self) -> bool:
        """True when the client passed a position and the server could not recover from it:
        direct messages may have been missed (trimmed by retention, or history was lost): reload
        what you derive from them. Messages the server still keeps are delivered anyway."""
        return self.since is not None and not self.recovered


@dataclass(frozen=True, slots=True)
class Welcome:
    """Sent by the server once per connection; ``client`` is new on every (re)connect.

    ``stream`` is your user stream's state (``None`` for anonymous connections and older servers).
    """

    kind: ClassVar[str] = "welcome"
    client: str
    user: str | None
    node: str
    stream: UserStream | None = None


@dataclass(frozen=True, slots=True)
class Direct:
    """A message sent to your user. ``sender`` is stamped by the server (``None``: server/HTTP API).

    ``offset``/``epoch`` place it in your user's stream (``None`` from servers without user
    streams); pass it to :meth:`Client.ack` once processed.
    """

    kind: ClassVar[str] = "direct"
    sender: str | None
    data: Any
    offset: int | None = None
    epoch: str | None = None

    @property
    def position(self) -> Position | None:
        """Where this message sits in your user stream; persist it and pass it as ``user_since``."""
        if self.offset is None or self.epoch is None:
            return None
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A message the server sent to every connection."""

    kind: ClassVar[str] = "broadcast"
    data: Any


@dataclass(frozen=True, slots=True)
class Join:
    """Someone subscribed to a channel you are in (only for namespaces with ``join_leave``)."""

    kind: ClassVar[str] = "join"
    channel: str
    user: str | None


@dataclass(frozen=True, slots=True)
class Leave:
    """Someone left a channel you are in (only for namespaces with ``join_leave``)."""

    kind: ClassVar[str] = "leave"
    channel: str
    user: str | None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscribe was confirmed; ``resubscribe`` is true after a reconnect. ``position`` is the
    channel's head from the reply (``None`` if the server sent none).

    ``recovered`` is false when the client asked for ``since`` and the server could not fill the
    gap: messages may have been missed (reload your state from elsewhere).
    """

    kind: ClassVar[str] = "subscribed"
    channel: str
    position: Position | None
    recovered: bool
    resubscribe: bool


@dataclass(frozen=True, slots=True)
class Resync:
    """The server could not keep a stream whole (its history lost what this node missed, e.g.
    after a broker restart). The stream goes on from ``position``; messages before it may have
    been missed: reload your state from elsewhere. The connection stays open (no reconnect storm).

    ``channel`` names the subscribed channel, or is ``None`` for your *user* stream (direct
    messages; :attr:`stream` is then ``"user"``), whose position moves the same way.
    """

    kind: ClassVar[str] = "resync"
    channel: str | None
    position: Position

    @property
    def stream(self) -> str:
        """``"user"`` for the user stream, ``"channel"`` for a channel subscription."""
        return "user" if self.channel is None else "channel"


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """An error nobody is waiting for: an error frame without a pending request, a subscription
    refused when it was renewed after a reconnect (``channel`` set; the subscription ended), or a
    token provider that failed (``code`` ``"token"``)."""

    kind: ClassVar[str] = "error"
    code: str
    message: str
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """The connection state changed. After a close: the ``code``/``reason`` and the ``delay`` (s)
    before the next attempt (``None`` when no attempt follows)."""

    kind: ClassVar[str] = "state"
    state: State
    code: int | None = None
    reason: str = ""
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    """Who is subscribed to a channel, across the cluster."""

    channel: str
    users: tuple[str, ...]
    connections: int


Event = Welcome | Direct | Broadcast | Join | Leave | Subscribed | Resync | ErrorEvent | StateChange
EVENT_KINDS = frozenset(cls.kind for cls in (Welcome, Direct, Broadcast, Join, Leave, Subscribed, Resync, ErrorEvent,
                                              StateChange))


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_position(obj: dict[str, Any]) -> Position | None:
    """``{epoch, offset}`` of a reply, or ``None`` when the server did not send a valid one."""
    epoch, offset = obj.get("epoch"), obj.get("offset")
    if isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool):
        return Position(epoch, offset)
    return None


def parse_message(obj: dict[str, Any]) -> Message | None:
    channel, position = obj.get("channel"), parse_position(obj)
    if not isinstance(channel, str) or position is None:
        return None
    sender = obj.get("from")
    return Message(channel, obj.get("data"), position.offset, position.epoch,
                   sender if isinstance(sender, str) else None)


def parse_welcome(obj: dict[str, Any], since: Position | None = None) -> Welcome:
    """The welcome frame; ``since`` is the ``user_since`` this connection passed."""
    stream_obj = obj.get("stream")
    stream = None
    if isinstance(stream_obj, dict) and (head := parse_position(stream_obj)) is not None:
        stream = UserStream(head, stream_obj.get("recovered") is True, since)
    return Welcome(str(obj.get("client", "")), _opt_str(obj.get("user")), str(obj.get("node", "")), stream)


def parse_push(obj: dict[str, Any]) -> Event | None:
    """A server push other than ``message``/``welcome``; ``None`` for unknown or malformed ones."""
    kind = obj.get("type")
    if kind == "direct":
        position = parse_position(obj)  # None from servers without user streams: still delivered
        return Direct(_opt_str(obj.get("from")), obj.get("data"),
                      position.offset if position else None, position.epoch if position else None)
    if kind == "broadcast":
        return Broadcast(obj.get("data"))
    if kind in ("join", "leave"):
        channel = obj.get("channel")
        if not isinstance(channel, str):
            return None
        return (Join if kind == "join" else Leave)(channel, _opt_str(obj.get("user")))
    if kind == "error":
        return ErrorEvent(str(obj.get("code", "")), str(obj.get("message", "")))
    return None
