"""Run the browser client's integration tests (tests/js/*.test.mjs) with Node against a real server.

The Node tests drive src/pushgate/static/pushgate.js over real WebSockets; this test only starts
the servers (fixture ``pushgate_server`` from conftest.py, and a JWT-mode node for the token
refresh test) and runs ``node --test`` with PUSHGATE_URL (and PUSHGATE_JWT_URL,
PUSHGATE_JWT_SECRET) pointing at them. Skipped when ``node`` (with a global WebSocket) is not installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
JS_TESTS = ROOT / "tests" / "js"
NODE = shutil.which("node")


def _node_websocket_flags() -> list[str] | None:
    """Flags that give Node a global WebSocket (Node 20.10+: behind a flag; 22+: default)."""
    if NODE is None:
        return None
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in (["--experimental-websocket"], []):
        try:
            done = subprocess.run([NODE, *flags, "-e", probe], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return flags
    return None


NODE_FLAGS = _node_websocket_flags()

pytestmark = pytest.mark.skipif(
    NODE_FLAGS is None, reason="node with a global WebSocket (Node >= 20.10) is not installed"
)


JWT_SECRET = "js-client-test-secret-long-enough-for-hs256"


async def test_js_client_against_real_server(pushgate_server: Any, spawn_node: Any) -> None:
    assert NODE is not None and NODE_FLAGS is not None
    jwt_node = spawn_node("--jwt-secret", JWT_SECRET)
    env = {**os.environ, "PUSHGATE_URL": str(pushgate_server.url).rstrip("/"),
           "PUSHGATE_JWT_URL": str(jwt_node.url).rstrip("/"), "PUSHGATE_JWT_SECRET": JWT_SECRET}
    # Async subprocess: the server may run on this very event loop, which must keep turning.
    proc = await asyncio.create_subprocess_exec(
        NODE,
        *NODE_FLAGS,
        "--test",
        "--test-reporter=tap",
        str(JS_TESTS) + os.sep,
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=100)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail("node --test timed out:\n" + out.decode(errors="replace"))
    output = out.decode(errors="replace")
    if proc.returncode != 0:
        print(output)
    assert proc.returncode == 0, "node --test failed:\n" + output
    # Guard against a silent skip (e.g. PUSHGATE_URL not reaching the tests).
    skipped = re.search(r"^# skipped (\d+)", output, re.MULTILINE)
    passed = re.search(r"^# pass (\d+)", output, re.MULTILINE)
    assert skipped is not None and int(skipped.group(1)) == 0, output
    assert passed is not None and int(passed.group(1)) > 1, output
