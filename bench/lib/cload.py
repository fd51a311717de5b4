"""Build and drive ``cload`` (bench/lib/cload.c), the C load client and paced publisher.

Why C: the asyncio client (loadclient.py) costs 4-7 us of CPU per frame, tops out at a few hundred
thousand frames/s on its core and, at N=5k, adds a queueing floor of tens of milliseconds to every
latency it measures. cload does one ``read()`` per socket wake-up and walks the frames in place.

* :func:`build` -- compile with the machine's ``gcc -O2`` into ``~/.cache/pushgate-bench/cload-<hash>``
  on first use (the hash of the source, so an edited ``cload.c`` is rebuilt).
* :class:`CLoad` -- one cload process pinned with ``taskset``; ``await cl.cmd("connect", n, batch, t)``
  sends a command line and returns its JSON reply. Commands are numbered, so replies that complete
  out of order (a ``publish`` and a ``wait`` running at once) reach the right caller.

Latency stamps: every message body carries ``"t": <CLOCK_REALTIME ns since the epoch>`` (Python:
``time.time_ns()``); cload subtracts it from the same clock at the read. Publisher and clients are
on one machine, so there is no clock skew to correct.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from lib.servers import HOST

SOURCE = Path(__file__).resolve().parent / "cload.c"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pushgate-bench"


class CLoadError(RuntimeError):
    """cload could not be built, exited, or answered with an error."""


_built: Path | None = None


def build() -> Path:
    """The path of a cload binary built from the source as it was at this process's first call (compiled
    on first use), so an edit to cload.c during a long session cannot change the client midway."""
    global _built
    if _built is not None:
        return _built
    src = SOURCE.read_bytes()
    exe = CACHE / f"cload-{hashlib.sha256(src).hexdigest()[:12]}"
    if exe.exists():
        _built = exe
        return exe
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise CLoadError("no gcc/cc on PATH: cannot build bench/lib/cload.c")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    r = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise CLoadError(f"building cload failed:\n{r.stderr[-2000:]}")
    tmp.replace(exe)
    _built = exe
    return exe


class CLoad:
    """One cload process: clients of one server (and its publisher connections)."""

    def __init__(self, port: int, cpu: int, *, path: str = "/ws", proto: str = "ws",
                 pub_path: str = "/api/broadcast", pub_port: int | None = None, pub_conns: int = 1,
                 pub_window: int = 16, payload: int = 100) -> None:
        self.argv = ["taskset", "-c", str(cpu), str(build()), "--host", HOST, "--port", str(port), "--path", path,
                     "--proto", proto, "--pub-path", pub_path, "--pub-conns", str(pub_conns),
                     "--pub-window", str(pub_window), "--payload", str(payload)]
        if pub_port is not None and pub_port != port:
            # cload publishes to --port; a server whose trigger is on another port is not supported
            raise CLoadError("cload publishes on the clients' port; give a server with POST on that port")
        self.proc: asyncio.subprocess.Process | None = None
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.pid = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20)
        assert self.proc.stdout is not None
        hello = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10))
        self.pid = int(hello["pid"])
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:  # never expected; a bad line must not stop the replies that follow
                continue
            fut = self._waiting.pop(int(msg.get("id", 0)), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        err = b""
        if self.proc.stderr is not None:
            err = await self.proc.stderr.read()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(CLoadError(f"cload exited: {err.decode(errors='replace')[-500:]}"))
        self._waiting.clear()

    async def cmd(self, verb: str, *args: float, timeout: float = 600.0) -> dict[str, Any]:
        """Send one command and wait for its reply (bounded by ``timeout``)."""
        assert self.proc is not None and self.proc.stdin is not None
        self._next += 1
        cid = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        self.proc.stdin.write(f"{cid} {verb} {' '.join(f'{a:g}' for a in args)}\n".encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, timeout)

    async def connect(self, n: int, batch: int = 100, timeout: float = 120.0) -> dict[str, Any]:
        """Open ``n`` more clients; raises if any failed or the timeout passed."""
        r = await self.cmd("connect", n, batch, timeout, timeout=timeout + 30)
        if r["ready"] != n:
            raise CLoadError(f"connected {r['ready']}/{n} clients in {r['seconds']:.1f}s "
                             f"(failed {r['failed']}, timed out {bool(r['timed_out'])}): {r['fail_reason']}")
        return r

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"0 quit\n")
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 5)
            except (OSError, TimeoutError, ConnectionError):
                if self.proc.returncode is None:
                    self.proc.kill()
                    await self.proc.wait()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, CLoadError):
                self._reader.cancel()

    async def __aenter__(self) -> CLoad:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

