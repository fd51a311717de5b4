"""A lightweight WebSocket client for hundreds of connections in one test process.

One :class:`asyncio.Protocol` per connection, no aiohttp session, no task per connection: the
handshake is written by hand, frames are parsed from the byte stream (RFC 6455 section 5.2),
pings are answered (5.5.2), and the client follows the pushgate protocol's recovery rules
(docs/protocol.md "Recovery"): it resubscribes with ``since`` and reconnects with
``user_since``, drops a ``message``/``direct`` whose offset is not past its position in the same
epoch, and reconnects with jitter after any close (at once, jittered, after 1012).

What it records is what the chaos test checks: the payload sequence numbers it kept, in order;
duplicates it dropped; how long each reconnect took (from the loss to the subscribe reply) and
how many messages each recovery replayed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    channel_seen: list[int] = field(default_factory=list)  # data["n"] of kept channel messages
    direct_seen: list[int] = field(default_factory=list)  # data["k"] of kept direct messages
    duplicates: int = 0  # messages dropped by offset (the server sent them twice)
    resyncs: list[dict[str, Any]] = field(default_factory=list)  # resync pushes, and any error frame
    # where each resync came: ("channel" | "user", how many numbers of that stream were kept before it)
    resync_marks: list[tuple[str, int]] = field(default_factory=list)
    reconnects: list[float] = field(default_factory=list)  # seconds from loss to subscribe reply
    # each reconnect in phases: (loss -> TCP connected, -> welcome, -> subscribe reply)
    phases: list[tuple[float, float, float]] = field(default_factory=list)
    recovered_channel: int = 0  # messages replayed by `since` recoveries
    recovered_direct: int = 0  # messages replayed by `user_since` recoveries
    not_recovered: int = 0  # recoveries answered recovered: false
    refused: int = 0  # handshakes answered other than 101
    closes: dict[int, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)


class RawClient(asyncio.Protocol):
    """One user, one channel, reconnecting through ``host:port`` until :meth:`stop`."""

    def __init__(self, host: str, port: int, user: str, channel: str) -> None:
        self.host, self.port, self.user, self.channel = host, port, user, channel
        self.stats = Stats()
        self.connected = False  # welcome seen and channel subscribed
        self.ch_pos: tuple[str, int] | None = None
        self.user_pos: tuple[str, int] | None = None
        self.lost_at: float | None = None
        self.stopping = False
        self.failures = 0
        self._t_connected = self._t_welcome = 0.0
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._upgraded = False
        self._close_code = 1006
        self._since_sent: tuple[str, int] | None = None
        self._user_since_sent: tuple[str, int] | None = None

    # -- connecting ---------------------------------------------------------------------------------------

    def start(self, delay: float = 0.0) -> None:
        asyncio.get_running_loop().call_later(delay, self._connect)

    def _connect(self) -> None:
        if self.stopping:
            return
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: self, self.host, self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self._retry()

    def _retry(self, now: bool = False) -> None:
        """Reconnect later: 1012 at once (with a little jitter), else exponential backoff, full jitter."""
        if self.stopping:
            return
        self.failures += 1
        cap = 0.3 if now else min(2.0, 0.1 * 2 ** min(self.failures, 5))
        self.start(random.uniform(0.02, cap))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._t_connected = time.monotonic()
        self._buf.clear()
        self._upgraded = False
        self._close_code = 1006
        query = f"user={self.user}"
        self._user_since_sent = self.user_pos
        if self.user_pos is not None:
            query += f"&user_since={self.user_pos[0]}:{self.user_pos[1]}"
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /ws?{query} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         ).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.connected:
            self.lost_at = time.monotonic()
        self.connected = False
        self.stats.closes[self._close_code] = self.stats.closes.get(self._close_code, 0) + 1
        self._retry(now=self._close_code == 1012)

    def stop(self) -> None:
        self.stopping = True
        if self._transport is not None:
            self._transport.close()

    # -- bytes in ----------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._upgraded:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self._buf[: self._buf.find(b"\r\n")].split()
            if len(status) < 2 or status[1] != b"101":
                self.stats.refused += 1
                assert self._transport is not None
                self._transport.close()
                return
            del self._buf[: end + 4]
            self._upgraded = True
        self._frames()

    def _frames(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            opcode, length, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                (length,), start = struct.unpack_from("!H", buf, 2), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                (length,), start = struct.unpack_from("!Q", buf, 2), 10
            if len(buf) < start + length:
                return
            payload = bytes(buf[start : start + length])
            del buf[: start + length]
            if opcode == 1:
                self._on_frame(json.loads(payload))
            elif opcode == 9:
                self._send(10, payload)  # pong with the ping's payload (RFC 6455 5.5.3)
            elif opcode == 8:
                self._close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self._send(8, payload[:2])
                if self._transport is not None:
                    self._transport.close()
                return

    def _send(self, opcode: int, payload: bytes) -> None:
        """A masked frame (client to server frames are masked: RFC 6455 5.3)."""
        if self._transport is None or self._transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self._transport.write(head + mask + masked)

    def send_json(self, obj: dict[str, Any]) -> None:
        self._send(1, json.dumps(obj).encode())

    # -- the protocol ------------------------------------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            if self._keep(frame, self.ch_pos):
                self.ch_pos = (frame["epoch"], frame["offset"])
                self.stats.channel_seen.append(frame["data"]["n"])
        elif kind == "direct":
            if self._keep(frame, self.user_pos):
                self.user_pos = (frame["epoch"], frame["offset"])
                self.stats.direct_seen.append(frame["data"]["k"])
        elif kind == "welcome":
            self._t_welcome = time.monotonic()
            self.stats.nodes.append(frame["node"])
            stream = frame.get("stream") or {}
            if self._user_since_sent is not None:
                if stream.get("recovered"):
                    self.stats.recovered_direct += stream["offset"] - self._user_since_sent[1]
                else:
                    self.stats.not_recovered += 1
            if self.user_pos is None and stream:
                self.user_pos = (stream["epoch"], 0)  # the inbox (nothing acked) replays from 1
            self._since_sent = self.ch_pos
            sub: dict[str, Any] = {"id": 1, "type": "subscribe", "channel": self.channel}
            if self.ch_pos is not None:
                sub["since"] = {"epoch": self.ch_pos[0], "offset": self.ch_pos[1]}
            self.send_json(sub)
        elif kind == "ok" and frame.get("id") == 1:
            if self._since_sent is not None:
                if frame.get("recovered"):
                    self.stats.recovered_channel += frame["offset"] - self._since_sent[1]
                else:
                    self.stats.not_recovered += 1
            elif self.ch_pos is None:
                self.ch_pos = (frame["epoch"], frame["offset"])
            self.connected = True
            self.failures = 0
            if self.lost_at is not None:
                now = time.monotonic()
                self.stats.reconnects.append(now - self.lost_at)
                self.stats.phases.append((self._t_connected - self.lost_at, self._t_welcome - self._t_connected,
                                          now - self._t_welcome))
                self.lost_at = None
        elif kind == "resync":
            # docs/protocol.md: the stream goes on from the resync's position (a new epoch after
            # a broker that lost writes); remember where in the sequence it came
            self.stats.resyncs.append(frame)
            if frame.get("stream") == "user":
                self.user_pos = (frame["epoch"], frame["offset"])
                self.stats.resync_marks.append(("user", len(self.stats.direct_seen)))
            else:
                self.ch_pos = (frame["epoch"], frame["offset"])
                self.stats.resync_marks.append(("channel", len(self.stats.channel_seen)))
        elif kind == "error":
            self.stats.resyncs.append(frame)  # any error frame fails the test: kept with the resyncs

    def _keep(self, frame: dict[str, Any], pos: tuple[str, int] | None) -> bool:
        if pos is not None and frame["epoch"] == pos[0] and frame["offset"] <= pos[1]:
            self.stats.duplicates += 1
            return False
        return True
