"""STOMP destinations ⇄ pushgate's one channel space, without I/O.

STOMP names things with destinations (STOMP 1.2 §SEND: "the destination ... to which to send";
the specification leaves their meaning to the server). pushgate follows Spring's registry, so
stompjs code written for Spring's simple broker works unchanged, and maps each destination onto
what every other door (JSON clients, SSE, the HTTP API, the Publisher) already uses:

========================================  =============================================
destination                               meaning
========================================  =============================================
``/topic/<name>``                          channel ``<name>`` (when ``/topic`` is a broker prefix)
``/<p>/<name>`` (another broker prefix)    channel ``<p>:<name>``: namespace ``<p>``, its rules
``/app/<path>``                            a SEND calls the ``@app.message("/<path>")`` handler
``/user/queue/<name>``, ``/user/topic/..``  SUBSCRIBE: this user's messages sent with destination
                                           ``/queue/<name>`` (``/topic/<name>``)
``/user/<user>/queue/<name>``              SEND: a message to ``<user>``, destination ``/queue/<name>``
========================================  =============================================

Why ``/<p>/x`` becomes ``<p>:x`` rather than ``x``: two prefixes that met in one channel space
would make ``/chat/x`` and ``/topic/x`` the same conversation by accident; as a namespace
(``[namespaces.chat]`` in the TOML) the prefix also gets its own publish, presence and history
rules, which is what an application that declared two prefixes meant.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ClientError
from ..names import is_valid_name, valid_destination


@dataclass(frozen=True, slots=True)
class ChannelDestination:
    """A broker destination: the channel it is, and the destination the client named."""

    channel: str
    destination: str


@dataclass(frozen=True, slots=True)
class UserDestination:
    """``/user<suffix>``: the messages of the connection's own user whose destination is ``suffix``."""

    suffix: str  # /queue/<name>, as node.send_to_users(destination=...) names it


@dataclass(frozen=True, slots=True)
class UserSendDestination:
    """``/user/<user><suffix>``: a SEND to another user (Spring's ``convertAndSendToUser`` form)."""

    user: str
    suffix: str


@dataclass(frozen=True, slots=True)
class AppDestination:
    """``/app<path>``: a SEND for the application's ``@app.message(path)`` handler."""

    path: str


Destination = ChannelDestination | UserDestination | UserSendDestination | AppDestination
TOPIC = "/topic"


class Destinations:
    """The mapping, built from the config's prefixes (see the module docstring)."""

    def __init__(self, broker_prefixes: tuple[str, ...], app_prefix: str, user_prefix: str,
                 user_default: str) -> None:
        # longest prefix first, so /topic/a and /topic-archive/a are never confused
        self.broker_prefixes = tuple(sorted(broker_prefixes, key=len, reverse=True))
        self.app_prefix = app_prefix
        self.user_prefix = user_prefix
        self.user_default = user_default

    def channel_of(self, prefix: str, name: str) -> str:
        return name if prefix == TOPIC else f"{prefix[1:]}:{name}"

    def broker(self, destination: str) -> ChannelDestination | None:
        """The channel of a broker destination, or None when no broker prefix matches."""
        for prefix in self.broker_prefixes:
            if destination.startswith(prefix) and destination[len(prefix) : len(prefix) + 1] == "/":
                name = destination[len(prefix) + 1 :]
                channel = self.channel_of(prefix, name)
                if not name or not is_valid_name(channel):
                    raise ClientError("bad_request", f"invalid destination {destination[:100]!r}: "
                                                     "the channel name allows 1-255 chars of A-Za-z0-9_-:.@/=+#$")
                return ChannelDestination(channel, destination)
        return None

    def _under(self, destination: str, prefix: str) -> str | None:
        if destination.startswith(prefix) and destination[len(prefix) : len(prefix) + 1] == "/":
            return destination[len(prefix) :]
        return None

    def for_subscribe(self, destination: str) -> ChannelDestination | UserDestination:
        """What a SUBSCRIBE to ``destination`` follows (STOMP 1.2 §SUBSCRIBE); ``bad_request`` else."""
        suffix = self._under(destination, self.user_prefix)
        if suffix is not None:
            return UserDestination(valid_destination(suffix))
        found = self.broker(destination)
        if found is None:
            raise ClientError("bad_request", f"cannot subscribe to {destination[:100]!r}: destinations are "
                              f"{self._known()}")
        return found

    def for_send(self, destination: str) -> Destination:
        """Where a SEND to ``destination`` goes (STOMP 1.2 §SEND); ``bad_request`` for none."""
        path = self._under(destination, self.app_prefix)
        if path is not None:
            return AppDestination(path)
        rest = self._under(destination, self.user_prefix)
        if rest is not None:
            user, slash, suffix = rest[1:].partition("/")
            if not slash or not is_valid_name(user):
                raise ClientError("bad_request", f"a SEND to a user is {self.user_prefix}/<user>/queue/<name>")
            return UserSendDestination(user, valid_destination("/" + suffix))
        found = self.broker(destination)
        if found is None:
            raise ClientError("bad_request", f"cannot send to {destination[:100]!r}: destinations are {self._known()}")
        return found

    def _known(self) -> str:
        brokers = ", ".join(p + "/<name>" for p in self.broker_prefixes)
        return f"{brokers}, {self.user_prefix}/queue/<name> and {self.app_prefix}/<path>"

    def user_suffix(self, destination: str | None) -> str:
        """The destination a user message is received on (under the user prefix)."""
        return destination or self.user_default
