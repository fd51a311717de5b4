"""The raw WebSocket load client shared by fanout.py and cluster.py.

Not a WebSocket library, so that the client is not the bottleneck: it sends the HTTP Upgrade itself
(checks ``101`` and ``Sec-WebSocket-Accept``) and parses server frames in ``data_received``.

* :class:`WSClient` / :class:`Stats` -- many idle connections that only *count* text frames containing
  ``Stats.marker`` (fast path for one small frame per read); :class:`WSClient16` adds a fast path for
  one frame with a 16-bit length. :func:`connect_clients` opens N of them in batches.
* :func:`trigger_broadcasts` -- M HTTP POSTs, ``concurrency`` in flight, over keep-alive connections.
* :class:`JsonWS` / :func:`open_ws` -- a few connections that see every text frame (latency clients);
  :func:`client_frame` builds masked client frames.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import time
from typing import Any

from lib.servers import HOST

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_upgrade(data: bytes, accept: bytes) -> tuple[int, str]:
    """The server's answer to our handshake: (offset of the first frame, "") after a complete ``101`` with
    the right ``Sec-WebSocket-Accept``; (-1, "") while the head is incomplete; (-1, reason) if refused."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return -1, "oversized handshake response" if len(data) > 16384 else ""
    head = data[:end]
    if not head.startswith(b"HTTP/1.1 101"):
        return -1, "handshake: " + head.split(b"\r\n", 1)[0].decode("latin-1")
    if accept not in head:
        return -1, "handshake: bad Sec-WebSocket-Accept"
    return end + 4, ""


class Handshaking(asyncio.Protocol):
    """Keeps the unparsed rest of a read in ``buf`` and consumes the server's answer to the handshake."""

    __slots__ = ("accept", "buf", "upgraded")
    accept: bytes
    buf: bytes
    upgraded: bool

    def _frames(self, data: bytes) -> bytes | None:
        """The bytes to parse as frames (the buffered rest first), or None: the answer is incomplete or a refusal."""
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.upgraded:
            start, err = read_upgrade(data, self.accept)
            if start < 0:
                if err:
                    self._refused(err)
                else:
                    self.buf = data
                return None
            self.upgraded = True
            self._upgraded()
            data = data[start:]
        return data

    def _upgraded(self) -> None:
        pass

    def _refused(self, reason: str) -> None:
        raise NotImplementedError


class Stats:
    """Shared counters for all client connections of one measurement."""

    def __init__(self) -> None:
        self.connected = 0  # got a 101
        self.ready = 0  # got the first (welcome) text frame
        self.expect = 1 << 62  # broadcast frames every client must receive
        self.done = 0  # clients that received `expect` broadcast frames
        self.target_done = 1 << 62
        self.done_event: asyncio.Event | None = None
        self.t_done = 0.0
        self.failed = 0  # handshake failures
        self.closed_by_server = 0  # close frames received
        self.lost = 0  # connection_lost while we did not expect it
        self.pings = 0
        self.reads = 0  # socket reads (counted by WSClient16 only): frames per read ~ server coalescing
        self.marker = b'"broadcast"'
        self.sample: bytes | None = None
        self.fail_reason = ""

    def reset_round(self, expect: int, n: int) -> None:
        self.expect = expect
        self.done = 0
        self.target_done = n
        self.t_done = 0.0
        self.done_event = asyncio.Event()


class WSClient(Handshaking):
    """One WebSocket client connection: handshake, then count broadcast text frames."""

    __slots__ = ("closing", "count", "finished", "ready", "request", "sample_me", "stats", "transport")

    def __init__(self, stats: Stats, request: bytes, accept: bytes, sample_me: bool) -> None:
        self.stats = stats
        self.request = request
        self.accept = accept
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.ready = False
        self.count = 0
        self.finished = False
        self.closing = False
        self.sample_me = sample_me

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.stats.lost += 1
        self.closing = True

    def data_received(self, data: bytes) -> None:
        # Fast path (the common case while broadcasting): exactly one small, complete, unmasked
        # text frame carrying the broadcast marker, nothing buffered.
        if self.ready and not self.buf and data[0] == 0x81:
            ln = data[1]
            if ln < 126 and ln + 2 == len(data) and self.stats.marker in data:
                self.count += 1
                if not self.finished and self.count >= self.stats.expect:
                    self._finish()
                return
        self._slow(data)

    def _finish(self) -> None:
        self.finished = True
        st = self.stats
        st.done += 1
        if st.done >= st.target_done:
            st.t_done = time.perf_counter()
            if st.done_event is not None:
                st.done_event.set()

    def _upgraded(self) -> None:
        self.stats.connected += 1

    def _refused(self, reason: str) -> None:
        self._fail(reason)

    def _slow(self, data: bytes) -> None:
        frames = self._frames(data)
        if not frames:
            return
        data = frames

        n = len(data)
        i = 0
        cnt = 0
        marker = self.stats.marker
        last_h = last_e = 0
        while i + 2 <= n:
            b1 = data[i + 1]
            ln = b1 & 0x7F
            if ln < 126:
                h = i + 2
            elif ln == 126:
                if i + 4 > n:
                    break
                ln = (data[i + 2] << 8) | data[i + 3]
                h = i + 4
            else:
                if i + 10 > n:
                    break
                ln = int.from_bytes(data[i + 2:i + 10], "big")
                h = i + 10
            if b1 & 0x80:  # servers must not mask; tolerate it anyway (we do not read content)
                h += 4
            e = h + ln
            if e > n:
                break
            op = data[i] & 0x0F
            if op == 1 or op == 2:
                if data.find(marker, h, e) >= 0:
                    cnt += 1
                    last_h = h
                    last_e = e
                elif not self.ready:
                    self.ready = True
                    self.stats.ready += 1
            elif op == 9:
                self._send_control(0xA, data[h:e])
                self.stats.pings += 1
            elif op == 8:
                self.stats.closed_by_server += 1
                self._send_control(0x8, data[h:h + 2])
                self.closing = True
                if self.transport is not None:
                    self.transport.close()
                return
            i = e
        if i < n:
            self.buf = data[i:]
        if cnt:
            if not self.ready:  # no welcome frame seen: the first counted frame implies readiness
                self.ready = True
                self.stats.ready += 1
            if self.sample_me and self.stats.sample is None:
                self.stats.sample = data[last_h:last_e]
            self.count += cnt
            if not self.finished and self.count >= self.stats.expect:
                self._finish()

    # -- helpers ------------------------------------------------------------------------------
    def _send_control(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[k & 3] for k, b in enumerate(payload[:125]))
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(masked))) + mask + masked)

    def _fail(self, reason: str) -> None:
        self.stats.failed += 1
        self.stats.fail_reason = reason
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


def make_handshake(port: int, path: str = "/ws") -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://{HOST}:{port}\r\n\r\n"
    ).encode()
    return req, accept


def _factory(cls: type[WSClient], stats: Stats, req: bytes, accept: bytes, first: bool) -> Any:
    return lambda: cls(stats, req, accept, sample_me=first)


async def connect_clients(port: int, n: int, stats: Stats, batch: int, timeout: float,
                          client_class: type[WSClient] | None = None, path: str = "/ws") -> list[WSClient]:
    """Open n connections in batches; each batch must be fully upgraded+welcomed before the next.

    ``client_class`` (a WSClient subclass, default WSClient) lets other benchmarks count other frames
    or speak socket.io (:class:`SioWSClient`, with ``path`` its Engine.IO URL).
    """
    cls = client_class or WSClient
    loop = asyncio.get_running_loop()
    req, accept = make_handshake(port, path)
    clients: list[WSClient] = []
    deadline = time.monotonic() + timeout
    while len(clients) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"connected only {stats.ready}/{n} clients within {timeout:.0f}s")
        k = min(batch, n - len(clients))
        base = len(clients)
        coros = [loop.create_connection(_factory(cls, stats, req, accept, base + j == 0), HOST, port)
                 for j in range(k)]
        res = await asyncio.wait_for(asyncio.gather(*coros, return_exceptions=True),
                                     max(1.0, deadline - time.monotonic()))
        for r in res:
            if isinstance(r, BaseException):
                raise RuntimeError(f"connect failed after {len(clients)} clients: {r!r}")
            clients.append(r[1])
        want = len(clients)
        while stats.ready + stats.failed < want:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {stats.ready}/{want} clients got their welcome frame "
                                   f"within {timeout:.0f}s")
            await asyncio.sleep(0.005)
        if stats.failed:
            raise RuntimeError(f"{stats.failed} handshakes failed: {stats.fail_reason}")
    return clients


async def trigger_broadcasts(session: Any, url: str, body: bytes, m: int, concurrency: int) -> dict[str, Any]:
    sent = 0
    errors: list[str] = []
    next_i = 0

    async def worker() -> None:
        nonlocal sent, next_i
        while next_i < m and len(errors) < 10:
            next_i += 1
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status // 100 != 2:
                        errors.append(f"HTTP {r.status}: {(await r.text())[:200]}")
                    else:
                        sent += 1
            except Exception as e:
                errors.append(repr(e))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, m)))))
    return {"triggers_ok": sent, "trigger_errors": errors[:5], "trigger_seconds": time.perf_counter() - t0}


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 §5.3: 4-byte mask, payload XOR mask)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = random.getrandbits(32).to_bytes(4, "big")
    m = int.from_bytes((mask * ((n + 3) // 4))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")


class JsonWS(Handshaking):
    """Handshake, then every complete text frame goes to :meth:`on_text` with the read's time_ns."""

    def __init__(self, request: bytes, accept: bytes) -> None:
        self.request = request
        self.accept = accept
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.welcome: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.errors = 0
        self.first_error = ""
        self.close_reason = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before welcome: {exc or self.close_reason}"))

    def send_text(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(payload))

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _refused(self, reason: str) -> None:
        self.close_reason = reason
        self.close()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        frames = self._frames(data)
        if frames is None:
            return
        data = frames
        n = len(data)
        i = 0
        while i + 2 <= n:
            b1 = data[i + 1]
            ln = b1 & 0x7F
            h = i + 2
            if ln == 126:
                if i + 4 > n:
                    break
                ln = int.from_bytes(data[i + 2:i + 4], "big")
                h = i + 4
            elif ln == 127:
                if i + 10 > n:
                    break
                ln = int.from_bytes(data[i + 2:i + 10], "big")
                h = i + 10
            e = h + ln
            if e > n:
                break
            op = data[i] & 0x0F
            payload = data[h:e]
            i = e
            if op == 1:
                if not self.welcome.done():
                    if b'"type":"welcome"' in payload:
                        self.welcome.set_result(payload)
                        continue
                if b'"type":"error"' in payload:
                    self.errors += 1
                    if not self.first_error:
                        self.first_error = payload[:300].decode(errors="replace")
                    continue
                self.on_text(payload, now)
            elif op == 9 and self.transport is not None:
                self.transport.write(client_frame(payload[:125], 0xA))
            elif op == 8:
                self.close_reason = f"close frame {payload[:2].hex()} {payload[2:].decode(errors='replace')}"
                if self.transport is not None:
                    self.transport.write(client_frame(payload[:2], 0x8))
                    self.transport.close()
                return
        if i < n:
            self.buf = data[i:]

    def on_text(self, payload: bytes, now_ns: int) -> None:  # pragma: no cover - overridden
        pass


async def open_ws(cls: Any, port: int, *args: Any, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    req, accept = make_handshake(port)
    _, proto = await asyncio.wait_for(loop.create_connection(lambda: cls(req, accept, *args), HOST, port), timeout)
    await asyncio.wait_for(proto.welcome, timeout)
    return proto


class WSClient16(WSClient):
    """WSClient plus a fast path for one complete frame with a 16-bit length; counts reads in ``Stats.reads``.

    pushgate's ``message`` frame for an 80-char string is ~160 bytes, i.e. over 125, so every
    frame would take WSClient's general parser; this keeps the load client's cost per delivery
    at the level of the small-frame case, so it stays out of the way of the servers.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        st = self.stats
        st.reads += 1  # reads per delivered frame: how much the server coalesced
        if self.ready and not self.buf and data[0] == 0x81 and data[1] == 126 and len(data) >= 4:
            ln = (data[2] << 8) | data[3]
            if ln + 4 == len(data) and data.find(st.marker, 4, 40) >= 0:
                if self.sample_me and st.sample is None:
                    st.sample = data[4:]
                self.count += 1
                if not self.finished and self.count >= st.expect:
                    self._finish()
                return
        WSClient.data_received(self, data)


class SioWSClient(WSClient):
    """A counting client for the socket.io peer (Engine.IO 4 over WebSocket, python-socketio).

    Engine.IO carries its own packets in text frames: the open packet ``0{...}`` is answered with a
    namespace connect ``40``, whose reply ``40{...}`` marks the client ready; an Engine.IO ping ``2``
    must be answered with ``3`` within the ping timeout or the server drops the client. Events
    (``42["broadcast",...]``) are counted like the contract's broadcast frames. No fast path: this peer
    is two orders of magnitude slower than the client.
    """

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        frames = self._frames(data)
        if not frames:
            return
        data = frames
        n, i, cnt = len(data), 0, 0
        while i + 2 <= n:
            ln = data[i + 1] & 0x7F
            h = i + 2
            if ln == 126:
                if i + 4 > n:
                    break
                ln, h = (data[i + 2] << 8) | data[i + 3], i + 4
            elif ln == 127:
                if i + 10 > n:
                    break
                ln, h = int.from_bytes(data[i + 2:i + 10], "big"), i + 10
            e = h + ln
            if e > n:
                break
            op = data[i] & 0x0F
            payload = data[h:e]
            if op == 1:
                if payload == b"2":
                    self._send_control(0x1, b"3")
                    self.stats.pings += 1
                elif not self.ready and payload.startswith(b"40"):
                    self.ready = True
                    self.stats.ready += 1
                elif not self.ready and payload.startswith(b"0"):
                    self._send_control(0x1, b"40")
                elif self.stats.marker in payload:
                    cnt += 1
                    if self.sample_me and self.stats.sample is None:
                        self.stats.sample = payload
            elif op == 9:
                self._send_control(0xA, payload)
                self.stats.pings += 1
            elif op == 8:
                self.stats.closed_by_server += 1
                self.closing = True
                if self.transport is not None:
                    self.transport.close()
                return
            i = e
        if i < n:
            self.buf = data[i:]
        if cnt:
            self.count += cnt
            if not self.finished and self.count >= self.stats.expect:
                self._finish()
