"""RESP2 request encoding for the publish hot path, without I/O.

Written for speed on purpose: redis-py encodes every argument of every command through its
``Encoder`` and ``pack_command`` (type checks, ``str`` -> ``bytes``, a list of chunks per
command), which was a third of the publishing node's CPU per publication. A publication's
EVALSHA has the same keys, topic and history settings every time its channel is published
to, so :class:`PublishTemplates` keeps those bytes per channel and a publication costs one
``join`` of six pieces, ``data`` among them untouched.

Replies are parsed by hiredis's ``Reader`` in :mod:`.pipe`; nothing here parses.
"""

from __future__ import annotations

from typing import Final

from redis.crc import key_slot

from pushgate.backends.redis.keys import Keys

__all__ = ["PublishTemplates", "bulk", "command"]

_CRLF: Final = b"\r\n"


def bulk(value: bytes) -> bytes:
    """One RESP bulk string: ``$<len>\\r\\n<bytes>\\r\\n``."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def command(*parts: bytes | str | int) -> bytes:
    """A whole RESP command (an array of bulk strings); ``str`` is UTF-8, ``int`` decimal."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, int):
            part = b"%d" % part
        out.append(bulk(part))
    return b"".join(out)


class PublishTemplates:
    """The EVALSHA of :data:`.scripts.PUBLISH` for one channel, as bytes around ``data``.

    ARGV order is the script's: data, size, ttl ms, meta ttl ms, candidate epoch, topic,
    publish command[, idempotency window ms]. Per (channel, size, ttl) the cache holds the part
    before ``data`` (array header, EVALSHA, sha, numkeys, meta key, history key), the part
    between ``data`` and the candidate epoch (size, ttl, meta ttl) and the part after it (topic,
    publish command), plus the channel's cluster slot. The cache is bounded: it is cleared when
    it reaches ``max_entries`` (a node publishing to more channels than that pays the encoding
    again, which is what every publication cost before).
    """

    def __init__(self, keys: Keys, sha: str, publish_cmd: str, meta_ttl_ms: int, idempotency_ms: int,
                 max_entries: int = 4096) -> None:
        self._keys = keys
        self._sha = bulk(sha.encode())
        self._publish_cmd = bulk(publish_cmd.encode())
        self._meta_ttl = bulk(b"%d" % meta_ttl_ms)
        self._window = bulk(b"%d" % idempotency_ms)
        self._max = max_entries
        self._cache: dict[tuple[str, int, int], tuple[bytes, bytes, bytes, int]] = {}

    def parts(self, channel: str, size: int, ttl_ms: int) -> tuple[bytes, bytes, bytes, int]:
        """(head, middle, tail, slot) of a publication without an idempotency key."""
        key = (channel, size, ttl_ms)
        found = self._cache.get(key)
        if found is not None:
            return found
        if len(self._cache) >= self._max:
            self._cache.clear()
        meta = self._keys.meta(channel).encode()
        head = b"*12\r\n$7\r\nEVALSHA\r\n" + self._sha + b"$1\r\n2\r\n" + bulk(meta) + bulk(
            self._keys.history(channel).encode()
        )
        middle = bulk(b"%d" % size) + bulk(b"%d" % ttl_ms) + self._meta_ttl
        tail = bulk(self._keys.channel_topic(channel)) + self._publish_cmd
        found = self._cache[key] = (head, middle, tail, key_slot(meta))
        return found

    def encode(self, channel: str, data: bytes, size: int, ttl_ms: int, epoch: bytes,
               idempotency_key: str | None) -> tuple[bytes, int]:
        """(the command, the channel's slot); ``epoch`` is a ready bulk string (:func:`bulk`)."""
        head, middle, tail, slot = self.parts(channel, size, ttl_ms)
        if idempotency_key is None:
            return b"".join((head, b"$%d\r\n" % len(data), data, _CRLF, middle, epoch, tail)), slot
        # With a key: 3 keys and one more argument; rare enough not to be cached.
        keys = self._keys
        cmd = b"".join((
            b"*14\r\n$7\r\nEVALSHA\r\n", self._sha, b"$1\r\n3\r\n",
            bulk(keys.meta(channel).encode()), bulk(keys.history(channel).encode()),
            bulk(keys.idempotency(channel, idempotency_key).encode()),
            b"$%d\r\n" % len(data), data, _CRLF, middle, epoch, tail, self._window,
        ))
        return cmd, slot

