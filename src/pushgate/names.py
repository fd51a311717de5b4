"""Channel and user names: one rule, checked at every door (client commands, HTTP API, tokens,
the Publisher, config).

A name is 1–255 characters of ``A-Za-z0-9_-:.@/=+#$``. The set is small on purpose: names
travel as Redis key parts, SSE ``since`` values and log fields, and none of these characters
needs quoting in any of them. ``:`` separates a namespace from the rest (``chat:lobby``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .errors import ClientError

NAME_RE = re.compile(r"^[A-Za-z0-9_\-:.@/=+#$]{1,255}$")
CHANNEL_RE = NAME_RE  # the same rule for channels and users
MAX_USERS_PER_SEND = 1000

#: Every named user has a stream of the messages addressed to them, kept like a channel's. Its
#: internal channel name starts with ``!``, which no client channel name may contain, so no
#: client can subscribe to, publish into or ask about another user's stream.
USER_STREAM_PREFIX = "!u:"


def user_stream(user: str) -> str:
    """The internal channel that carries ``user``'s direct messages."""
    return USER_STREAM_PREFIX + user


def is_internal(channel: str) -> bool:
    """True for server-internal streams (user streams), which skip presence, hooks and rules."""
    return channel[:1] == "!"


def is_valid_name(name: object) -> bool:
    """True when ``name`` is a string that is a valid channel or user name."""
    return isinstance(name, str) and NAME_RE.match(name) is not None


def valid_channel(channel: Any) -> str:
    """``channel`` itself, or :class:`ClientError` ``bad_request``."""
    if not is_valid_name(channel):
        raise ClientError("bad_request", "invalid channel name (1-255 chars of A-Za-z0-9_-:.@/=+#$)")
    return str(channel)


def valid_users(users: Iterable[Any]) -> list[str]:
    """The distinct users of ``users`` in order, or :class:`ClientError` ``bad_request``."""
    targets = list(dict.fromkeys(users))
    if not targets:
        raise ClientError("bad_request", "at least one user is required")
    if len(targets) > MAX_USERS_PER_SEND:
        raise ClientError("bad_request", f"at most {MAX_USERS_PER_SEND} users per call")
    for user in targets:
        if not is_valid_name(user):
            raise ClientError("bad_request", f"invalid user id {user!r}")
    return targets


DESTINATION_RE = re.compile(r"^/[A-Za-z0-9_\-:.@/=+#$]{1,254}$")


def valid_destination(destination: Any) -> str:
    """A user-message destination (``/queue/<name>``, as STOMP's ``/user/queue/<name>`` sees it),
    or :class:`ClientError` ``bad_request``."""
    if not isinstance(destination, str) or DESTINATION_RE.match(destination) is None:
        raise ClientError("bad_request", "destination must be / followed by 1-254 chars of A-Za-z0-9_-:.@/=+#$")
    return destination
