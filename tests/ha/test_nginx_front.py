"""``pushgate nginx-config`` run by a real nginx in front of real nodes on a real Valkey.

What the seeds' users learned by trial is proved here: WebSocket and SSE pass through; an idle
socket lives past nginx's read timeout because the nodes' heartbeats are shorter, and is cut
when they are not (the relation, with short timeouts so the test stays bounded); a killed node's
share of new connections lands on live nodes; a draining node's 503 makes nginx try the next
node (seen in nginx's own log of upstream attempts); ``deploy/nginx.conf`` is the generator's output.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from pushgate import cli
from pushgate.nginx import NginxOptions, read_timeout, render, standalone

from ..conftest import Process
from ..helpers import WsClient, timeout, wait_for
from ..servers import RedisServer
from ..web.test_nginx import chosen_location, is_internal, parse
from .conftest import Nginx, NodeFactory

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = ROOT / "deploy" / "nginx.conf"


def ws(nginx: Nginx, query: str = "") -> str:
    return nginx.public.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


# -- the file ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("deployed", [DEPLOYED, ROOT / "deploy" / "compose" / "nginx.conf"],
                         ids=["deploy", "compose"])
def test_deploy_nginx_conf_is_the_generators_output(deployed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = deployed.read_text()
    m = re.search(r"^#   pushgate (nginx-config .*)$", text, re.M)
    assert m, f"{deployed} names the command that wrote it"
    assert cli.main(shlex.split(m.group(1))) == 0
    assert capsys.readouterr().out == text, f"regenerate: the command in {deployed}'s header"


def test_compose_nodes_trust_the_networks_the_compose_nginx_conf_names() -> None:
    import yaml

    text = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    m = re.search(r"--trusted-proxies (\S+)\)", text)
    assert m
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    env = compose["x-node"]["environment"]
    assert env["PUSHGATE_TRUSTED_PROXIES"] == m.group(1)


def test_read_timeout_is_above_the_heartbeats() -> None:
    assert read_timeout(25, 15) == 48  # pushgate's defaults: above 37.5 s, below nginx's 60 s
    assert read_timeout(1, 40) > 60  # a long SSE ping needs more than nginx's default
    for ping, sse in ((1, 1), (25, 15), (60, 5), (0.5, 90)):
        assert read_timeout(ping, sse) > 1.5 * max(ping, sse)
    text = render(NginxOptions(upstreams=["127.0.0.1:1"], ping_interval=100))
    assert set(re.findall(r"proxy_read_timeout (\d+)s;", text)) == {str(read_timeout(100, 15))}


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --upstream"),
    (["--upstream", "nohost"], "--upstream: 'nohost' is not HOST:PORT"),
    (["--upstream", "a:1", "--upstream", "a:1"], "the same node is given twice"),
    (["--upstream", "a:1", "--tls-cert", "/c.pem"], "give --tls-cert and --tls-key together"),
    (["--upstream", "a:1", "--tls-cert", "c.pem", "--tls-key", "/k"], "absolute path"),
    (["--upstream", "a:1", "--read-timeout", "30"], "not above 1.5 x the heartbeat (37.5s)"),
    (["--upstream", "a:1", "--balance", "ip_hash"], "invalid choice: 'ip_hash'"),
    (["--upstream", "a:1", "--server-name", "a;b"], "is not a list of host names"),
])
def test_bad_options_are_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pushgate", "nginx-config", *argv], capture_output=True,
                          text=True, timeout=timeout(30))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("variant", ["plain", "tls", "round-robin", "deployed"])
def test_nginx_accepts_it(variant: str, nginx_bin: str, tmp_path: Path) -> None:
    """``nginx -t`` on every shape the generator writes (the shipped file with its TLS paths
    pointed at a throw-away certificate)."""
    opts = NginxOptions(upstreams=["127.0.0.1:8001", "127.0.0.1:8002"], listen="127.0.0.1:18080",
                        internal_listen="127.0.0.1:18081")
    cert, key = self_signed(tmp_path)
    if variant == "tls":
        opts = NginxOptions(upstreams=opts.upstreams, listen="127.0.0.1:18443", internal_listen="127.0.0.1:18081",
                            tls_cert=str(cert), tls_key=str(key), server_name="push.example.com")
    elif variant == "round-robin":
        opts = NginxOptions(upstreams=opts.upstreams, balance="round-robin", stomp_paths=("/stomp", "/a/b"))
    body = render(opts)
    if variant == "deployed":
        body = DEPLOYED.read_text()
        body = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", body)
        body = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", body)
    conf = tmp_path / "nginx.conf"
    conf.write_text(standalone(body, tmp_path))
    done = subprocess.run([nginx_bin, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True,
                          text=True, timeout=timeout(30))
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr


def test_what_the_deployed_file_holds() -> None:
    text = DEPLOYED.read_text()
    assert "ip_hash;" not in re.sub(r"#[^\n]*", "", text) and "least_conn;" in text
    assert "proxy_next_upstream error timeout http_503;" in text and "non_idempotent" not in text
    assert re.search(r"server 127\.0\.0\.1:8001 max_fails=\d+ fail_timeout=\d+s;", text)
    assert "listen 443 ssl;" in text and "return 308 https://" in text  # the TLS termination example
    assert 'trusted_proxies = ["127.0.0.1/32"]' in text


def test_upgrades_go_to_an_upstream_without_a_keepalive_pool() -> None:
    """An upgrade sent down a kept-alive connection that carried a plain request before is served
    by aiohttp, not by the node's lean /ws front (~16 KB instead of ~2-4 KB per socket): the
    WebSocket and SSE locations use an upstream without ``keepalive``, the short requests one with."""
    root = parse(DEPLOYED.read_text())
    upstreams = {u.args[0]: u for u in root.all("upstream")}
    public = next(s for s in root.all("server") if s.all("location") and not is_internal(s))
    for path, pooled in (("/ws", False), ("/sse", False), ("/stomp", False), ("/", True), ("/pushgate.js", True)):
        loc = chosen_location(public, path)
        assert loc is not None, path
        (target,) = loc.values("proxy_pass")
        upstream = upstreams[target[0].removeprefix("http://")]
        assert bool(upstream.all("keepalive")) is pooled, path


# -- nginx in front of real nodes -------------------------------------------------------------------


async def logged(nginx: Nginx, match: Callable[[str], bool], what: str) -> None:
    try:
        await wait_for(lambda: any(map(match, nginx.access_log())), seconds=5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; nginx's log:\n" + "\n".join(nginx.access_log())) from None


async def sse_open(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    resp = await session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    assert resp.status == 200
    welcome = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout(5))
    assert b'"welcome"' in welcome
    return resp


async def sse_data(resp: aiohttp.ClientResponse) -> dict[str, object]:
    """The next SSE event that carries data (keep-alive comments skipped)."""
    while True:
        event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout(5))
        data = b"".join(line[6:] for line in event.split(b"\n") if line.startswith(b"data: "))
        if data:
            return dict(json.loads(data))


async def test_websocket_sse_and_idle_connections_through_nginx(ha_node: NodeFactory, start_nginx:
                                                                 Callable[[NginxOptions], Nginx]) -> None:
    """Three nodes pinging every second; nginx's read timeout 3 s (the generator refuses anything
    at or below 1.5 x the heartbeat). Idle WebSocket and SSE clients live 3 x that timeout."""
    nodes = await asyncio.gather(*(asyncio.to_thread(ha_node, f"n{i}", "--ping-interval", "1",
                                                     "--sse-ping-interval", "1") for i in (1, 2, 3)))
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{n.port}" for n in nodes], ping_interval=1,
                                     sse_ping_interval=1, read_timeout=3))
    clients = [await WsClient.connect(ws(nginx, f"user=u{i}")) for i in range(6)]
    try:
        assert {c.welcome["node"] for c in clients} == {"n1", "n2", "n3"}, "least_conn spreads them"
        for c in clients:
            await c.ok({"type": "subscribe", "channel": "news"})
        async with aiohttp.ClientSession() as s:
            sse = await sse_open(s, nginx.public + "/sse?channel=news&user=reader")
            started = time.monotonic()
            await asyncio.sleep(0)  # everyone idle from here: only the nodes' pings travel
            while time.monotonic() - started < 9:  # 3 x nginx's read timeout
                assert not any(c.closed.is_set() for c in clients), [c.close_code for c in clients]
                await asyncio.sleep(0.25)
            async with s.post(nginx.internal + "/api/publish", json={"channel": "news", "data": {"k": 1}}) as r:
                assert r.status == 200, await r.text()
            for c in clients:
                assert (await c.next("message"))["data"] == {"k": 1}
            assert (await sse_data(sse))["data"] == {"k": 1}, "the SSE stream outlived the read timeout too"
            sse.close()
            # the client address the node saw is the one nginx saw (trusted_proxies), not nginx's
            async with s.get(nginx.internal + "/api/presence/news") as r:
                assert r.status == 200
    finally:
        for c in clients:
            await c.close()


async def test_a_heartbeat_longer_than_the_read_timeout_is_cut(ha_node: NodeFactory, start_nginx:
                                                               Callable[[NginxOptions], Nginx]) -> None:
    """The other half of the relation: a node pinging every 30 s behind a config written for a 1 s
    heartbeat (read timeout 3 s) loses its idle client at nginx's timeout — what the seeds' users
    saw with nginx's 60 s default and no heartbeat below it."""
    node = ha_node("slow", "--ping-interval", "30")
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{node.port}"], ping_interval=1,
                                     sse_ping_interval=1, read_timeout=3))
    client = await WsClient.connect(ws(nginx, "user=idle"))
    try:
        started = time.monotonic()
        await client.wait_closed(seconds=10)
        assert 2.5 < time.monotonic() - started < timeout(8), "cut by nginx's read timeout"
    finally:
        await client.close()


async def test_a_killed_node_gets_no_new_connections(ha_node: NodeFactory, start_nginx:
                                                     Callable[[NginxOptions], Nginx]) -> None:
    nodes = await asyncio.gather(*(asyncio.to_thread(ha_node, f"n{i}") for i in (1, 2, 3)))
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{n.port}" for n in nodes]))
    before = [await WsClient.connect(ws(nginx, f"user=b{i}")) for i in range(6)]
    after: list[WsClient] = []
    try:
        victims = [c for c in before if c.welcome["node"] == "n2"]
        assert victims
        nodes[1].kill()  # SIGKILL: no close frame, the kernel resets the sockets
        for c in victims:
            await c.wait_closed(seconds=10)  # nginx passes the loss on: the client can reconnect
        for i in range(9):  # least_conn would pick the dead (emptiest) node first every time
            after.append(await WsClient.connect(ws(nginx, f"user=a{i}")))
        assert {c.welcome["node"] for c in after} == {"n1", "n3"}
        # the first of them was offered to the dead node (fewest connections), refused, and retried
        # (nginx logs a WebSocket when it ends)
        for c in after:
            await c.close()
        dead = f"[127.0.0.1:{nodes[1].port}, "
        await logged(nginx, lambda line: line.startswith("101 GET /ws") and dead in line,
                     "a handshake offered to the dead node, then to a live one")
    finally:
        for c in before + after:
            await c.close()


async def test_a_restarted_node_gets_its_share_of_new_connections(ha_node: NodeFactory, start_nginx:
                                                                  Callable[[NginxOptions], Nginx]) -> None:
    """nginx clears a passive failure mark only when the next request to that node *ends*; for a
    WebSocket that is hours, so with max_fails on the WebSocket upstream a node that was killed and
    restarted got one connection per fail_timeout (1 of 150 in the chaos test). The generated
    upstream for long-lived connections has no marks: least_conn fills the restarted node at once."""
    n1, n2 = await asyncio.gather(*(asyncio.to_thread(ha_node, name) for name in ("n1", "n2")))
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{n1.port}", f"127.0.0.1:{n2.port}"]))
    clients = [await WsClient.connect(ws(nginx, f"user=a{i}")) for i in range(4)]
    try:
        n1.kill()
        clients += [await WsClient.connect(ws(nginx, f"user=b{i}")) for i in range(4)]  # nginx meets the dead n1
        n1b = await asyncio.to_thread(ha_node, "n1b", port=n1.port)
        assert n1b.port == n1.port
        late = [await WsClient.connect(ws(nginx, f"user=c{i}")) for i in range(8)]
        clients += late
        on_n1b = sum(c.welcome["node"] == "n1b" for c in late)
        assert on_n1b >= 6, f"least_conn should fill the restarted node: {[c.welcome['node'] for c in late]}"
    finally:
        for c in clients:
            await c.close()


async def test_a_draining_node_answers_503_and_nginx_tries_the_next(ha_node: NodeFactory, start_nginx:
                                                                    Callable[[NginxOptions], Nginx]) -> None:
    nodes = await asyncio.gather(*(asyncio.to_thread(ha_node, f"n{i}", "--drain-period", "3")
                                   for i in (1, 2)))
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{n.port}" for n in nodes]))
    held = [await WsClient.connect(f"ws://127.0.0.1:{nodes[0].port}/ws?user=h{i}") for i in range(40)]
    new: list[WsClient] = []
    try:
        nodes[0].proc.send_signal(15)  # SIGTERM: paced drain over 3 s, 503 to new handshakes meanwhile
        async with aiohttp.ClientSession() as s:
            async def refused() -> bool:
                try:
                    async with s.get(f"http://127.0.0.1:{nodes[0].port}/ws", headers={
                            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                        return r.status == 503
                except aiohttp.ClientError:
                    return False
            await wait_for(refused, seconds=5, what="the draining node to answer the handshake with 503")
        # n1 now holds fewer connections than n2 (least_conn picks it first): every handshake
        # is offered to n1, refused with 503, and passed to n2 by nginx
        for i in range(4):
            new.append(await WsClient.connect(ws(nginx, f"user=n{i}")))
        assert {c.welcome["node"] for c in new} == {"n2"}
        for c in new:
            await c.close()  # nginx logs a WebSocket when it ends
        await logged(nginx, lambda line: line.startswith("101 GET /ws") and "[503, 101]" in line,
                     "a handshake refused by the draining node with 503, then upgraded by the next")
        assert nodes[0].terminate(seconds=20) == 0
    finally:
        for c in held + new:
            await c.close()


async def test_a_node_without_its_broker_refuses_the_handshake_with_503(
        spawn_node: Callable[..., Process], valkey: RedisServer) -> None:
    node = spawn_node("--broker", valkey.url, "--node-id", "lonely")
    valkey.kill()
    async with aiohttp.ClientSession() as s:
        async def unready() -> bool:
            async with s.get(node.url + "/readyz") as r:
                return r.status == 503
        await wait_for(unready, seconds=10, what="/readyz to see the broker gone")
        async with s.get(node.url + "/ws?user=x", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
            assert r.status == 503


def test_the_commands_in_deployment_md_write_configs_nginx_accepts(nginx_bin: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Every ``pushgate nginx-config`` line of docs/deployment.md, as written (``-o`` pointed here,
    TLS paths at a throw-away certificate), gives a file ``nginx -t`` accepts."""
    text = (ROOT / "docs" / "deployment.md").read_text().replace("\\\n", " ")
    commands = re.findall(r"^pushgate (nginx-config .*)$", text, re.M)
    assert len(commands) >= 2
    cert, key = self_signed(tmp_path)
    for i, command in enumerate(commands):
        argv = shlex.split(command)
        if "-o" in argv:
            argv[argv.index("-o") + 1] = str(tmp_path / f"out{i}.conf")
        assert cli.main(argv) == 0, command
        body = (tmp_path / f"out{i}.conf").read_text() if "-o" in argv else capsys.readouterr().out
        body = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", body)
        body = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", body)
        prefix = tmp_path / f"p{i}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(standalone(body, prefix))
        done = subprocess.run([nginx_bin, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True,
                              text=True, timeout=timeout(30))
        assert done.returncode == 0, f"{command}\n{done.stderr}"


async def test_the_node_counts_the_client_nginx_names_not_nginx_nor_a_spoofed_header(
        ha_node: NodeFactory, start_nginx: Callable[[NginxOptions], Nginx]) -> None:
    """Clients connect from 127.0.0.2 and 127.0.0.3 (loopback aliases), nginx from 127.0.0.1 (the
    nodes' trusted_proxies). With 2 connections allowed per address, the third from 127.0.0.2 is
    refused even though each claimed another address in its own X-Forwarded-For (nginx appends the
    real one, the node reads from the right), and 127.0.0.3 is still let in (the node does not
    count nginx's address)."""
    node = ha_node("ip", "--max-connections-per-ip", "2")
    nginx = start_nginx(NginxOptions(upstreams=[f"127.0.0.1:{node.port}"]))
    url = ws(nginx)
    sessions: list[aiohttp.ClientSession] = []
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def connect(source: str, spoof: str) -> aiohttp.ClientWebSocketResponse:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))
        sessions.append(session)
        sock = await session.ws_connect(url + f"?user=x{len(sessions)}", headers={"X-Forwarded-For": spoof,
                                                                                  "X-Real-IP": spoof})
        sockets.append(sock)
        return sock

    try:
        for i in (1, 2):  # each welcomed, so registered, before the next handshake
            assert (await (await connect("127.0.0.2", f"198.51.100.{i}")).receive_json(timeout=timeout(5)))[
                "type"] == "welcome"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect("127.0.0.2", "198.51.100.3")
        assert refused.value.status == 429
        welcome = await (await connect("127.0.0.3", "198.51.100.4")).receive_json(timeout=timeout(5))
        assert welcome["type"] == "welcome"
    finally:
        for sock in sockets:
            await sock.close()
        for session in sessions:
            await session.close()
