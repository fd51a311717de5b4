"""Rate limits: a token bucket per connection (commands, publish bytes) and per node (publishes)."""

from __future__ import annotations

import asyncio

from pushgate.ratelimit import TokenBucket

from .conftest import ServerFactory


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert 0.09 < bucket.retry_after() <= 0.1
    clock.now += 0.11
    assert bucket.take() and not bucket.take()
    clock.now += 60
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_a_cost_above_the_burst_needs_a_full_bucket_and_is_paid_back() -> None:
    clock = Clock()
    bucket = TokenBucket(100, 50, clock=clock)
    assert bucket.take(120)  # a full bucket lets one big item through
    assert not bucket.take(1)
    clock.now += 0.5  # +50 tokens: still 20 short of zero
    assert not bucket.take(1)
    clock.now += 0.3
    assert bucket.take(1)


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(0, 0)
    assert all(bucket.take(10**9) for _ in range(1000)) and bucket.retry_after() == 0


async def test_a_flooding_connection_gets_rate_limited_then_closed_and_others_are_served(
    make_server: ServerFactory,
) -> None:
    server = await make_server(client_command_rate=5, client_command_burst=10, rate_limit_close_after=20)
    calm = await server.client("user=calm")
    flood = await server.client("user=flood")
    for i in range(40):  # 10 fit the burst; 20 refusals are answered; the 21st closes
        await flood.send_raw(f'{{"type":"ping","id":{i}}}')
    assert await flood.wait_closed() == 4004
    replies = []
    while not flood.pushes.empty():
        replies.append(flood.pushes.get_nowait())
    pongs = [r for r in replies if r["type"] == "pong"]
    limited = [r for r in replies if r["type"] == "error"]
    assert 10 <= len(pongs) <= 12  # the burst (plus what refilled while we sent)
    assert len(limited) == 20
    assert all(r["code"] == "rate_limited" and "retry in" in r["message"] for r in limited)
    assert limited[0]["id"] == pongs[-1]["id"] + 1  # the refused command is named by its id
    assert (await calm.request({"type": "ping"}))["type"] == "pong"


async def test_publish_bytes_are_limited_per_connection(make_server: ServerFactory) -> None:
    server = await make_server(client_publish_bytes_rate=100, client_publish_bytes_burst=300)
    c = await server.client("user=a")
    blob = "x" * 200
    first = await c.request({"type": "publish", "channel": "b", "data": blob, "id": 1})
    second = await c.request({"type": "publish", "channel": "b", "data": blob, "id": 2})
    assert first["type"] == "ok" and second["code"] == "rate_limited"
    assert (await c.request({"type": "publish", "channel": "b", "data": 1, "id": 3}))["type"] == "ok"


async def test_the_node_publish_rate_answers_429_past_its_burst(make_server: ServerFactory) -> None:
    server = await make_server(node_publish_rate=5)
    results = await asyncio.gather(
        *[server.api("POST", "/api/publish", {"channel": "r", "data": i}) for i in range(12)]
    )
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) >= 5 and 429 in statuses
    refused = next(body for status, body in results if status == 429)
    assert refused["error"]["code"] == "rate_limited"
