"""The servers the benchmarks compare: pushgate builds and peer servers with the same contract.

Contract: ``GET /healthz`` -> 200; ``GET /ws`` -> WebSocket, one ``{"type":"welcome",...}`` text frame
first; ``POST /api/broadcast`` with ``{"data": <json>}`` -> ``{"type":"broadcast","data":<json>}`` to
every client. Two peers bend it, and their :class:`Target` says how:

* ``websockets`` serves the POST on a second port (``needs_trigger_port``);
* ``socketio`` (python-socketio) speaks socket.io: the clients connect to ``/socket.io/?EIO=4&
  transport=websocket`` and answer the Engine.IO open packet with a namespace connect (``proto``).

Third-party peers are installed into a benchmark cache on first use, never as project dependencies:
``ws`` and ``uwebsockets`` with npm, ``python-socketio`` with ``pip install --target``. The
``uwebsockets`` package (a third-party repackaging of uWebSockets.js binaries) runs as the unprivileged
system user ``pgbench`` (created if missing), from a cache directory that user can read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from lib.servers import HOST, PEERS_DIR, PushgateBuild

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pushgate-bench"
NODE_CACHE = CACHE / "node"
SOCKETIO_CACHE = CACHE / "py-socketio"
# uWebSockets.js runs as an unprivileged user, which cannot read root's home: its cache is elsewhere.
UWS_CACHE = Path(os.environ.get("PUSHGATE_BENCH_SHARED_CACHE", "/var/cache/pushgate-bench")) / "uws"
UWS_VERSION = "3.0.6"
BENCH_USER = "pgbench"
PY = sys.executable
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclasses.dataclass
class Target:
    """A server with the benchmark's contract; ``argv`` gets ``--host``/``--port`` (and ``--trigger-port``)."""

    name: str
    description: str
    argv: list[str]
    needs_trigger_port: bool = False
    build: PushgateBuild | None = None  # pushgate targets: the source tree it runs from
    ws_path: str = "/ws"
    proto: str = "ws"  # "ws" (welcome frame) or "socketio" (Engine.IO 4 open + namespace connect)

    @property
    def is_pushgate(self) -> bool:
        return self.build is not None

    def command(self, port: int, trigger_port: int) -> list[str]:
        cmd = [*self.argv, "--host", HOST, "--port", str(port)]
        return cmd + (["--trigger-port", str(trigger_port)] if self.needs_trigger_port else [])

    def env(self) -> dict[str, str]:
        if self.build is not None:
            return self.build.env()
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)
        if self.name == "node-ws":
            env["NODE_PATH"] = str(NODE_CACHE / "node_modules")
        elif self.name == "uws":
            env = {"PATH": env.get("PATH", "/usr/bin:/bin"), "NODE_PATH": str(UWS_CACHE / "node_modules"),
                   "HOME": str(UWS_CACHE)}
        elif self.name == "socketio":
            env["PYTHONPATH"] = os.pathsep.join(x for x in (str(SOCKETIO_CACHE), env.get("PYTHONPATH")) if x)
        return env

    def trigger_url(self, port: int, trigger_port: int) -> str:
        p = trigger_port if self.needs_trigger_port else port
        return f"http://{HOST}:{p}/api/broadcast"

    def available(self) -> tuple[bool, str]:
        if self.build is not None:
            r = subprocess.run([*self.argv, "--help"], env=self.env(), capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                return False, "`python -m pushgate serve --help` failed: " + (r.stderr.strip()[-300:])
            return True, ""
        if self.name == "websockets":
            try:
                import websockets  # noqa: F401
            except ImportError:
                return False, "websockets not installed"
            return True, ""
        if self.name == "node-ws":
            return npm_available(NODE_CACHE, "ws", "ws@8")
        if self.name == "uws":
            return uws_available()
        if self.name == "socketio":
            return socketio_available()
        return True, ""

    def version(self) -> str:
        try:
            if self.build is not None:
                r = subprocess.run([PY, "-c", "import pushgate,sys;"
                                    "sys.stdout.write(getattr(pushgate,'__version__','?'))"],
                                   env=self.env(), capture_output=True, text=True, timeout=30)
                label = "pushgate" if self.name == "pushgate" else f"{self.name}: pushgate"
                return f"{label} " + (r.stdout.strip() or "?")
            if self.name == "aiohttp":
                import aiohttp
                return f"aiohttp {aiohttp.__version__}"
            if self.name in ("raw-uvloop", "raw-coalesce"):
                import uvloop
                return f"raw asyncio Protocols on uvloop {uvloop.__version__}"  # type: ignore[attr-defined]
            if self.name == "websockets":
                import websockets
                return f"websockets {websockets.__version__}"
            if self.name in ("node-ws", "uws"):
                node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
                root, pkg = (NODE_CACHE, "ws") if self.name == "node-ws" else (UWS_CACHE, "uwebsockets")
                meta = json.loads((root / "node_modules" / pkg / "package.json").read_text())
                user = f", as user {BENCH_USER}" if self.name == "uws" else ""
                return f"node {node} + {pkg} {meta.get('version')}{user}"
            if self.name == "socketio":
                r = subprocess.run([PY, "-c", "import socketio,engineio,sys;from importlib.metadata import "
                                    "version as v;sys.stdout.write(v('python-socketio'))"],
                                   env=self.env(), capture_output=True, text=True, timeout=30)
                return f"python-socketio {r.stdout.strip() or '?'} on aiohttp"
        except Exception as e:  # pragma: no cover - informational only
            return f"? ({e})"
        return "?"


def npm_available(root: Path, module: str, spec: str) -> tuple[bool, str]:
    """``module`` importable from ``root``/node_modules, ``npm install``ed there on first use."""
    if not shutil.which("node"):
        return False, "node not on PATH"
    if not (root / "node_modules" / module).is_dir():
        if not shutil.which("npm"):
            return False, "npm not on PATH"
        root.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run(["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", spec],
                               capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return False, f"npm install {spec} timed out"
        if r.returncode != 0:
            return False, f"npm install {spec} failed: " + r.stderr.strip()[-300:]
    return True, ""


def ensure_bench_user() -> tuple[bool, str]:
    """The unprivileged system user the uWebSockets.js peer runs as (created when we are root)."""
    try:
        pwd.getpwnam(BENCH_USER)
        return True, ""
    except KeyError:
        pass
    if os.geteuid() != 0:
        return False, f"user {BENCH_USER} missing and not root to create it"
    r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", BENCH_USER],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return False, f"useradd {BENCH_USER} failed: {r.stderr.strip()[-200:]}"
    return True, ""


def uws_available() -> tuple[bool, str]:
    """Install ``uwebsockets`` into UWS_CACHE (world-readable), copy the peer script there, check the user."""
    if os.geteuid() != 0 and not shutil.which("setpriv"):
        return False, "needs root (to drop to the unprivileged user) and setpriv"
    ok, why = ensure_bench_user()
    if not ok:
        return ok, why
    ok, why = npm_available(UWS_CACHE, "uwebsockets", f"uwebsockets@{UWS_VERSION}")
    if not ok:
        return ok, why
    shutil.copy2(PEERS_DIR / "uws_peer.js", UWS_CACHE / "uws_peer.js")
    for d in [UWS_CACHE, *UWS_CACHE.parents]:
        if d == Path("/"):
            break
        mode = d.stat().st_mode
        if not mode & 0o001:
            return False, f"{d} is not searchable by {BENCH_USER} (mode {oct(mode & 0o777)})"
    r = subprocess.run([*uws_argv()[:-1], "-e", "require('uwebsockets')"], env=UWS_TARGET.env(),
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return False, "uwebsockets does not load as " + BENCH_USER + ": " + r.stderr.strip()[-300:]
    return True, ""


def uws_argv() -> list[str]:
    """node as the unprivileged user: setpriv exec()s node directly (no PAM session, so the raised
    RLIMIT_NOFILE that Proc set is kept, and taskset's pid is node's)."""
    return ["setpriv", f"--reuid={BENCH_USER}", f"--regid={BENCH_USER}", "--clear-groups", "--",
            "node", str(UWS_CACHE / "uws_peer.js")]


def socketio_available() -> tuple[bool, str]:
    """``python-socketio`` importable, ``pip install --target``ed into SOCKETIO_CACHE on first use."""
    if not (SOCKETIO_CACHE / "socketio").is_dir():
        SOCKETIO_CACHE.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run([PY, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                "--target", str(SOCKETIO_CACHE), "python-socketio>=5,<6"],
                               capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return False, "pip install python-socketio timed out"
        if r.returncode != 0:
            return False, "pip install python-socketio failed: " + r.stderr.strip()[-300:]
    return True, ""


UWS_TARGET = Target("uws", "uWebSockets.js (npm uwebsockets 3.0.6, third-party binaries), app.publish() to a topic "
                    "every client subscribes to, run as user pgbench (bench/peers/uws_peer.js)", uws_argv())
PEERS: dict[str, Target] = {t.name: t for t in (
    Target("aiohttp", "aiohttp app, `await ws.send_str()` per client (bench/peers/aiohttp_peer.py)",
           [PY, str(PEERS_DIR / "aiohttp_peer.py")]),
    Target("websockets", "websockets 17 asyncio server + websockets.broadcast() (bench/peers/websockets_peer.py)",
           [PY, str(PEERS_DIR / "websockets_peer.py")], needs_trigger_port=True),
    Target("node-ws", "Node.js + ws, ws.send() per client (bench/peers/ws_peer.js)",
           ["node", str(PEERS_DIR / "ws_peer.js")]),
    UWS_TARGET,
    Target("socketio", "python-socketio AsyncServer on aiohttp, sio.emit() to all (bench/peers/socketio_peer.py)",
           [PY, str(PEERS_DIR / "socketio_peer.py")], ws_path=SIO_PATH, proto="socketio"),
    Target("raw-uvloop", "ceiling: raw uvloop Protocols, one prebuilt frame + transport.write() "
           "per client (bench/peers/raw_peer.py)", [PY, str(PEERS_DIR / "raw_peer.py")]),
    Target("raw-coalesce", "experiment: raw-uvloop, but the frames of all broadcasts handled in "
           "one loop iteration go out as one write per client (raw_peer.py --coalesce)",
           [PY, str(PEERS_DIR / "raw_peer.py"), "--coalesce"]),
)}


def pushgate_target(build: PushgateBuild) -> Target:
    where = "this repo" if build.name == "pushgate" else build.describe_source()
    return Target(build.name, f"pushgate serve ({where})", [PY, "-m", "pushgate", "serve"], build=build)


#: targets the C load client (cload) cannot drive, and why
CLOAD_UNSUPPORTED = {"websockets": "its trigger is on a second port; cload publishes on the clients' port"}


def place_builds(ap: argparse.ArgumentParser, targets: list[str], builds: list[PushgateBuild]) -> None:
    """Put each ``--pushgate-src`` build right after ``pushgate`` in ``targets`` (unless the
    list names it already), and refuse a build named like a peer or a target that is neither."""
    names = [b.name for b in builds]
    for b in names[1:]:
        if b in PEERS:
            ap.error(f"--pushgate-src name {b!r} is a peer's name")
        if b not in targets:
            at = targets.index("pushgate") + 1 if "pushgate" in targets else 0
            targets.insert(at, b)
    for t in targets:
        if t not in PEERS and t not in names:
            ap.error(f"unknown target {t!r}; choose from {', '.join([*names, *PEERS])}")


def resolve_targets(targets: list[str], builds: list[PushgateBuild], logdir: Path, *, live: bool = False,
                    unsupported: dict[str, str] | None = None
                    ) -> tuple[dict[str, Target], list[str], dict[str, str]]:
    """Snapshot the builds in ``targets`` and check every target: (all targets by name, the
    available ones in order, the skipped ones with why, also printed to stderr)."""
    chosen = {b.name: b for b in builds if b.name in targets}
    for b in chosen.values():
        b.snapshot(logdir / f"src-{b.name}", live=live)
    all_targets = PEERS | {b.name: pushgate_target(b) for b in chosen.values()}
    available: list[str] = []
    skipped: dict[str, str] = {}
    for t in targets:
        ok, why = (False, unsupported[t]) if unsupported and t in unsupported else all_targets[t].available()
        if ok:
            available.append(t)
        else:
            skipped[t] = why
            print(f"# skipping {t}: {why}", file=sys.stderr)
    return all_targets, available, skipped
