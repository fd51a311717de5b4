#!/usr/bin/env python3
"""Mass reconnect: the clients of a killed node come back on a survivor and recover a channel.

The number issue 8 asks for. Redis + nodes A and B (all pinned to core 0), the load client on
core 1. N raw WebSocket clients (``lib/loadclient.py``'s ``JsonWS``: every frame parsed) connect to
**A** and subscribe to channel ``rec``; a publisher in the load process posts a live stream to
**B** (``POST /api/publish`` every 1/R s, ``data`` = ``{"t": time_ns}``). Then A is killed with
SIGKILL. Every client, on losing its connection, waits a random ``uniform(0, jitter)`` (the
bundled clients' "reconnect now" window, 1 s), connects to B and resubscribes with ``since`` = the
last message it received. Measured per client:

* **kill → caught up**: from the SIGKILL until the client holds the subscribe reply with
  ``recovered: true`` *and* the first message published after its resubscribe was sent (the first
  live message after the gap), with every offset before it received;
* **attempt → reply**: from the end of its jitter (the reconnect attempt) to the subscribe reply:
  handshake + subscribe + history on B, what the server adds to the client's own delay;
* **lost / duplicated** messages over the whole run (offsets the publisher got back that the
  client never received; offsets received more than once on the wire, without client-side
  de-duplication): both must be 0;
* B's **history reads** for recovery (``pushgate_history_reads_total{reason="recover"}`` from its
  ``/metrics``, before and after): with single-flight reads, one read serves the whole crowd.

Every run uses a fresh cluster; ``--runs`` (3) runs, the table quotes each run and the median.
The nodes run from a snapshot of ``src/`` taken at start, as in the other benches.

    python bench/recovery.py                       # N=2000, 3 runs
    python bench/recovery.py --clients 200 --runs 1 --quiet-wait 2      # a smoke run (~30 s)
    python bench/recovery.py --pushgate-src git:HEAD    # the last commit, not the working tree
    python bench/recovery.py --jitter 0                 # everyone at once: what the jitter buys

Results: ``bench/results/recovery-<timestamp>.md``, ``.summary.json``, ``raw/...json.gz``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from lib import report
from lib.loadclient import JsonWS, make_handshake
from lib.meter import Meter, describe, noise_pct, wait_for_quiet
from lib.report import cell
from lib.servers import (
    HOST,
    REPO_DIR,
    Proc,
    PushgateBuild,
    free_port,
    redis_ping,
    redis_server_binary,
    run_load_client,
)

CHANNEL = "rec"
_decode = msgspec.json.decode


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class Cluster:
    """Redis and nodes A, B (pinned to ``cpus``) from one pushgate build."""

    def __init__(self, build: PushgateBuild, cpus: str, logdir: Path) -> None:
        self.redis_port = free_port()
        rdir = tempfile.mkdtemp(prefix="pg-redis-", dir=str(logdir))
        self.redis = Proc("redis", [redis_server_binary(), "--port", str(self.redis_port), "--bind", HOST,
                                    "--save", "", "--appendonly", "no", "--dir", rdir, "--maxclients", "10000",
                                    "--loglevel", "warning"], cpus, logdir, cwd=rdir)
        self.ports = {"A": free_port(), "B": free_port()}
        self.nodes = {
            name: Proc(name, [sys.executable, "-m", "pushgate", "serve", "--host", HOST, "--port", str(port),
                              "--broker", f"redis://{HOST}:{self.redis_port}/0", "--node-id", name,
                              "--log-level", "warning", "--node-ttl", "3"],
                       cpus, logdir, env=build.env(), cwd=str(REPO_DIR))
            for name, port in self.ports.items()
        }

    async def start(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        self.redis.start()
        deadline = time.monotonic() + timeout
        while not redis_ping(self.redis_port):
            if not self.redis.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis did not start:\n{self.redis.log_tail()}")
            await asyncio.sleep(0.05)
        for node in self.nodes.values():
            node.start()
        for name, node in self.nodes.items():
            await node.wait_http_ok(session, [f"http://{HOST}:{self.ports[name]}/readyz"], timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.terminate()
        for node in self.nodes.values():
            node.wait_stopped()
        self.redis.stop()

    def meter(self) -> Meter:
        return Meter(lambda: {"redis": self.redis.pid, "B": self.nodes["B"].pid})


async def history_reads(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """``pushgate_history_reads_total`` by reason from a node's ``/metrics`` (0 before the first)."""
    async with session.get(f"http://{HOST}:{port}/metrics") as r:
        text = await r.text()
    out = {"recover": 0.0, "fill": 0.0}
    for line in text.splitlines():
        if line.startswith("pushgate_history_reads_total{"):
            labels, _, value = line.rpartition(" ")
            for reason in out:
                if f'reason="{reason}"' in labels:
                    out[reason] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# One client: a JsonWS per connection, the stream state across them
# --------------------------------------------------------------------------------------------


class Conn(JsonWS):
    def __init__(self, request: bytes, accept: bytes, owner: Recovering) -> None:
        super().__init__(request, accept)
        self.owner = owner

    def on_text(self, payload: bytes, now_ns: int) -> None:
        self.owner.frame(_decode(payload), now_ns)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.owner.lost(self)


class Recovering:
    """A client that follows ``rec``, and after losing its node reconnects to ``target`` with ``since``."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.conn: Conn | None = None
        self.offsets: list[int] = []  # every message offset received, in order (duplicates kept)
        self.epoch = ""
        self.subscribed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.t_lost = self.t_attempt = self.t_sub = self.t_reply = self.t_caught = 0
        self.recovered: bool | None = None
        self.retries = 0  # failed reconnect attempts
        self.errors: list[str] = []

    async def open(self, port: int) -> None:
        req, accept = make_handshake(port)
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(lambda: Conn(req, accept, self), HOST, port), 10)
        await asyncio.wait_for(conn.welcome, 10)
        self.conn = conn

    def subscribe(self, since: bool) -> None:
        assert self.conn is not None
        cmd: dict[str, Any] = {"id": 1, "type": "subscribe", "channel": CHANNEL}
        if since and self.offsets:
            cmd["since"] = {"epoch": self.epoch, "offset": self.offsets[-1]}
        self.t_sub = time.time_ns()
        self.conn.send_text(msgspec.json.encode(cmd))

    def frame(self, obj: dict[str, Any], now_ns: int) -> None:
        kind = obj.get("type")
        if kind == "message":
            self.epoch = obj["epoch"]
            self.offsets.append(obj["offset"])
            if self.t_reply and not self.t_caught and obj["data"]["t"] >= self.t_sub:
                self.t_caught = now_ns  # the first live message after the gap
                self.bench.caught += 1
        elif kind == "ok" and obj.get("id") == 1:
            if self.t_lost:
                self.t_reply, self.recovered = now_ns, obj.get("recovered") is True
            if not self.offsets:
                self.epoch = obj.get("epoch", "")
            if not self.subscribed.done():
                self.subscribed.set_result(obj)
        elif kind == "error":
            self.errors.append(str(obj)[:200])

    def lost(self, conn: Conn) -> None:
        if conn is self.conn and not self.bench.stopping:
            self.conn = None
            self.t_lost = time.time_ns()
            self.bench.tasks.add(asyncio.get_running_loop().create_task(self.reconnect()))

    async def reconnect(self) -> None:
        """Like the bundled clients after a lost node: a random delay in the jitter window, then
        the load balancer's other node (B), then backoff if that fails."""
        await asyncio.sleep(random.uniform(0.0, self.bench.jitter))
        self.t_attempt = time.time_ns()
        delay = 0.25
        while not self.bench.stopping:
            try:
                await self.open(self.bench.target)
                self.subscribe(since=True)
                return
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.retries += 1
                self.errors.append(repr(exc)[:200])
                await asyncio.sleep(random.uniform(0.0, delay))
                delay = min(delay * 2, 5.0)


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, target: int, jitter: float) -> None:
        self.target = target
        self.jitter = jitter
        self.caught = 0
        self.stopping = False
        self.tasks: set[asyncio.Task[None]] = set()


class Stream:
    """The live publication stream: POST /api/publish to B every 1/rate s; the offsets it got back."""

    def __init__(self, session: aiohttp.ClientSession, port: int, rate: float) -> None:
        self.session, self.url, self.period = session, f"http://{HOST}:{port}/api/publish", 1.0 / rate
        self.offsets: list[int] = []
        self.errors: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        next_t = time.monotonic()
        while not self.stop.is_set():
            body = {"channel": CHANNEL, "data": {"t": time.time_ns()}}
            try:
                async with self.session.post(self.url, json=body) as r:
                    reply = await r.json(content_type=None)
                    if r.status == 200:
                        self.offsets.append(reply["offset"])
                    else:
                        self.errors.append(f"HTTP {r.status} {str(reply)[:100]}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors.append(repr(exc)[:200])
            next_t += self.period
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))  # pacing


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(args: argparse.Namespace, build: PushgateBuild, logdir: Path, run: int) -> dict[str, Any]:
    waited = await wait_for_quiet((0, 1), 10.0, args.quiet_wait)
    cluster = Cluster(build, args.server_cpus, logdir)
    result: dict[str, Any] = {"run": run, "clients": args.clients, "quiet_waited_s": waited, "ok": False}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        bench = Bench(cluster.ports["B"], args.jitter)
        clients: list[Recovering] = []
        stream = Stream(session, cluster.ports["B"], args.rate)
        pub: asyncio.Task[None] | None = None
        try:
            await cluster.start(session)
            t0 = time.monotonic()
            for start in range(0, args.clients, args.connect_batch):  # everyone on A, subscribed
                batch = [Recovering(bench) for _ in range(min(args.connect_batch, args.clients - start))]
                await asyncio.gather(*(c.open(cluster.ports["A"]) for c in batch))
                for c in batch:
                    c.subscribe(since=False)
                await asyncio.wait_for(asyncio.gather(*(c.subscribed for c in batch)), 30)
                clients.extend(batch)
            result["connect_s"] = round(time.monotonic() - t0, 1)
            print(f"# run {run}: {len(clients)} clients on A in {result['connect_s']} s", file=sys.stderr)
            pub = asyncio.create_task(stream.run())
            deadline = time.monotonic() + 30
            while len(stream.offsets) < args.rate * args.warmup or min(len(c.offsets) for c in clients) == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the live stream did not reach the clients")
                await asyncio.sleep(0.05)
            before = await history_reads(session, cluster.ports["B"])
            meter = cluster.meter()
            m0 = meter.snap()
            t_kill = time.time_ns()
            os.kill(cluster.nodes["A"].pid, signal.SIGKILL)
            deadline = time.monotonic() + args.timeout
            while bench.caught < len(clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            m1 = meter.snap()
            result["window"] = meter.diff(m0, m1)
            result["noise_pct"] = noise_pct(result["window"])
            await asyncio.sleep(args.tail)  # live traffic after the crowd is back, then stop
            stream.stop.set()
            await pub
            final = stream.offsets[-1] if stream.offsets else 0
            deadline = time.monotonic() + 30
            while any(not c.offsets or c.offsets[-1] < final for c in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            after = await history_reads(session, cluster.ports["B"])
            published = set(stream.offsets)
            kill_to_caught = [(c.t_caught - t_kill) / 1e6 for c in clients if c.t_caught and c.recovered]
            attempt_to_reply = [(c.t_reply - c.t_attempt) / 1e6 for c in clients if c.t_reply]
            attempt_to_caught = [(c.t_caught - c.t_attempt) / 1e6 for c in clients if c.t_caught and c.recovered]
            lost = [len(published - set(c.offsets)) for c in clients]
            dup = [len(c.offsets) - len(set(c.offsets)) for c in clients]
            result.update({
                "ok": True,
                "published": len(published),
                "publish_errors": stream.errors[:5],
                "recovered": sum(1 for c in clients if c.recovered),
                "not_recovered": sum(1 for c in clients if c.recovered is False),
                "no_reply": sum(1 for c in clients if not c.t_reply),
                "caught_up": len(kill_to_caught),
                "kill_to_caught_ms": {"p50": pct(kill_to_caught, 0.5), "p99": pct(kill_to_caught, 0.99),
                                      "max": max(kill_to_caught, default=None)},
                "attempt_to_reply_ms": {"p50": pct(attempt_to_reply, 0.5), "p99": pct(attempt_to_reply, 0.99),
                                        "max": max(attempt_to_reply, default=None)},
                "attempt_to_caught_ms": {"p50": pct(attempt_to_caught, 0.5), "p99": pct(attempt_to_caught, 0.99),
                                         "max": max(attempt_to_caught, default=None)},
                "history_reads_recover": after["recover"] - before["recover"],
                "history_reads_fill": after["fill"] - before["fill"],
                "lost": sum(lost), "clients_with_loss": sum(1 for x in lost if x),
                "duplicated": sum(dup), "clients_with_dups": sum(1 for x in dup if x),
                "reconnect_retries": sum(c.retries for c in clients),
                "errors": [e for c in clients for e in c.errors][:5],
            })
        except Exception as exc:  # a failed run is reported, with the node logs
            result["error"] = repr(exc)
            result["logs"] = {n: p.log_tail() for n, p in cluster.nodes.items()}
        finally:
            bench.stopping = True
            stream.stop.set()
            if pub is not None:
                await asyncio.gather(pub, return_exceptions=True)
            for c in clients:
                if c.conn is not None:
                    c.conn.close()
            for task in bench.tasks:
                task.cancel()
            await asyncio.gather(*bench.tasks, return_exceptions=True)
            cluster.stop()
    return result


def show(r: dict[str, Any]) -> None:
    if not r["ok"]:
        print(f"# run {r['run']}.{r.get('attempt', 1)}: FAILED {r.get('error')}", file=sys.stderr)
        return
    k, a = r["kill_to_caught_ms"], r["attempt_to_reply_ms"]
    print(f"# run {r['run']}.{r.get('attempt', 1)}: caught up {r['caught_up']}/{r['clients']} "
          f"p50 {cell(k['p50'], '.0f')} "
          f"p99 {cell(k['p99'], '.0f')} max {cell(k['max'], '.0f')} ms; attempt->reply p50 {cell(a['p50'], '.1f')} "
          f"p99 {cell(a['p99'], '.1f')} ms; reads recover {r['history_reads_recover']:.0f} "
          f"fill {r['history_reads_fill']:.0f}; lost {r['lost']} dup {r['duplicated']}; "
          f"{describe(r['window'])}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def tables(doc: dict[str, Any], args: argparse.Namespace) -> str:
    runs = [r for r in doc["runs"] if r.get("used", True)]  # the least noisy attempt of each run
    redone = len(doc["runs"]) - len(runs)
    head = ("| run | N | recovered | caught up | kill → caught up p50 / p99 / max ms "
            "| attempt → caught up p50 / p99 ms | attempt → reply p50 / p99 ms "
            "| history reads on B (recover / fill) | lost | duplicated | reconnect retries | CPU % B / redis / client "
            "| noise % |")
    lines = [f"# Mass reconnect recovery — {doc['when']}", "",
             f"`{doc['command']}`", "",
             f"Code under test: {doc['build']['git'] or doc['build']['source']} "
             f"(snapshot {doc['build']['sha256_12']}); "
             f"{doc['machine'].get('cpu_model', '?')}, {doc['machine']['cpus']} CPUs, Python "
             f"{doc['machine']['python']}, uvloop {doc['machine'].get('uvloop', '?')}.", "",
             f"{args.clients} clients on node A, channel `{CHANNEL}`, a live stream of {args.rate:g} publications/s "
             f"to node B; A killed with SIGKILL; each client reconnects to B after uniform(0, {args.jitter:g} s) and "
             f"resubscribes with `since`. Redis + A + B on core(s) {args.server_cpus}, load client on core "
             f"{args.client_cpu}.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    ok = [r for r in runs if r["ok"]]
    for r in runs:
        if not r["ok"]:
            lines.append(f"| {r['run']} | {r['clients']} | failed: {report.first_error([r.get('error', '')])} |")
            continue
        k, a, w = r["kill_to_caught_ms"], r["attempt_to_reply_ms"], r["window"]["cpu_pct"]
        c = r.get("attempt_to_caught_ms", {"p50": None, "p99": None})
        lines.append(
            f"| {r['run']} | {r['clients']:,} | {r['recovered']:,} | {r['caught_up']:,} "
            f"| {cell(k['p50'], ',.0f')} / {cell(k['p99'], ',.0f')} / {cell(k['max'], ',.0f')} "
            f"| {cell(c['p50'], ',.0f')} / {cell(c['p99'], ',.0f')} "
            f"| {cell(a['p50'], ',.1f')} / {cell(a['p99'], ',.1f')} "
            f"| {r['history_reads_recover']:.0f} / {r['history_reads_fill']:.0f} | {r['lost']} | {r['duplicated']} "
            f"| {r['reconnect_retries']} | {w.get('B', 0):.0f} / {w.get('redis', 0):.0f} / {w.get('client', 0):.0f} "
            f"| {r['noise_pct']:.0f} |")
    if ok:
        def m(*path: str, fmt: str = ",.0f") -> str:
            return cell(report.med(ok, *path), fmt)

        lines.append(
            f"| **median of {len(ok)}** | {args.clients:,} | {m('recovered')} | {m('caught_up')} "
            f"| **{m('kill_to_caught_ms', 'p50')}** / **{m('kill_to_caught_ms', 'p99')}** "
            f"/ {m('kill_to_caught_ms', 'max')} "
            f"| {m('attempt_to_caught_ms', 'p50')} / {m('attempt_to_caught_ms', 'p99')} "
            f"| {m('attempt_to_reply_ms', 'p50', fmt=',.1f')} / {m('attempt_to_reply_ms', 'p99', fmt=',.1f')} "
            f"| **{m('history_reads_recover')}** / {m('history_reads_fill')} "
            f"| {sum(r['lost'] for r in ok)} (all runs) | {sum(r['duplicated'] for r in ok)} (all runs) "
            f"| {m('reconnect_retries')} | | |")
    lines += ["", "*kill → caught up*: SIGKILL of A until the client has `recovered: true` and the first message "
              "published after its resubscribe (includes its own jitter delay, uniform over the window). "
              "*attempt → caught up* / *attempt → reply*: from the end of its jitter (the reconnect attempt) to the "
              "same point / to the subscribe reply (handshake + subscribe + history on B); caught up also waits for "
              "the next live publication (≤ 1/rate). *history reads*: B's `pushgate_history_reads_total` delta over "
              "the run. *lost*: offsets the publisher got back that the client never received; *duplicated*: offsets "
              "received twice on the wire (no client-side de-duplication). CPU % over the kill → all-caught-up "
              f"window; *noise*: CPU of other processes + steal in it (% of a core); {redone} noisy attempt(s) "
              f"over --max-noise {args.max_noise:g} % redone, the least noisy kept (all in the .summary.json).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=20.0, help="live publications per second (to B)")
    ap.add_argument("--jitter", type=float, default=1.0, help="reconnect window: uniform(0, JITTER) s")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of live stream before the kill")
    ap.add_argument("--tail", type=float, default=1.0, help="seconds of live stream after all caught up")
    ap.add_argument("--timeout", type=float, default=30.0, help="bound on kill -> all caught up")
    ap.add_argument("--connect-batch", type=int, default=100)
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--max-noise", type=float, default=15.0,
                    help="redo a run in which other processes + steal took more than this %% of a core")
    ap.add_argument("--noise-retries", type=int, default=2)
    ap.add_argument("--pushgate-src", default=str(REPO_DIR / "src"), metavar="PATH|git:REV",
                    help="the pushgate to run: a source tree (default: this working tree) or git:REV of this repo")
    report.add_result_options(ap, "recovery-20261201-160000")
    return ap.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="pg-recovery-"))
    print(f"# logs in {logdir}", file=sys.stderr)
    build = PushgateBuild("pushgate", args.pushgate_src)
    build.snapshot(logdir / "src")
    runs: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):  # a run that other work disturbed is redone (lib/report.py)
        runs += await report.measure_until_quiet(lambda _attempt, run=run: measure(args, build, logdir, run),
                                                 run, args.noise_retries, args.max_noise, show)
    when = time.strftime("%Y%m%d-%H%M%S")
    doc = {"bench": "recovery", "when": when, "args": vars(args), "command": shlex.join(["python", *sys.argv]),
           "machine": report.machine_info(), "build": build.info(), "runs": runs}
    text = tables(doc, args)
    print(text)
    if not args.no_save:
        report.save(args.out_dir, f"recovery-{when}", doc, text)
    return 0 if all(r["ok"] for r in runs if r.get("used")) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return report.render_saved(args.render, lambda: parse_args([]), tables)
    return run_load_client(lambda: amain(args), args.client_cpu)


if __name__ == "__main__":
    sys.exit(main())
