"""The six problems of a WebSocket cluster, across three real nodes joined by a real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis

from pushgate import Publisher
from pushgate.errors import CloseCode

from ..conftest import Process
from ..helpers import WsClient, direct_body, wait_for
from ..servers import RedisServer


async def api(node: Process, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, node.url + path, json=body) as r:
        return r.status, await r.json(content_type=None)


class Clients:
    def __init__(self) -> None:
        self.all: list[WsClient] = []

    async def connect(self, node: Process, user: str | None = None) -> WsClient:
        c = await WsClient.connect(node.ws_url + (f"?user={user}" if user else ""))
        self.all.append(c)
        return c

    async def close(self) -> None:
        for c in self.all:
            await c.close()


async def test_six_problems_across_three_nodes(cluster_node: Callable[..., Process], tmp_path: Path) -> None:
    n1, n2, n3 = (cluster_node(n) for n in ("n1", "n2", "n3"))
    clients = Clients()
    try:
        alice_phone = await clients.connect(n1, "alice")
        alice_laptop = await clients.connect(n3, "alice")
        bob = await clients.connect(n3, "bob")
        carol = await clients.connect(n2, "carol")
        # (1) a client and its server talk one-to-one
        assert (await bob.request({"type": "ping"}))["type"] == "pong"
        assert alice_phone.welcome["node"] == "n1" and bob.welcome["node"] == "n3"

        # multicast: a channel with subscribers on two nodes, published from the third
        for c in (alice_phone, bob):
            await c.ok({"type": "subscribe", "channel": "news"})
        pos = await carol.ok({"type": "publish", "channel": "news", "data": {"h": 1}})
        for c in (alice_phone, bob):
            msg = await c.next("message")
            assert (msg["data"], msg["offset"], msg["epoch"]) == ({"h": 1}, pos["offset"], pos["epoch"])

        # (2) push to all clients on every node
        status, _ = await api(n2, "POST", "/api/broadcast", {"data": "all"})
        assert status == 200
        for c in clients.all:
            assert (await c.next("broadcast"))["data"] == "all"

        # (3) online counts, per node and cluster-wide, the same from every node
        for node in (n1, n2, n3):
            status, online = await api(node, "GET", "/api/online")
            assert online["connections"] == 4 and online["users"] == 3, online
            assert online["nodes"] == {
                "n1": {"connections": 1, "users": 1},
                "n2": {"connections": 1, "users": 1},
                "n3": {"connections": 2, "users": 2},
            }
        assert (await api(n1, "GET", "/api/nodes"))[1] == {"nodes": ["n1", "n2", "n3"]}
        _, presence = await api(n2, "GET", "/api/presence/news")
        assert presence == {"channel": "news", "users": ["alice", "bob"], "connections": 2}

        # (4) push to chosen users wherever their connections landed
        status, _ = await api(n2, "POST", "/api/send", {"users": ["alice"], "data": {"to": "alice"}})
        for device in (alice_phone, alice_laptop):
            assert direct_body(await device.next("direct")) == {"type": "direct", "from": None, "data": {"to": "alice"}}

        # (6) a client messages clients on other nodes; the server stamps the sender
        await carol.ok({"type": "send", "to": ["bob", "alice"], "data": "hey", "from": "mallory"})
        for c in (bob, alice_phone, alice_laptop):
            assert direct_body(await c.next("direct")) == {"type": "direct", "from": "carol", "data": "hey"}
        # carol got nothing of her own
        assert (await carol.request({"type": "ping"}))["type"] == "pong"
        await carol.nothing_more()

        # disconnect a user cluster-wide
        await api(n1, "POST", "/api/disconnect", {"user": "alice"})
        assert await alice_phone.wait_closed() == CloseCode.DISCONNECTED
        assert await alice_laptop.wait_closed() == CloseCode.DISCONNECTED
    finally:
        await clients.close()


async def test_nodes_only_receive_traffic_they_need(cluster_node: Callable[..., Process],
                                                    redis_server: RedisServer) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    r = redis.Redis(port=redis_server.port)
    try:
        sub = await clients.connect(n1, "alice")
        await sub.ok({"type": "subscribe", "channel": "only-n1"})
        numsub = dict(r.pubsub_numsub("pg:c:{only-n1}", "pg:u:{alice}", "pg:u:{nobody}"))
        # exactly one node (n1) listens to the channel and to alice's route
        assert numsub == {b"pg:c:{only-n1}": 1, b"pg:u:{alice}": 1, b"pg:u:{nobody}": 0}
        await sub.ok({"type": "unsubscribe", "channel": "only-n1"})
        await wait_for(lambda: dict(r.pubsub_numsub("pg:c:{only-n1}"))[b"pg:c:{only-n1}"] == 0,
                       what="upstream unsubscribe after the last local subscriber")
        assert n2.proc.poll() is None
    finally:
        await clients.close()
        r.close()


async def test_ghost_users_purged_after_kill_9(cluster_node: Callable[..., Process]) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    try:
        survivor = await clients.connect(n1, "survivor")
        await survivor.ok({"type": "subscribe", "channel": "room"})
        for i in range(3):
            ghost = await clients.connect(n2, f"ghost{i}")
            await ghost.ok({"type": "subscribe", "channel": "room"})
        _, online = await api(n1, "GET", "/api/online")
        assert online["users"] == 4
        n2.kill()  # SIGKILL: no clean shutdown, entries stay in Redis until the heartbeat lapses

        async def purged() -> bool:
            _, online = await api(n1, "GET", "/api/online")
            _, presence = await api(n1, "GET", "/api/presence/room")
            _, nodes = await api(n1, "GET", "/api/nodes")
            return (online["connections"] == 1 and online["users"] == 1 and list(online["nodes"]) == ["n1"]
                    and presence["users"] == ["survivor"] and nodes["nodes"] == ["n1"])
        await wait_for(purged, seconds=15, interval=0.2, what="dead node's presence to vanish")
    finally:
        await clients.close()


async def test_clean_shutdown_removes_entries_at_once(cluster_node: Callable[..., Process]) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    try:
        c = await clients.connect(n2, "leaving")
        await c.ok({"type": "subscribe", "channel": "room"})
        assert n2.terminate() == 0
        assert await c.wait_closed() == CloseCode.SERVICE_RESTART
        _, online = await api(n1, "GET", "/api/online")
        _, nodes = await api(n1, "GET", "/api/nodes")
        assert online["connections"] == 0 and nodes["nodes"] == ["n1"]
    finally:
        await clients.close()


async def test_recovery_works_on_another_node(cluster_node: Callable[..., Process]) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    try:
        c = await clients.connect(n1, "alice")
        ok = await c.ok({"type": "subscribe", "channel": "feed"})
        await c.close()
        for i in range(5):
            await api(n1, "POST", "/api/publish", {"channel": "feed", "data": i})
        c2 = await clients.connect(n2, "alice")
        reply = await c2.ok({"type": "subscribe", "channel": "feed",
                             "since": {"epoch": ok["epoch"], "offset": ok["offset"]}})
        assert reply["recovered"] is True
        assert [m["data"] for m in await c2.messages(5)] == [0, 1, 2, 3, 4]
        _, hist = await api(n2, "GET", "/api/history/feed?limit=2")
        assert [p["data"] for p in hist["publications"]] == [3, 4]
    finally:
        await clients.close()


async def test_redis_restart_mid_stream_loses_nothing(cluster_node: Callable[..., Process],
                                                      redis_server: RedisServer) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    try:
        sub = await clients.connect(n1, "reader")
        await sub.ok({"type": "subscribe", "channel": "stream"})
        accepted: list[int] = []
        stop = asyncio.Event()

        async def publisher() -> None:
            i = 0
            async with aiohttp.ClientSession() as s:
                while not stop.is_set() and i < 2000:
                    try:
                        async with s.post(n2.url + "/api/publish", json={"channel": "stream", "data": i},
                                          timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                accepted.append(i)
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    i += 1
                    await asyncio.sleep(0.005)

        task = asyncio.create_task(publisher())
        await wait_for(lambda: len(accepted) >= 20, what="publishing to start")
        redis_server.stop()  # clean stop flushes the AOF; history survives the restart

        async def not_ready() -> bool:
            async with aiohttp.ClientSession() as s, s.get(n1.url + "/readyz") as r:
                return r.status == 503
        await wait_for(not_ready, seconds=10, what="/readyz to report the broker down")
        async with aiohttp.ClientSession() as s, s.get(n1.url + "/metrics") as r:
            assert "pushgate_broker_link_losses_total 1.0" in await r.text()  # counted once per outage
        redis_server.start()
        count_at_restart = len(accepted)
        await wait_for(lambda: len(accepted) >= count_at_restart + 30, seconds=20,
                       what="publishing to resume after the restart")
        stop.set()
        await task
        got = await sub.messages(len(accepted), seconds=20)
        assert [m["data"] for m in got] == accepted
        offsets = [m["offset"] for m in got]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    finally:
        await clients.close()


async def test_periodic_job_runs_once_per_tick_and_fails_over(cluster_node: Callable[..., Process],
                                                             tmp_path: Path) -> None:
    cfg = tmp_path / "sched.toml"
    cfg.write_text('[[schedule]]\nchannel = "clock"\nevery = 0.5\ncall = "tests.sample_jobs_cluster:tick"\n')
    nodes = [cluster_node(n, "--config", str(cfg)) for n in ("n1", "n2", "n3")]
    clients = Clients()
    try:
        async def leaders() -> list[Process]:
            found = []
            for node in nodes:
                if node.proc.poll() is None:
                    _, health = await api(node, "GET", "/healthz")
                    if health["scheduler_leader"]:
                        found.append(node)
            return found

        await wait_for(lambda: _one(leaders()), seconds=10, what="one scheduler leader")
        leader = (await leaders())[0]
        watcher_node = next(n for n in nodes if n is not leader)
        watcher = await clients.connect(watcher_node, "w")
        await watcher.ok({"type": "subscribe", "channel": "clock"})
        first = await watcher.messages(4, seconds=10)
        offsets = [m["offset"] for m in first]
        assert offsets == list(range(offsets[0], offsets[0] + 4))  # one publication per tick
        ticks = [m["data"]["at"] for m in first]
        assert len(set(ticks)) == 4
        leader.kill()
        # another node takes the lease within a lease period and ticks continue, still once each
        after = await watcher.messages(4, seconds=15)
        offsets = [m["offset"] for m in first + after]
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        assert len({m["data"]["at"] for m in first + after}) == len(offsets)
        new_leaders = await leaders()
        assert len(new_leaders) == 1 and new_leaders[0] is not leader
    finally:
        await clients.close()


async def _one(found: Any) -> bool:
    return len(await found) == 1


async def test_workers_share_one_port(spawn_node: Callable[..., Process], redis_server: RedisServer) -> None:
    node = spawn_node("--broker", redis_server.url, "--workers", "2", "--node-id", "box")
    clients = Clients()
    try:
        await wait_for(lambda: _workers_up(node), seconds=15, what="both workers registered")
        seen_nodes: set[str] = set()
        for i in range(40):
            c = await clients.connect(node, f"u{i}")
            seen_nodes.add(c.welcome["node"])
            await c.ok({"type": "subscribe", "channel": "w"})
            if len(seen_nodes) == 2 and i >= 3:
                break
        assert seen_nodes == {"box-w1", "box-w2"}
        status, _ = await api(node, "POST", "/api/publish", {"channel": "w", "data": "to all workers"})
        assert status == 200
        for c in clients.all:
            assert (await c.next("message"))["data"] == "to all workers"
        assert node.terminate() == 0
    finally:
        await clients.close()


async def test_workers_die_with_their_supervisor(spawn_node: Callable[..., Process],
                                                 redis_server: RedisServer) -> None:
    """kill -9 of `pushgate serve --workers 2` leaves no worker behind (PR_SET_PDEATHSIG)."""
    import os
    import signal

    node = spawn_node("--broker", redis_server.url, "--workers", "2", "--node-id", "box")
    await wait_for(lambda: _workers_up(node), seconds=15, what="both workers registered")
    pid = node.proc.pid
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(children) == 2
    os.kill(pid, signal.SIGKILL)
    node.proc.wait(10)

    async def all_gone() -> bool:
        return not any(Path(f"/proc/{c}").exists() and "Z" not in _state(c) for c in children)

    await wait_for(all_gone, seconds=15, what="the workers to exit after their supervisor was killed")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


async def _workers_up(node: Process) -> bool:
    try:
        _, nodes = await api(node, "GET", "/api/nodes")
    except aiohttp.ClientError:
        return False
    return bool(nodes.get("nodes") == ["box-w1", "box-w2"])


def test_workers_refused_with_memory_broker(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pushgate", "serve", "--workers", "2"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "workers" in proc.stderr and "broker" in proc.stderr


async def test_publisher_and_cli_publish_without_http(cluster_node: Callable[..., Process],
                                                      redis_server: RedisServer) -> None:
    n1 = cluster_node("n1")
    clients = Clients()
    try:
        alice = await clients.connect(n1, "alice")
        await alice.ok({"type": "subscribe", "channel": "news"})
        async with Publisher(redis_server.url) as pub:
            pos = await pub.publish("news", {"from": "backend"})
            await pub.send_to_users(["alice"], "private")
            await pub.broadcast("everyone")
        msg = await alice.next("message")
        assert msg["data"] == {"from": "backend"} and msg["offset"] == pos.offset
        assert direct_body(await alice.next("direct")) == {"type": "direct", "from": None, "data": "private"}
        assert (await alice.next("broadcast"))["data"] == "everyone"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pushgate", "publish", "news", '{"via": "cli"}', "--broker", redis_server.url,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and json.loads(out)["offset"] == pos.offset + 1
        assert (await alice.next("message"))["data"] == {"via": "cli"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pushgate", "publish", "news", "plain text", "--url", n1.url,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        assert (await alice.next("message"))["data"] == "plain text"
    finally:
        await clients.close()


async def test_broker_outage_answers_unavailable_not_internal(cluster_node: Callable[..., Process],
                                                              redis_server: RedisServer) -> None:
    n1 = cluster_node("n1")
    clients = Clients()
    try:
        c = await clients.connect(n1, "alice")
        redis_server.stop()
        reply = await c.request({"type": "publish", "channel": "x", "data": 1}, seconds=20)
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        status, body = await api(n1, "POST", "/api/publish", {"channel": "x", "data": 1})
        assert status == 503 and body["error"]["code"] == "unavailable"
        redis_server.start()

        async def publish_ok() -> bool:
            return (await api(n1, "POST", "/api/publish", {"channel": "x", "data": 2}))[0] == 200
        await wait_for(publish_ok, seconds=20, interval=0.2, what="publishing to work again")
        assert (await c.request({"type": "ping"}))["type"] == "pong"  # the connection survived
    finally:
        await clients.close()


async def test_pubsub_link_drop_is_filled_from_history(cluster_node: Callable[..., Process],
                                                       redis_server: RedisServer) -> None:
    """Messages published while a node's pub/sub link is down reach its clients from history."""
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    r = redis.Redis(port=redis_server.port)
    try:
        sub = await clients.connect(n1, "reader")
        await sub.ok({"type": "subscribe", "channel": "gap"})
        await api(n2, "POST", "/api/publish", {"channel": "gap", "data": "before"})
        assert (await sub.next("message"))["data"] == "before"
        r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # both nodes' links drop silently
        for i in range(20):  # published while n1 is not subscribed: pub/sub drops them
            status, _ = await api(n2, "POST", "/api/publish", {"channel": "gap", "data": i})
            assert status == 200
        got = await sub.messages(20, seconds=20)
        assert [m["data"] for m in got] == list(range(20))
        assert [m["offset"] for m in got] == list(range(2, 22))

        async def filled() -> bool:
            async with aiohttp.ClientSession() as s, s.get(n1.url + "/metrics") as resp:
                text = await resp.text()
            return any(line.startswith("pushgate_gap_fills_total") and not line.endswith(" 0.0")
                       for line in text.splitlines())
        await wait_for(filled, what="n1 to report a gap fill")
    finally:
        await clients.close()
        r.close()


async def test_connect_storm_on_redis_backed_node(cluster_node: Callable[..., Process]) -> None:
    """Hundreds of simultaneous handshakes (each writes presence) all succeed: no pool exhaustion."""
    n1 = cluster_node("n1")
    clients = Clients()
    try:
        results = await asyncio.gather(*(clients.connect(n1, f"u{i}") for i in range(300)),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures[:3]
        _, online = await api(n1, "GET", "/api/online")
        assert online["connections"] == 300 and online["users"] == 300
    finally:
        await asyncio.gather(*(c.close() for c in clients.all), return_exceptions=True)


async def test_user_streams_across_nodes_offline_inbox_receipts_and_recovery(
    cluster_node: Callable[..., Process],
) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    try:
        # offline: messages sent through n1 wait for bob, who connects to n2
        for i in range(5):
            status, body = await api(n1, "POST", "/api/send", {"users": ["bob"], "data": i})
            assert status == 200 and body["live"] == {"bob": 0} and body["stored"] is True
        bob = await clients.connect(n2, "bob")
        got = [await bob.next("direct") for _ in range(5)]
        assert [d["data"] for d in got] == [0, 1, 2, 3, 4] and bob.welcome["stream"]["offset"] == 5

        # a receipt: n1 waits, bob acknowledges on n2
        async def ack_next() -> None:
            d = await bob.next("direct")
            await bob.ok({"type": "ack", "epoch": d["epoch"], "offset": d["offset"]})

        acker = asyncio.create_task(ack_next())
        status, body = await api(n1, "POST", "/api/send", {"users": ["bob"], "data": "cmd", "wait_for_ack": 5})
        await acker
        assert status == 200 and body["live"] == {"bob": 1}
        assert body["acked"] == {"bob": [bob.welcome["client"]]} and body["pending"] == []

        # a new device of bob on n1 gets nothing already acknowledged (offset 6 was)
        status, _ = await api(n2, "POST", "/api/send", {"users": ["bob"], "data": "late"})
        tablet = await clients.connect(n1, "bob")
        late = await tablet.next("direct")
        assert (late["data"], late["offset"]) == ("late", 7)
        await tablet.nothing_more()
    finally:
        await clients.close()


async def test_publisher_waits_for_delivery_receipts(cluster_node: Callable[..., Process],
                                                     redis_server: RedisServer) -> None:
    n1 = cluster_node("n1")
    clients = Clients()
    try:
        bob = await clients.connect(n1, "bob")
        async with Publisher(redis_server.url) as pub:
            positions = await pub.send_to_users(["bob", "zoe"], {"cmd": "reboot"})
            d = await bob.next("direct")
            assert (d["epoch"], d["offset"]) == (positions["bob"].epoch, positions["bob"].offset)
            await bob.ok({"type": "ack", "epoch": d["epoch"], "offset": d["offset"]})
            assert await pub.wait_for_acks(positions, timeout=2.0) == {"bob": True, "zoe": False}
    finally:
        await clients.close()


async def test_the_publisher_stamp_crosses_nodes_and_stays_in_history(cluster_node: Callable[..., Process]) -> None:
    n1, n2 = cluster_node("n1"), cluster_node("n2")
    clients = Clients()
    try:
        reader = await clients.connect(n2, "reader")
        await reader.ok({"type": "subscribe", "channel": "chat:lobby"})
        writer = await clients.connect(n1, "org:alice")  # a user id with a colon, like the envelope's separator
        await writer.ok({"type": "publish", "channel": "chat:lobby", "data": {"text": "hi"}})
        got = await reader.next("message")
        assert got["data"] == {"text": "hi"} and got["from"] == "org:alice"
        status, body = await api(n2, "GET", "/api/history/chat:lobby")
        assert status == 200 and body["publications"][-1] == {"offset": got["offset"], "data": {"text": "hi"},
                                                              "from": "org:alice"}
    finally:
        await clients.close()
