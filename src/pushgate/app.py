"""Embedding pushgate in Python: lifecycle hooks and server-side message handlers.

``pushgate serve --app mypkg.realtime:app`` loads an :class:`App`::

    app = pushgate.App()

    @app.on_connect
    async def check(client: ClientInfo) -> None:
        if client.user == "mallory":
            raise pushgate.Reject("banned")

    @app.on_publish
    def stamp(client: ClientInfo, channel: str, data: Any) -> Any:
        return {"text": data, "by": client.user}   # returned value replaces data; None keeps it

    @app.on_send
    def guard(client: ClientInfo, users: list[str], data: Any) -> None:
        if "ceo" in users and client.user != "assistant":
            raise pushgate.Reject("write to the assistant")

    @app.rpc("echo")
    async def echo(client: ClientInfo, data: Any) -> Any:
        await app.publish("log", data)             # server-side push from a handler
        return data

    @app.message("/chat.send", send_to="/topic/chat")   # STOMP: SEND to /app/chat.send
    def chat(client: ClientInfo, data: Any, headers: dict[str, str]) -> Any:
        return {"text": data["text"], "by": client.user}  # published to /topic/chat (channel chat)

Hooks may be plain functions or coroutines. They run after the :class:`~pushgate.auth.Authorizer`'s
rules (namespace, token claims) allowed the operation, so a hook only sees what the rules let
through. Raising :class:`~pushgate.errors.Reject` refuses;
any other exception is logged and answered with an ``internal`` error (the node keeps serving).
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import ConfigError, PushgateError

if TYPE_CHECKING:
    from .backends.broker import StreamPosition


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What hooks learn about a connection."""

    client: str  # connection id
    user: str | None
    node: str
    transport: str  # "websocket" | "sse"
    claims: dict[str, Any] | None = None
    address: str | None = None  # the client's IP (through trusted proxies only)


ConnectHook = Callable[[ClientInfo], Awaitable[None] | None]
SubscribeHook = Callable[[ClientInfo, str], Awaitable[None] | None]
PublishHook = Callable[[ClientInfo, str, Any], Awaitable[Any] | Any]
SendHook = Callable[[ClientInfo, list[str], Any], Awaitable[None] | None]
DisconnectHook = Callable[[ClientInfo], Awaitable[None] | None]
UnsubscribeHook = Callable[[ClientInfo, str], Awaitable[None] | None]
RpcHandler = Callable[[ClientInfo, Any], Awaitable[Any] | Any]
MessageHandler = Callable[[ClientInfo, Any, dict[str, str]], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class SendTo:
    """A message handler's reply for a broker destination (``/topic/x``: every subscriber of
    channel ``x``, whatever protocol it speaks). Return it, or a list of replies, from a handler
    to choose the destination at run time (Spring's ``@SendTo`` with a computed destination)."""

    destination: str
    data: Any


@dataclass(frozen=True, slots=True)
class SendToUser:
    """A message handler's reply for users: ``destination`` is the user destination without the
    user prefix (``/queue/reply``: STOMP clients receive it on ``/user/queue/reply``, JSON clients
    as a ``direct`` frame). ``users`` None means the sender's user (Spring's ``@SendToUser``):
    every device of that user gets it, on any node, and an offline device gets it later."""

    destination: str
    data: Any
    users: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class MessageMapping:
    """One ``@app.message`` registration: the handler and where its return value goes by default.

    ``pattern`` is set when the path has ``{name}`` variables (Spring's ``@DestinationVariable``):
    it matches a whole destination path and captures each variable from one path segment.
    """

    handler: MessageHandler
    send_to: str | None = None
    send_to_user: str | None = None
    pattern: re.Pattern[str] | None = None
    variables: tuple[str, ...] = ()

    def reply_targets(self, variables: dict[str, str]) -> tuple[str | None, str | None]:
        """``send_to`` and ``send_to_user`` with their ``{name}`` placeholders filled in."""
        return _fill(self.send_to, variables), _fill(self.send_to_user, variables)


_VARIABLE = re.compile(r"\{([^{}]*)\}")


def _compile_path(path: str) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """A ``@app.message`` path's matcher: None for a plain path (matched exactly, as before),
    else a regex where each ``{name}`` is one non-empty path segment (no ``/``), as Spring's
    ``{var}`` in ``@MessageMapping``. Bad patterns fail at registration, not at the first SEND."""
    if "{" not in path and "}" not in path:
        return None, ()
    parts: list[str] = []
    names: list[str] = []
    end = 0
    for match in _VARIABLE.finditer(path):
        literal = path[end : match.start()]
        name = match.group(1)
        if "{" in literal or "}" in literal:
            raise ValueError(f"unbalanced braces in message path {path!r}")
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"message path {path!r}: {{{name}}} must name a Python identifier")
        if name in names:
            raise ValueError(f"message path {path!r}: {{{name}}} appears twice")
        parts.append(re.escape(literal))
        parts.append(f"(?P<{name}>[^/]+)")
        names.append(name)
        end = match.end()
    tail = path[end:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"unbalanced braces in message path {path!r}")
    parts.append(re.escape(tail))
    return re.compile("".join(parts)), tuple(names)


def _check_template(template: str | None, names: tuple[str, ...], what: str) -> None:
    """``send_to``/``send_to_user`` may use the path's variables (Spring's ``@SendTo("/topic/{room}")``)."""
    if template is None:
        return
    for name in _VARIABLE.findall(template):
        if name not in names:
            raise ValueError(f"{what} {template!r} uses {{{name}}}, which the message path does not define")


def _fill(template: str | None, variables: dict[str, str]) -> str | None:
    if template is None or not variables:
        return template
    return _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), template)


F = TypeVar("F", bound=Callable[..., Any])


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


class Pusher(Protocol):
    """What an :class:`App` needs from the server to push: the node implements it."""

    async def publish_json(self, channel: str, data: Any) -> StreamPosition: ...

    async def broadcast_json(self, data: Any) -> None: ...

    async def send_json(
        self, users: Sequence[str], data: Any, *, sender: str | None = None
    ) -> dict[str, StreamPosition]: ...


class App:
    """Hooks and rpc handlers, plus a handle to the running server for server-side pushes."""

    def __init__(self) -> None:
        self.connect_hooks: list[ConnectHook] = []
        self.subscribe_hooks: list[SubscribeHook] = []
        self.publish_hooks: list[PublishHook] = []
        self.send_hooks: list[SendHook] = []
        self.disconnect_hooks: list[DisconnectHook] = []
        self.unsubscribe_hooks: list[UnsubscribeHook] = []
        self.rpc_handlers: dict[str, RpcHandler] = {}
        self.message_handlers: dict[str, MessageMapping] = {}
        self._pusher: Pusher | None = None

    # -- registration (decorators) --
    def on_connect(self, fn: F) -> F:
        self.connect_hooks.append(fn)
        return fn

    def on_subscribe(self, fn: F) -> F:
        self.subscribe_hooks.append(fn)
        return fn

    def on_publish(self, fn: F) -> F:
        self.publish_hooks.append(fn)
        return fn

    def on_send(self, fn: F) -> F:
        """Called as ``fn(client, users, data)`` for each client ``send`` (not for the HTTP API's);
        raise :class:`~pushgate.errors.Reject` to refuse it. The return value is ignored."""
        self.send_hooks.append(fn)
        return fn

    def on_disconnect(self, fn: F) -> F:
        self.disconnect_hooks.append(fn)
        return fn

    def on_unsubscribe(self, fn: F) -> F:
        """Called as ``fn(client, channel)`` after a client's explicit unsubscribe (JSON ``unsubscribe``,
        STOMP ``UNSUBSCRIBE``; like Spring's ``SessionUnsubscribeEvent``, not for subscriptions that
        end with the connection, which ``on_disconnect`` covers). Errors are logged, not sent."""
        self.unsubscribe_hooks.append(fn)
        return fn

    def message(
        self, path: str, *, send_to: str | None = None, send_to_user: str | None = None
    ) -> Callable[[F], F]:
        """Handle STOMP ``SEND`` frames to ``<app prefix><path>`` (``/app/chat.send`` for
        ``path="/chat.send"`` with the default prefix): Spring's ``@MessageMapping``.

        The handler is called as ``fn(client, data, headers)`` with the JSON-decoded body and the
        frame's headers, after the rate limits. Its return value (unless None) is sent:

        * to ``send_to`` (a broker destination such as ``/topic/chat``, Spring's ``@SendTo``);
        * or to ``send_to_user`` (``/queue/reply``: every device of the sender's user receives it
          on ``/user/queue/reply``, Spring's ``@SendToUser``);
        * with neither, to ``/topic<path>`` (Spring's default for a returned value);
        * a returned :class:`SendTo` / :class:`SendToUser` (or a list of them) goes where it says.

        Raise :class:`~pushgate.errors.Reject` to refuse (the client gets an ERROR frame).

        ``{name}`` in ``path`` is a destination variable (Spring's ``@DestinationVariable``): it
        matches one path segment, and the handler gets it as a keyword argument::

            @app.message("/chat/{room}", send_to="/topic/chat.{room}")
            def chat(client, data, headers, room: str): ...

        ``send_to`` / ``send_to_user`` may use the variables too. A plain path that matches
        exactly wins over a pattern; among patterns, the one with fewer variables, then the one
        registered first. A malformed pattern raises ``ValueError`` here.
        """
        if not path.startswith("/"):
            path = "/" + path
        pattern, names = _compile_path(path)
        _check_template(send_to, names, "send_to")
        _check_template(send_to_user, names, "send_to_user")

        def register(fn: F) -> F:
            self.message_handlers[path] = MessageMapping(fn, send_to, send_to_user, pattern, names)
            return fn

        return register

    def find_message(self, path: str) -> tuple[MessageMapping, dict[str, str]] | None:
        """The mapping for a SEND to ``<app prefix><path>`` and its destination variables, or None.

        Exact paths are a dict lookup (the common case stays O(1)); patterns are tried only
        when none matched, fewest variables first (the most specific, as Spring prefers)."""
        exact = self.message_handlers.get(path)
        if exact is not None and exact.pattern is None:
            return exact, {}
        candidates = [m for m in self.message_handlers.values() if m.pattern is not None]
        for mapping in sorted(candidates, key=lambda m: len(m.variables)):  # stable: registration order
            assert mapping.pattern is not None
            match = mapping.pattern.fullmatch(path)
            if match is not None:
                return mapping, match.groupdict()
        return None

    def rpc(self, method: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.rpc_handlers[method] = fn
            return fn

        return register

    # -- server-side pushes from handlers --
    def bind(self, pusher: Pusher) -> None:
        """Attach to a running server (the node calls this when it starts)."""
        self._pusher = pusher

    @property
    def pusher(self) -> Pusher:
        if self._pusher is None:
            raise PushgateError("the app is not attached to a running node yet")
        return self._pusher

    async def publish(self, channel: str, data: Any) -> StreamPosition:
        return await self.pusher.publish_json(channel, data)

    async def broadcast(self, data: Any) -> None:
        await self.pusher.broadcast_json(data)

    async def send_to_users(
        self, users: Sequence[str], data: Any, *, sender: str | None = None
    ) -> dict[str, StreamPosition]:
        """Append ``data`` to each user's stream (delivered now, or when they next connect);
        returns each message's position per user."""
        return await self.pusher.send_json(users, data, sender=sender)


def load_app(spec: str) -> App:
    """Import ``pkg.module:attr``; the attribute is an :class:`App` or a factory returning one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError("app", "must be 'pkg.module:attr'")
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("app", f"cannot load {spec!r}: {exc}") from exc
    if callable(obj) and not isinstance(obj, App):
        obj = obj()
    if not isinstance(obj, App):
        raise ConfigError("app", f"{spec!r} is not a pushgate.App")
    return obj
