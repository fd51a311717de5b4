"""Run the browser client's integration tests (tests/js/*.test.mjs) with Node against a real server.

The Node tests drive src/pushgate/static/pushgate.js over real WebSockets; this test only starts
the servers (fixture ``pushgate_server`` from conftest.py, and a JWT-mode node for the token
refresh test) and runs ``node --test`` with PUSHGATE_URL (and PUSHGATE_JWT_URL,
PUSHGATE_JWT_SECRET) pointing at them. Skipped when ``node`` (with a global WebSocket) is not installed.
"""

from __future__ import annotations

import asyncio
import json
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


# --------------------------------------------------------------------- pushgate.js as a package

STATIC = ROOT / "src" / "pushgate" / "static"
NPM = shutil.which("npm")
TS_CACHE = Path(os.environ.get("PUSHGATE_TS_CACHE", Path.home() / ".cache" / "pushgate-tests" / "typescript"))

CONSUMER_MJS = """
import { Client, closeCodeAction, PushgateError } from 'pushgate-client';
import Pushgate from 'pushgate-client';
const cjs = (await import('node:module')).createRequire(import.meta.url)('pushgate-client');
const c = new Client('ws://127.0.0.1:9/ws', { autoConnect: false });
console.log(JSON.stringify({ client: typeof Client, same: cjs.Client === Client && Pushgate.Client === Client,
  stop: closeCodeAction(4500), error: new PushgateError('x').code, state: c.state }));
"""

CONSUMER_TS = """
import { Client, closeCodeAction, type Position, type MessagePush } from 'pushgate-client';

const client = new Client('/ws', { user: 'alice', token: async () => 'jwt', transports: ['websocket', 'sse'],
  onStateChange: (state, info) => console.log(state, info.code, info.reason, info.status) });
client.on('direct', (m) => console.log(m.from, m.data, m.offset));
client.on('state', (s) => console.log(s.state === 'closed', s.error));
async function main(): Promise<void> {
  const reply = await client.subscribe<{ text: string }>('news', (m: MessagePush<{ text: string }>) => m.data.text);
  const pos: Position | null = client.position('news');
  const { offset } = await client.publish('news', { text: 'hi' });
  const { users } = await client.presence('news');
  const rtt: number = await client.ping();
  console.log(reply.recovered, pos, offset, users.length, rtt, closeCodeAction(1012), client.transport);
}
void main();
"""

GLOBAL_TS = """/// <reference types="pushgate-client" />
const viaGlobal: Pushgate.Client = new Pushgate.Client('/ws', { user: 'bob' });
const action: 'now' | 'backoff' | 'stop' = Pushgate.closeCodeAction(1000);
viaGlobal.close();
console.log(action);
"""

BAD_TS = """
import { Client } from 'pushgate-client';
const client = new Client('/ws', { user: 42 });
client.on('no-such-event', () => {});
"""


def _pack_and_install(tmp_path: Path) -> Path:
    """``npm pack`` the client from src/pushgate/static and ``npm install`` the tarball into a fresh
    project (no registry needed: the package has no dependencies). Returns the project dir."""
    if NODE is None or NPM is None:
        pytest.skip("node and npm are needed to pack and install pushgate.js")
    packed = subprocess.run([NPM, "pack", "--json", "--pack-destination", str(tmp_path)], cwd=STATIC,
                            capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    info = json.loads(packed.stdout)[0]
    assert sorted(f["path"] for f in info["files"]) == [
        "package.json", "pushgate.d.ts", "pushgate.js", "pushgate.mjs"]
    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    tarball = str(tmp_path / info["filename"])
    installed = subprocess.run([NPM, "install", "--no-audit", "--no-fund", "--offline", tarball], cwd=project,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stderr
    return project


def test_npm_pack_installs_and_imports(tmp_path: Path) -> None:
    project = _pack_and_install(tmp_path)
    (project / "main.mjs").write_text(CONSUMER_MJS)
    done = subprocess.run([NODE or "node", "main.mjs"], cwd=project, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"client": "function", "same": True, "stop": "stop", "error": "x",
                                       "state": "disconnected"}


def _typescript() -> Path:
    tsc = TS_CACHE / "node_modules" / "typescript" / "bin" / "tsc"
    if tsc.exists():
        return tsc
    if NPM is None:
        pytest.skip("npm is not installed: cannot fetch typescript to check pushgate.d.ts")
    TS_CACHE.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([NPM, "install", "--prefix", str(TS_CACHE), "--no-audit", "--no-fund", "typescript@5"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not tsc.exists():
        pytest.skip(f"typescript could not be fetched from the npm registry: {r.stderr[-300:]}")
    return tsc


def test_typescript_definitions_check(tmp_path: Path) -> None:
    project = _pack_and_install(tmp_path)
    tsc = _typescript()
    (project / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "noEmit": True, "module": "nodenext", "moduleResolution": "nodenext", "target": "es2020",
        "lib": ["es2020", "dom"], "skipLibCheck": False}, "files": ["main.ts"]}))
    (project / "main.ts").write_text(CONSUMER_TS)
    ok = subprocess.run([NODE or "node", str(tsc), "-p", "."], cwd=project, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # a classic script using the global `Pushgate` (<script src="/pushgate.js">): not a module
    (project / "global.ts").write_text(GLOBAL_TS)
    script = subprocess.run([NODE or "node", str(tsc), "--strict", "--noEmit", "--moduleDetection", "legacy",
                             "--lib", "es2020,dom", "global.ts"], cwd=project, capture_output=True, text=True,
                            timeout=180)
    assert script.returncode == 0, script.stdout + script.stderr
    # and the definitions do catch mistakes
    (project / "bad.ts").write_text(BAD_TS)
    bad = subprocess.run([NODE or "node", str(tsc), "--strict", "--noEmit", "--module", "nodenext",
                          "--moduleResolution", "nodenext", "--lib", "es2020,dom", "bad.ts"],
                         cwd=project, capture_output=True, text=True, timeout=180)
    assert bad.returncode != 0
    assert "TS2322" in bad.stdout and "no-such-event" in bad.stdout, bad.stdout
