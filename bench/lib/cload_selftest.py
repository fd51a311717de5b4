"""Self-test of the C load client against a scripted server: ``python bench/lib/cload_selftest.py``.

The benchmarks trust cload's counts and stamps, so its parser is checked on the cases a real
server produces only sometimes: frames split at every byte, many frames in one write, 16- and
64-bit lengths, a ping between data frames (it must answer with a masked pong), frames without a
stamp (not counted), and the socket.io handshake. The scripted server is a raw asyncio protocol on
127.0.0.1:0 that answers the Upgrade and then writes the frames in the chunks each case asks for.
Exits non-zero on the first mismatch.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.cload import CLoad

ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3, for cload's fixed key


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def stamped(pad: int) -> bytes:
    return json.dumps({"type": "broadcast", "data": {"t": time.time_ns(), "p": "x" * pad}}).encode()


class Scripted(asyncio.Protocol):
    """Answers the handshake, then writes ``script`` (a list of byte chunks), one write per chunk."""

    def __init__(self, script: list[bytes], socketio: bool, got: list[bytes]) -> None:
        self.script = script
        self.socketio = socketio
        self.got = got
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.buf is not None and b"\r\n\r\n" not in self.buf:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n")
            if self.socketio:
                self.transport.write(frame(b'0{"sid":"x","pingInterval":25000,"pingTimeout":20000}'))
            else:
                self.transport.write(frame(b'{"type":"welcome"}'))
                asyncio.get_running_loop().create_task(self.play())
            return
        self.got.append(data)
        if self.socketio and b"40" in data:
            self.transport.write(frame(b'40{"sid":"y"}'))
            asyncio.get_running_loop().create_task(self.play())

    async def play(self) -> None:
        await asyncio.sleep(0.05)
        for chunk in self.script:
            assert self.transport is not None
            self.transport.write(chunk)
            await asyncio.sleep(0.001)


async def case(name: str, script: list[bytes], expect: int, *, socketio: bool = False,
               expect_pong: bool = False) -> None:
    got: list[bytes] = []
    server = await asyncio.get_running_loop().create_server(lambda: Scripted(script, socketio, got), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    path = "/socket.io/?EIO=4&transport=websocket" if socketio else "/ws"
    async with CLoad(port, 0, path=path, proto="socketio" if socketio else "ws") as cl:
        await cl.connect(1, 1, 5)
        w = await cl.cmd("wait", expect, 5, 2, timeout=10)
        await asyncio.sleep(0.1)
        st = await cl.cmd("stats")
    server.close()
    ok = st["frames"] == expect and st["lat"]["count"] == expect and bool(w["done"])
    if expect_pong:
        ok = ok and any(b[0] == 0x8A for b in got if b)  # FIN + pong, masked by the client
    print(f"{'ok  ' if ok else 'FAIL'} {name}: frames {st['frames']}/{expect}, stamped {st['lat']['count']}, "
          f"reads {st['reads']}, latency max {st['lat']['max_us']} us", flush=True)
    if not ok:
        raise SystemExit(f"cload self-test failed: {name}: {st}")


async def main() -> None:
    small = [frame(stamped(50)) for _ in range(20)]
    mid = frame(stamped(300))  # 16-bit length
    big = frame(stamped(70_000))  # 64-bit length
    await case("one frame per write", small, 20)
    await case("twenty frames in one write", [b"".join(small)], 20)
    joined = b"".join(small)
    await case("split at every byte", [joined[i:i + 1] for i in range(len(joined))], 20)
    await case("16-bit length, split in the header", [mid[:1], mid[1:3], mid[3:]], 1)
    await case("64-bit length, split in the payload", [big[:5], big[5:40_000], big[40_000:]], 1)
    await case("ping between data frames", [small[0], frame(b"hi", 0x9), small[1]], 2, expect_pong=True)
    await case("unstamped frames are not counted", [frame(b'{"type":"other"}'), small[0]], 1)
    sio = [frame(b"42" + json.dumps(["broadcast", {"t": time.time_ns()}]).encode()) for _ in range(3)]
    await case("socket.io events, an Engine.IO ping among them", [sio[0], frame(b"2"), *sio[1:]], 3, socketio=True)


if __name__ == "__main__":
    asyncio.run(main())
