"""The command line as an operator meets it: every command run as a real process, every failure
one line on stderr with the documented exit code (2 configuration/usage, 1 environment), never a
traceback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from .conftest import Process
from .helpers import timeout

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("serve", "publish", "listen", "history", "presence", "online", "config", "token", "nginx-config", "cluster")


def pushgate(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
             seconds: float = 30) -> subprocess.CompletedProcess[str]:
    """``pushgate ARGS`` with the test runner's environment minus every ``PUSHGATE_*`` setting."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PUSHGATE_") or k.startswith("PUSHGATE_TEST_")}
    return subprocess.run([sys.executable, "-m", "pushgate", *args], capture_output=True, text=True,
                          input=stdin, timeout=timeout(seconds), cwd=ROOT, env={**clean, **(env or {})})


def one_line_failure(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_version_and_help_list_every_command() -> None:
    from pushgate import __version__

    done = pushgate("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"pushgate {__version__}"
    done = pushgate("--help")
    assert done.returncode == 0
    listed = [line.split()[0] for line in done.stdout.splitlines() if re.match(r"    \w", line)]
    assert tuple(listed) == COMMANDS


def test_publish_with_one_argument_is_not_misread() -> None:
    line = one_line_failure(pushgate("publish", "news"), 2)
    assert line.startswith("pushgate publish: no DATA to publish to 'news'")
    line = one_line_failure(pushgate("publish", "--users", "a", "news", "x"), 2)
    assert "only DATA" in line
    line = one_line_failure(pushgate("publish", "news", "1", "--broker", "memory://"), 2)
    assert "reaches no node" in line


def test_serve_on_a_taken_port_fails_in_one_line_before_starting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_failure(pushgate("serve", "--port", str(port)), 1)
    assert line == f"pushgate: cannot listen on 127.0.0.1:{port}: address already in use"


def test_serve_with_an_unreachable_broker_fails_in_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = pushgate("serve", "--port", "0", "--broker", f"redis://:hunter2@127.0.0.1:{port}/0")
    line = one_line_failure(done, 1)
    assert line.startswith(f"pushgate: broker redis://127.0.0.1:{port}/0 unreachable at start-up:"), line
    assert "hunter2" not in line


def test_workers_report_a_start_up_failure_once() -> None:
    """The first worker starts alone: its one error line is the only one, and its exit code."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        broker_port = s.getsockname()[1]
    from .helpers import free_port

    done = pushgate("serve", "--port", str(free_port()), "--workers", "3",
                    "--broker", f"redis://127.0.0.1:{broker_port}/0")
    line = one_line_failure(done, 1)
    assert line.startswith(f"pushgate: broker redis://127.0.0.1:{broker_port}/0 unreachable at start-up:"), line


def test_serve_with_a_broker_url_that_is_not_redis_fails_in_one_line() -> None:
    """Something listens there but answers HTTP: a protocol error, not a traceback."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        stop = threading.Event()

        def answer_http() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=answer_http, daemon=True)
        thread.start()
        try:
            done = pushgate("serve", "--port", "0", "--broker", f"redis://127.0.0.1:{port}/0")
        finally:
            stop.set()
            thread.join(timeout(5))
    line = one_line_failure(done, 1)
    assert line.startswith(f"pushgate: broker redis://127.0.0.1:{port}/0 "), line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "x"], {}, "pushgate: config port: expected an integer, got 'x' (from --port)"),
        ([], {"PUSHGATE_PORT": "x"}, "pushgate: config port: expected an integer, got 'x' (from PUSHGATE_PORT)"),
        ([], {"PUSHGATE_PROT": "1"},
         "pushgate: config PUSHGATE_PROT: unknown environment variable; did you mean PUSHGATE_PORT?"),
    ],
)
def test_serve_configuration_errors_exit_2_saying_where(args: list[str], env: dict[str, str], expected: str) -> None:
    assert one_line_failure(pushgate("serve", *args, env=env), 2) == expected


def test_config_prints_values_with_their_sources_and_masks_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "pushgate.toml"
    conf.write_text('history_size = 7\napi_key = "k7Hs2Pq9Wm4Xz8Lc"\n')
    done = pushgate("config", "--config", str(conf), "--port", "9000", "--json",
                    env={"PUSHGATE_NODE_ID": "n1", "PUSHGATE_JWT_SECRET": "top-secret-value"})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["port"] == {"value": 9000, "source": "--port"}
    assert shown["node_id"] == {"value": "n1", "source": "PUSHGATE_NODE_ID"}
    assert shown["history_size"] == {"value": 7, "source": str(conf)}
    assert shown["host"] == {"value": "127.0.0.1", "source": "default"}
    assert shown["api_key"]["value"] == "***" and shown["jwt_secret"]["value"] == "***"
    assert "top-secret-value" not in done.stdout and "k7Hs2Pq9Wm4Xz8Lc" not in done.stdout
    text = pushgate("config", "--port", "9000")
    assert text.returncode == 0 and "port" in text.stdout and "# --port" in text.stdout


def test_config_check_is_silent_when_valid_and_exits_2_when_not() -> None:
    ok = pushgate("config", "--check", "--port", "9000")
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""
    line = one_line_failure(pushgate("config", "--check", env={"PUSHGATE_PING_INTERVAL": "0"}), 2)
    assert line == "pushgate config: config ping_interval: must be > 0 (from PUSHGATE_PING_INTERVAL)"


def test_token_mints_a_verifiable_jwt() -> None:
    secret = "3q8Zk1vVb0Qm7XyP2sLr9TfGh4JwNc6D"
    done = pushgate("token", "alice", "--channel", "news", "--channel", "chat:*", "--ttl", "60",
                    env={"PUSHGATE_JWT_SECRET": secret, "PUSHGATE_JWT_AUDIENCE": "app"})
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"], audience="app")
    assert claims["sub"] == "alice" and claims["channels"] == ["news", "chat:*"]
    assert 0 < claims["exp"] - claims["iat"] <= 60
    assert "jwt_secret" in one_line_failure(pushgate("token", "alice"), 2)


def test_client_commands_against_a_running_node(spawn_node: Callable[..., Process]) -> None:
    node = spawn_node()
    url = ["--url", node.url]
    first = pushgate("publish", "news", '{"n": 1}', *url)
    assert first.returncode == 0, first.stderr
    position = json.loads(first.stdout)
    for n in (2, 3):
        assert pushgate("publish", "news", json.dumps({"n": n}), *url).returncode == 0
    assert pushgate("publish", "news", "-", *url, stdin="plain text").returncode == 0

    since = f"{position['epoch']}:{position['offset']}"
    listened = pushgate("listen", "news", "--since", since, "--count", "3", *url)
    assert listened.returncode == 0, listened.stderr
    lines = [json.loads(line) for line in listened.stdout.splitlines()]
    assert [(m["offset"], m["data"]) for m in lines] == [(2, {"n": 2}), (3, {"n": 3}), (4, "plain text")]
    assert all(m["channel"] == "news" and m["epoch"] == position["epoch"] for m in lines)

    history = pushgate("history", "news", "--limit", "2", *url)
    assert history.returncode == 0, history.stderr
    assert [p["data"] for p in json.loads(history.stdout)["publications"]][-1] == "plain text"
    for command in (["presence", "news"], ["online"]):
        done = pushgate(*command, *url)
        assert done.returncode == 0 and isinstance(json.loads(done.stdout), dict), done.stderr
    assert one_line_failure(pushgate("history", "bad channel!", *url), 1).startswith("pushgate history: GET ")


def test_client_commands_fail_in_one_line_without_a_node() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for command in (["publish", "news", "1"], ["online"], ["history", "news"]):
        line = one_line_failure(pushgate(*command, "--url", f"http://127.0.0.1:{port}"), 1)
        assert "Connection refused" in line or "refused" in line.lower(), line
    line = one_line_failure(pushgate("listen", "news", "--connect-timeout", "1", "--url",
                                     f"http://127.0.0.1:{port}"), 1)
    assert line == f"pushgate listen: ws://127.0.0.1:{port}/ws: no connection within 1s (is a node running there?)"


def test_the_operations_guide_session_runs_as_written(tmp_path: Path) -> None:
    """docs/operations.md's shell session, on a free port, with ``pushgate`` on PATH."""
    from .helpers import free_port

    doc = (ROOT / "docs" / "operations.md").read_text()
    session = re.search(r"## The command line.*?```sh\n(.*?)```", doc, re.S)
    assert session is not None
    port = free_port()
    script = session.group(1).replace("8090", str(port)).replace("sleep 2\n", (
        f"for i in $(seq 1 100); do curl -sf http://127.0.0.1:{port}/readyz >/dev/null && break; sleep 0.1; done\n"))
    shim = tmp_path / "bin" / "pushgate"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m pushgate "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHGATE_") or k.startswith("PUSHGATE_TEST_")}
    env["PATH"] = f"{shim.parent}:{env['PATH']}"
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script  # no server left behind on failure
    done = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=timeout(60))
    assert done.returncode == 0, done.stdout + done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    listened = [p for p in printed if set(p) == {"channel", "epoch", "offset", "data"}]
    assert [m["data"] for m in listened] == [{"text": "hello"}, "plain text"]
    assert any("publications" in p for p in printed) and any("connections" in p for p in printed)
