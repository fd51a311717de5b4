"""What an operator reads: JSON logs, the access log, the debug lines of a connection's life, the
Prometheus exposition (standard collectors, labels, no ``_created``, ``promtool check metrics``),
and a failing ``url=`` schedule that costs one log line per tick."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from .conftest import Process, ServerFactory
from .helpers import WsClient, timeout, wait_for

PROMTOOL = shutil.which("promtool")


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def test_json_logs_access_log_and_connection_debug_lines(spawn_node: Callable[..., Process]) -> None:
    node = spawn_node("--log-format", "json", "--log-level", "debug", "--access-log", "true",
                      "--trusted-proxies", "127.0.0.1/32")
    client = await WsClient.connect(f"{node.ws_url}?user=alice&token=SECRET-IN-QUERY")
    await client.ok({"type": "subscribe", "channel": "news"})
    async with aiohttp.ClientSession() as s:
        async with s.post(node.url + "/api/disconnect", json={"user": "alice"}) as r:
            assert r.status == 200, await r.text()
        assert await client.wait_closed() == 4500
        async with s.get(node.url + "/api/online?probe=1") as r:
            assert r.status == 200
        async with s.get(node.url + "/healthz", headers={"X-Forwarded-For": "203.0.113.9"}) as r:
            assert r.status == 200  # through a trusted proxy: the log names the client
    assert node.terminate() == 0
    assert node.log_path is not None
    log = node.log_path.read_text()
    records = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    messages = [r["msg"] for r in records]
    assert any(re.match(r"connect \S+ user=alice transport=websocket from 127\.0\.0\.1", m) for m in messages)
    assert any(re.match(r"subscribe \S+ news since=None recovered=False", m) for m in messages)
    closes = [m for m in messages if m.startswith("close ")]
    assert len(closes) == 1 and re.match(
        r"close \S+ user=alice transport=websocket code=4500 reason='disconnected by server' duration=\d+\.\d+s",
        closes[0]), closes
    access = [r for r in records if r["logger"] == "pushgate.access"]
    online = [r for r in access if r["path"] == "/api/online"]
    assert online and online[0]["status"] == 200 and online[0]["method"] == "GET" and online[0]["duration_ms"] >= 0
    (health,) = [r for r in access if r["path"] == "/healthz"]
    assert health["remote"] == "203.0.113.9"
    session = [r for r in access if r["path"] == "/ws"]
    assert session and session[0]["status"] == 101
    assert "SECRET-IN-QUERY" not in log and "probe=1" not in log  # the query string is never logged


async def test_metrics_have_standard_collectors_labels_and_no_created(make_server: ServerFactory) -> None:
    running = await make_server()
    client = await running.client("user=bob")
    await client.ok({"type": "subscribe", "channel": "news"})
    await client.close()
    kicked = await running.client("user=eve")
    status, _ = await running.api("POST", "/api/disconnect", {"user": "eve"})
    assert status == 200 and await kicked.wait_closed() == 4500
    await wait_for(lambda: not running.node.hub.connections, what="both connections gone")

    text = await scrape(running.url)
    values = samples(text)
    assert "_created" not in text
    for standard in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                     'python_info{implementation="CPython"', "python_gc_collections_total"):
        assert any(key.startswith(standard) for key in values), standard
    assert values['pushgate_connections_opened_total{transport="websocket"}'] == 2
    assert values['pushgate_connections_closed_total{code="client",transport="websocket"}'] == 1
    assert values['pushgate_connections_closed_total{code="4500",transport="websocket"}'] == 1
    assert values['pushgate_connection_duration_seconds_count{transport="websocket"}'] == 2
    assert values["pushgate_broker_up"] == 1
    assert any(k.startswith("pushgate_build_info{") for k in values)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
async def test_metrics_pass_promtool_check_metrics(make_server: ServerFactory) -> None:
    running = await make_server()
    client = await running.client("user=bob")
    await client.ok({"type": "subscribe", "channel": "news"})
    await client.request({"type": "nope"})  # an error reply: a labelled error counter
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=await scrape(running.url), capture_output=True,
                          text=True, timeout=timeout(30))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


async def test_failing_url_schedule_logs_one_line_per_tick(make_server: ServerFactory, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    conf = tmp_path / "schedule.toml"
    conf.write_text('[[schedule]]\nchannel = "dead"\nevery = 0.2\nurl = "http://127.0.0.1:1/feed"\n')
    with caplog.at_level(logging.WARNING, logger="pushgate.scheduler"):
        await make_server(config_file=str(conf))
        await wait_for(lambda: sum("tick" in r.getMessage() for r in caplog.records) >= 2, seconds=5,
                       what="two failed ticks")
    failures = [r for r in caplog.records if r.name == "pushgate.scheduler"]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in failures)
    assert re.match(r"job dead#0: tick \d+ skipped: Cannot connect to host 127\.0\.0\.1:1", failures[0].getMessage())
