"""Ceiling peer: hand-rolled HTTP/WebSocket on raw uvloop Protocols, no framework.

Not something to deploy (no validation beyond the minimum, no ping, no backpressure): it shows
what one core of CPython+uvloop can do when a broadcast is nothing but one prebuilt frame and a
``transport.write()`` per connection -- i.e. the floor any Python server pays per delivery.
It also tells whether the load client keeps up at that rate.

Contract as for bench/fanout.py: ``GET /healthz``, ``GET /ws`` (welcome frame first),
``POST /api/broadcast`` with ``{"data": <json>}``.

Run: ``python bench/peers/raw_peer.py --host 127.0.0.1 --port 8005``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
clients: set[asyncio.Transport] = set()
COALESCE = False  # --coalesce: frames of all broadcasts handled in one loop tick go out in one write
_pending: list[bytes] = []


def _flush() -> None:
    data = b"".join(_pending)
    _pending.clear()
    for t in list(clients):
        t.write(data)


def broadcast_frame(frame: bytes) -> int:
    if COALESCE:
        if not _pending:
            asyncio.get_running_loop().call_soon(_flush)
        _pending.append(frame)
        return len(clients)
    for t in list(clients):
        t.write(frame)
    return len(clients)


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.ws = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            clients.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.ws:
            # Client frames (pongs, close): a close (opcode 8) ends the connection; ignore the rest.
            if data and data[0] & 0x0F == 8:
                self.transport.write(b"\x88\x00")
                self.transport.close()
            return
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            clen = int(headers.get("content-length", "0"))
            if len(rest) < clen:
                return
            body, self.buf = rest[:clen], rest[clen:]
            if method == "GET" and path == "/ws":
                key = headers["sec-websocket-key"].encode()
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
                self.transport.write(
                    ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode()
                    + text_frame(json.dumps({"type": "welcome", "client": id(self)}).encode()))
                self.ws = True
                clients.add(self.transport)
                return
            if method == "POST" and path == "/api/broadcast":
                data = json.loads(body)["data"]
                frame = text_frame(json.dumps({"type": "broadcast", "data": data}, separators=(",", ":")).encode())
                sent = broadcast_frame(frame)
                self.respond(b'{"sent":%d}' % sent, b"application/json")
            elif path == "/healthz":
                self.respond(b"ok", b"text/plain")
            else:
                self.respond(b"not found", b"text/plain", b"404 Not Found")

    def respond(self, body: bytes, ctype: bytes, status: bytes = b"200 OK") -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
                             % (status, ctype, len(body), body))


async def amain(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8005)
    ap.add_argument("--coalesce", action="store_true",
                    help="batch the frames of all broadcasts of one loop iteration into one write per client")
    args = ap.parse_args()
    global COALESCE
    COALESCE = args.coalesce
    try:
        import uvloop

        uvloop.run(amain(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
