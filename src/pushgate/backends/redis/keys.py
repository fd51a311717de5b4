"""Key and topic names of every Redis/Valkey store, under one prefix.

Key layout (``P`` is the prefix; ``{…}`` is a Redis Cluster hash tag, so everything that one
Lua script touches lives in one slot)::

    P:m:{ch}            channel meta hash: e = epoch, o = newest offset
    P:h:{ch}            channel history list (raw JSON data, oldest first)
    P:c:{ch}            channel pub/sub topic (publications and join/leave events)
    P:idem:{ch}:key     publish idempotency key: "offset:epoch" of the first publish, PX = window
    P:ack:{ch}          acknowledged position of a stream: "offset:epoch", PX = the ack's ttl
    P:u:{user}          user pub/sub topic (direct messages, disconnects)
    P:b                 broadcast topic, every node subscribes
    P:nodes             set of registered node ids
    P:node:{id}:alive   string with PX = node ttl, refreshed by heartbeat
    P:node:{id}:conns   hash conn_id -> encoded user
    P:node:{id}:users   hash user -> number of the node's connections of that user
    P:node:{id}:chans   set of channels the node has presence in
    P:pres:{ch}:id      hash conn_id -> encoded user: node ``id``'s members of channel ``ch``
    P:lease:{name}      leader lease, value = holder
    P:once:{key}        once-per-tick claim

User streams are channels named ``!u:<user>`` (:mod:`pushgate.names`), so their keys are
``P:m:{!u:alice}``, ``P:h:{!u:alice}``, ``P:c:{!u:alice}``, ``P:ack:{!u:alice}``: ``!`` needs no
quoting and is an ordinary hash-tag character. ``P:u:{alice}`` stays the user's *topic* (direct
messages before user streams, disconnects, ack notifications), a different key.

The prefix itself must not contain ``{`` or ``}``: a brace in it would become the hash tag of
every key and put the whole deployment in one slot (configuration refuses such a prefix).
"""

from __future__ import annotations

import hashlib

from pushgate.backends.validation import check_prefix

__all__ = ["Keys", "hash_tag"]


def hash_tag(name: str) -> str:
    """The text placed between ``{`` and ``}`` in every key of ``name``.

    Redis hashes the text between the first ``{`` and the next ``}``; a name that is empty or
    contains ``}`` would break that, so such names are replaced by a digest (80 bits).
    """
    if name and "}" not in name:
        return name
    return "#" + hashlib.sha1(name.encode()).hexdigest()[:20]


class Keys:
    """Key and topic names under one prefix (see the module docstring for the layout)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        self.broadcast_topic = f"{prefix}:b".encode()
        self.nodes = f"{prefix}:nodes"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}:m:{{{hash_tag(channel)}}}"

    def history(self, channel: str) -> str:
        return f"{self.prefix}:h:{{{hash_tag(channel)}}}"

    def idempotency(self, channel: str, key: str) -> str:
        """The channel's hash tag first, so the publish script can touch it on the same shard."""
        return f"{self.prefix}:idem:{{{hash_tag(channel)}}}:{key}"

    def ack(self, stream: str) -> str:
        """In the stream's slot, so the ack script reads the meta hash and writes this atomically."""
        return f"{self.prefix}:ack:{{{hash_tag(stream)}}}"

    def channel_topic(self, channel: str) -> bytes:
        return f"{self.prefix}:c:{{{hash_tag(channel)}}}".encode()

    def user_topic(self, user: str) -> bytes:
        return f"{self.prefix}:u:{{{hash_tag(user)}}}".encode()

    def alive(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:alive"

    def node_conns(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:conns"

    def node_users(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:users"

    def node_channels(self, node: str) -> str:
        return f"{self.prefix}:node:{{{hash_tag(node)}}}:chans"

    def presence(self, channel: str, node: str) -> str:
        return f"{self.prefix}:pres:{{{hash_tag(channel)}}}:{node}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}:lease:{{{hash_tag(name)}}}"

    def once(self, key: str) -> str:
        return f"{self.prefix}:once:{{{hash_tag(key)}}}"
