"""Periodic publications (``[[schedule]]``): call and url jobs on a real in-process node, ticks
published once each, failing jobs keeping their schedule, and schedule config validation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pushgate.config import load_config
from pushgate.errors import ConfigError

from . import sample_jobs
from .conftest import ServerFactory
from .helpers import timeout, wait_for

ROOT = Path(__file__).resolve().parents[1]


def schedule_file(tmp_path: Path, *jobs: dict[str, Any]) -> str:
    lines = []
    for job in jobs:
        lines.append("[[schedule]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in job.items()]
    path = tmp_path / "schedule.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(autouse=True)
def fresh_counters() -> None:
    sample_jobs.reset()


async def history(running: Any, channel: str) -> dict[str, Any]:
    status, body = await running.api("GET", f"/api/history/{channel}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


# -- call jobs -----------------------------------------------------------------------------------

async def test_sync_job_publishes_on_every_tick(make_server: ServerFactory, tmp_path: Path) -> None:
    every = 0.5
    conf = schedule_file(tmp_path, {"channel": "time", "every": every, "call": "tests.sample_jobs:now"})
    running = await make_server(config_file=conf)
    client = await running.client("user=watcher")
    await client.ok({"type": "subscribe", "channel": "time"})

    first, second = await client.messages(2, seconds=3 * every + 2)

    assert first["channel"] == second["channel"] == "time"
    assert second["epoch"] == first["epoch"]
    assert second["offset"] == first["offset"] + 1  # one publication per tick, no duplicates
    assert second["data"]["call"] == first["data"]["call"] + 1  # one call per tick
    assert second["data"]["now"] - first["data"]["now"] >= every * 0.5  # not two in one tick


async def test_each_tick_is_published_exactly_once(make_server: ServerFactory, tmp_path: Path) -> None:
    every = 0.2
    conf = schedule_file(tmp_path, {"channel": "time", "every": every, "call": "tests.sample_jobs:now"})
    running = await make_server(config_file=conf)
    await wait_for(lambda: sample_jobs.calls["now"] >= 5, seconds=5 * every + 3, what="5 ticks")
    await running.server.node.scheduler.stop()  # freeze the stream before reading it

    hist = await history(running, "time")
    pubs = hist["publications"]
    calls = sample_jobs.calls["now"]
    assert [p["offset"] for p in pubs] == list(range(1, calls + 1))  # every call published once
    assert [p["data"]["call"] for p in pubs] == list(range(1, calls + 1))
    stamps = [p["data"]["now"] for p in pubs]
    # wall-clock aligned: each tick lands in its own `every` slot
    slots = [int(s // every) for s in stamps]
    assert len(set(slots)) == len(slots), stamps


async def test_async_job(make_server: ServerFactory, tmp_path: Path) -> None:
    conf = schedule_file(tmp_path, {"channel": "clock", "every": 0.2, "call": "tests.sample_jobs:async_now"})
    running = await make_server(config_file=conf)
    client = await running.client()
    await client.ok({"type": "subscribe", "channel": "clock"})
    first, second = await client.messages(2, seconds=3)
    assert first["data"]["async"] is True
    assert second["offset"] == first["offset"] + 1
    assert second["data"]["call"] == first["data"]["call"] + 1


async def test_job_returning_none_skips_the_tick(make_server: ServerFactory, tmp_path: Path) -> None:
    conf = schedule_file(
        tmp_path,
        {"channel": "void", "every": 0.2, "call": "tests.sample_jobs:nothing"},
        {"channel": "time", "every": 0.2, "call": "tests.sample_jobs:now"},
    )
    running = await make_server(config_file=conf)
    await wait_for(lambda: sample_jobs.calls["nothing"] >= 3, seconds=4, what="3 calls of nothing()")
    hist = await history(running, "void")
    assert hist["publications"] == [] and hist["offset"] == 0
    assert (await history(running, "time"))["offset"] >= 2


@pytest.mark.parametrize("failing", ["boom", "async_boom"])
async def test_failing_job_keeps_its_schedule(make_server: ServerFactory, tmp_path: Path, failing: str) -> None:
    conf = schedule_file(
        tmp_path,
        {"channel": "broken", "every": 0.2, "call": f"tests.sample_jobs:{failing}", "name": "broken"},
        {"channel": "time", "every": 0.2, "call": "tests.sample_jobs:now", "name": "clock"},
    )
    running = await make_server(config_file=conf)
    client = await running.client()
    await client.ok({"type": "subscribe", "channel": "time"})

    await wait_for(lambda: sample_jobs.calls[failing] >= 1, seconds=3, what="first failure")
    after_failure = sample_jobs.calls["now"]
    # the other job keeps publishing after the failure...
    messages = await client.messages(2, seconds=3)
    assert messages[1]["offset"] == messages[0]["offset"] + 1
    assert messages[1]["data"]["call"] > after_failure
    # ...and the failing job is called again on later ticks
    await wait_for(lambda: sample_jobs.calls[failing] >= 3, seconds=3, what="failing job called again")
    assert (await history(running, "broken"))["offset"] == 0
    assert running.node.scheduler.is_leader


# -- url jobs ------------------------------------------------------------------------------------

class Upstream:
    """A real local HTTP server whose answers follow a script, one entry per request."""

    def __init__(self, script: list[tuple[int, str, str]]) -> None:
        self.script = script
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        status, content_type, body = self.script[min(self.requests, len(self.script)) - 1]
        if "{n}" in body:
            body = body.replace("{n}", str(self.requests))
        return web.Response(status=status, text=body, content_type=content_type)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/feed", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/feed"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream([
        (200, "application/json", '{"n": {n}, "ok": true}'),
        (503, "application/json", '{"error": "busy"}'),
        (200, "text/plain", "not json at all"),
        (404, "text/html", "<h1>gone</h1>"),
        (200, "application/json", '{"n": {n}, "ok": true}'),
    ])
    await up.start()
    yield up
    await up.stop()


async def test_url_job_publishes_json_and_skips_failures(make_server: ServerFactory, tmp_path: Path,
                                                         upstream: Upstream) -> None:
    conf = schedule_file(tmp_path, {"channel": "feed", "every": 0.2, "url": upstream.url})
    running = await make_server(config_file=conf)
    client = await running.client()
    await client.ok({"type": "subscribe", "channel": "feed"})

    await wait_for(lambda: upstream.requests >= 7, seconds=5, what="7 fetches")
    await running.server.node.scheduler.stop()

    pubs = (await history(running, "feed"))["publications"]
    # requests 2 (503), 3 (not JSON) and 4 (404) were skipped; the schedule went on
    served = list(range(5, upstream.requests + 1))
    assert [p["data"] for p in pubs] == [{"n": n, "ok": True} for n in [1, *served]]
    assert [p["offset"] for p in pubs] == list(range(1, len(pubs) + 1))
    live = await client.next("message")
    assert live["data"]["ok"] is True


async def test_url_job_survives_an_unreachable_upstream(make_server: ServerFactory, tmp_path: Path,
                                                        upstream: Upstream) -> None:
    dead = upstream.url.rsplit(":", 1)[0] + ":1/feed"  # port 1: connection refused
    conf = schedule_file(
        tmp_path,
        {"channel": "dead", "every": 0.2, "url": dead},
        {"channel": "feed", "every": 0.2, "url": upstream.url},
    )
    running = await make_server(config_file=conf)
    await wait_for(lambda: upstream.requests >= 5, seconds=5, what="fetches go on")
    assert (await history(running, "dead"))["offset"] == 0
    assert (await history(running, "feed"))["offset"] >= 2


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("job", "key"),
    [
        ({"every": 1, "call": "tests.sample_jobs:now"}, "schedule[0].channel"),
        ({"channel": "bad channel", "every": 1, "call": "tests.sample_jobs:now"}, "schedule[0].channel"),
        ({"channel": "t", "call": "tests.sample_jobs:now"}, "schedule[0].every"),
        ({"channel": "t", "every": 0, "call": "tests.sample_jobs:now"}, "schedule[0].every"),
        ({"channel": "t", "every": -2.5, "call": "tests.sample_jobs:now"}, "schedule[0].every"),
        ({"channel": "t", "every": "1", "call": "tests.sample_jobs:now"}, "schedule[0].every"),
        ({"channel": "t", "every": True, "call": "tests.sample_jobs:now"}, "schedule[0].every"),
        ({"channel": "t", "every": 1, "call": "tests.sample_jobs:now", "url": "http://x/"}, "schedule[0]"),
        ({"channel": "t", "every": 1}, "schedule[0]"),
        ({"channel": "t", "every": 1, "call": "tests.sample_jobs.now"}, "schedule[0].call"),
        ({"channel": "t", "every": 1, "url": "ftp://example.com/x"}, "schedule[0].url"),
        ({"channel": "t", "every": 1, "call": "tests.sample_jobs:now", "cron": "* * * * *"}, "schedule[0].cron"),
    ],
)
def test_bad_schedule_names_the_key(tmp_path: Path, job: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file=schedule_file(tmp_path, job), env={})
    assert info.value.key == key
    if key == "schedule[0]":
        assert "call" in str(info.value) and "url" in str(info.value)


def test_schedule_errors_name_the_entry(tmp_path: Path) -> None:
    good = {"channel": "a", "every": 1, "call": "tests.sample_jobs:now"}
    with pytest.raises(ConfigError) as info:
        load_config(file=schedule_file(tmp_path, good, {"channel": "b", "every": 0, "url": "http://x/"}), env={})
    assert info.value.key == "schedule[1].every"
    path = tmp_path / "scalar.toml"
    path.write_text("schedule = 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(file=path, env={})
    assert info.value.key == "schedule"


def test_valid_schedule_is_parsed(tmp_path: Path) -> None:
    conf = schedule_file(
        tmp_path,
        {"channel": "time", "every": 1, "call": "tests.sample_jobs:now"},
        {"channel": "feed", "every": 0.25, "url": "https://example.com/x.json", "name": "feed"},
    )
    jobs = load_config(file=conf, env={}).schedule
    assert [(j.channel, j.every, j.call, j.url, j.name) for j in jobs] == [
        ("time", 1.0, "tests.sample_jobs:now", None, "time#0"),
        ("feed", 0.25, None, "https://example.com/x.json", "feed"),
    ]


def serve_exit(conf: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushgate", "serve", "--port", "0", "--config", conf],
        capture_output=True, text=True, timeout=timeout(30), cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("job", "key"),
    [
        ({"every": 1, "call": "tests.sample_jobs:now"}, "schedule[0].channel"),
        ({"channel": "t", "every": 0, "call": "tests.sample_jobs:now"}, "schedule[0].every"),
        ({"channel": "t", "every": 1, "call": "tests.sample_jobs:now", "url": "http://x/"}, "schedule[0]"),
        # these load fine but fail when the node is built: still a config error, still exit 2
        ({"channel": "t", "every": 1, "call": "nosuch.module:fn"}, "schedule.call"),
        ({"channel": "t", "every": 1, "call": "tests.sample_jobs:not_callable"}, "schedule.call"),
    ],
)
def test_serve_with_a_bad_schedule_exits_2(tmp_path: Path, job: dict[str, Any], key: str) -> None:
    done = serve_exit(schedule_file(tmp_path, job))
    assert done.returncode == 2, done.stderr
    assert f"config {key}:" in done.stderr
    assert "Traceback" not in done.stderr


# -- the scheduler on its own: a lease store and a publish function, no node -----------------------

async def test_two_schedulers_sharing_a_lease_store_publish_each_tick_once() -> None:
    from pushgate.backends import MemoryLeaseStore
    from pushgate.config import ScheduleConfig
    from pushgate.scheduler import Scheduler

    leases = MemoryLeaseStore()
    published: list[tuple[str, bytes]] = []

    async def publish(channel: str, data: bytes) -> None:
        published.append((channel, data))

    job = ScheduleConfig(channel="tick", every=0.2, call="tests.sample_jobs:now", name="tick")
    schedulers = [Scheduler([job], leases, holder, 1.0, publish) for holder in ("n1", "n2")]
    started = time.monotonic()
    for s in schedulers:
        s.start()
    try:
        await wait_for(lambda: len(published) >= 3, seconds=timeout(5), what="three ticks")
        assert sum(s.is_leader for s in schedulers) == 1
    finally:
        for s in schedulers:
            await s.stop()
    elapsed = time.monotonic() - started
    assert all(channel == "tick" for channel, _ in published)
    # one run per tick: the job ran exactly as often as it was published, at most once per tick
    assert sample_jobs.calls["now"] == len(published)
    assert len(published) <= elapsed / job.every + 1
