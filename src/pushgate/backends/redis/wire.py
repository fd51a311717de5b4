"""A bare asyncio connection to one Redis/Valkey server, for the two hot readers and writers.

The publish pipe (:mod:`.pipe`) and the pub/sub links (:mod:`.link`) talk to Redis through
their own ``asyncio.Protocol`` with hiredis's ``Reader``: a message or a reply costs one parse
in C and no await, and everything one socket read brings is handled in one go (so the hub
flushes each client socket once for all of it). Where and how to connect stays redis-py's
business: a redis-py connection object built from the URL (never connected itself) describes
the host and port or Unix path, the TLS context, the credentials and the database.
"""

from __future__ import annotations

import asyncio
import socket

from redis.asyncio.connection import AbstractConnection, SSLConnection, UnixDomainSocketConnection

from pushgate.backends.redis.resp import command

__all__ = ["handshake", "open_wire"]


async def open_wire(desc: AbstractConnection, protocol: asyncio.Protocol, timeout: float) -> None:
    """Connect ``protocol`` (a fresh one) to the server ``desc`` describes, within ``timeout`` seconds.

    OSError / TimeoutError when the server cannot be reached."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        if isinstance(desc, UnixDomainSocketConnection):
            await loop.create_unix_connection(lambda: protocol, desc.path)
        else:
            ssl = desc.ssl_context.get() if isinstance(desc, SSLConnection) else None
            host = str(getattr(desc, "host", "localhost"))
            port = int(getattr(desc, "port", 6379))
            transport, _ = await loop.create_connection(lambda: protocol, host, port, ssl=ssl)
            sock = transport.get_extra_info("socket")
            if sock is not None:  # as redis-py's socket_keepalive: a dead peer is noticed eventually
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def handshake(desc: AbstractConnection) -> list[tuple[str, bytes]]:
    """The commands a fresh connection sends first: AUTH if the URL has a password, SELECT if it
    names a database other than 0. Each answers one reply (``+OK`` or an error)."""
    out: list[tuple[str, bytes]] = []
    username, password = getattr(desc, "username", None), getattr(desc, "password", None)
    if password:
        out.append(("AUTH", command("AUTH", username, password) if username else command("AUTH", password)))
    db = int(getattr(desc, "db", 0) or 0)
    if db:
        out.append(("SELECT", command("SELECT", db)))
    return out
