#!/usr/bin/env python3
"""Cluster benchmark: pushgate nodes joined by one Redis, on this machine, in one run.

Two measurements (the numbers the cluster issue asks for):

1. **latency** -- cross-node publish -> deliver latency. Redis + nodes n1, n2. A subscriber on
   n2 subscribes to channel ``lat``; a publisher connected to n1 sends client publishes
   ``{"type":"publish","channel":"lat","data":{"t":<time.time_ns()>},"id":k}`` at a steady rate
   R for D seconds (paced in small batches every ~5 ms, never waiting for replies); the
   subscriber records ``now_ns - t`` per message. Reported: p50/p90/p99/max, achieved rate,
   lost messages. The same is measured with publisher and subscriber on the SAME node
   (n1 -> n1) in the same cluster instance, as the reference ("peer") for the cross-node cost.
   Placements: ``packed`` (redis+n1+n2 on core 0, client on core 1) and ``split`` (n1 on core 0,
   n2+redis on core 1, client on core 1).

2. **fanout** -- deliveries/s to idle WebSocket clients on one channel. K nodes x N clients per
   node, all subscribed to ``fan``; M publications via ``POST /api/publish`` on n1; the clock runs
   from the first trigger until every client has received all M; deliveries/s = K*N*M / elapsed.
   Configurations compared in the same run: 3 nodes on Redis, 1 node on Redis, 1 node with the
   in-process memory broker (all nodes and Redis on core 0, the client on core 1).

Every (placement|config, rate) is measured ``--runs`` times, each on a freshly started cluster;
tables quote medians. Per-process CPU time (``/proc/PID/stat``) of Redis, each node and the
client, and per-core busy/steal/irq time (``/proc/stat``), are recorded for every measurement so
the bottleneck can be read off. A measurement during which other processes or the hypervisor
took more than ``--max-noise`` % of a core is redone (``--noise-retries``); the least noisy
attempt is used. The nodes run from a snapshot of ``src/`` taken at start (commit + dirty state
recorded), so edits to the tree during a run do not change the code under test.
Diagnostics: ``--gc-log`` (GC pauses of the nodes per latency window, and whether the slowest 1 %
of messages overlap them), ``--py-spy DIR`` (sampled profile of every node in run 1).

Examples::

    python bench/cluster.py                       # both parts, 3 runs
    python bench/cluster.py --quick               # smoke test: 1 run, short, 500 clients/node
    python bench/cluster.py --only latency --rates 1000,10000 --duration 10

Results: ``bench/results/cluster-<timestamp>.json`` (every run, raw) and ``.md`` (the tables).
The fan-out load client is ``bench/fanout.py``'s WSClient/Stats (plus a fast path for 16-bit-length
frames); the latency clients parse every frame (few connections, ~10k frames/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import report
from lib.loadclient import (
    JsonWS,
    Stats,
    WSClient,
    WSClient16,
    client_frame,
    connect_clients,
    open_ws,
    trigger_broadcasts,
)
from lib.meter import SATURATED_PCT, Meter, describe, noise_pct, rss_kb, saturated, wait_for_quiet
from lib.report import cell as _f
from lib.report import first_error, med, spread
from lib.servers import (
    HOST,
    REPO_DIR,
    Proc,
    PushgateBuild,
    free_port,
    git,
    parse_builds,
    redis_ping,
    redis_server_binary,
    run_load_client,
)

# --------------------------------------------------------------------------------------------
# Processes: Redis and pushgate nodes
# --------------------------------------------------------------------------------------------


GC_WRAPPER = """\
# Runs `python -m pushgate ...` and logs every garbage collection of generation 2, and any of >= 1 ms,
# with its duration and end time (time_ns), to stderr: `GCPAUSE gen=G ms=X t=NS`.
import gc, runpy, sys, time
_t0 = [0.0]
def _cb(phase, info):
    if phase == "start":
        _t0[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - _t0[0]) * 1000
    if ms >= 1.0 or info["generation"] == 2:
        sys.stderr.write(f"GCPAUSE gen={info['generation']} ms={ms:.2f} t={time.time_ns()}\\n")
gc.callbacks.append(_cb)
sys.argv = ["pushgate", *sys.argv[1:]]
runpy.run_module("pushgate", run_name="__main__", alter_sys=True)
"""


def gc_pauses(proc: Proc, t0_ns: int, t1_ns: int) -> list[tuple[int, int, float]]:
    """(end time_ns, generation, ms) of the GC pauses a --gc-log node logged within [t0, t1]."""
    out: list[tuple[int, int, float]] = []
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("GCPAUSE "):
            f = dict(kv.split("=", 1) for kv in line.split()[1:])
            t = int(f["t"])
            if t0_ns <= t <= t1_ns:
                out.append((t, int(f["gen"]), float(f["ms"])))
    return out


class Cluster:
    """Optional Redis plus pushgate nodes, each pinned to its CPU set."""

    def __init__(self, build: PushgateBuild, node_cpus: list[str], redis_cpu: str | None, logdir: Path, *,
                 drain_period: float = 0.5, extra_node_args: list[str] | None = None, gc_log: bool = False,
                 node_path: list[str] | None = None) -> None:
        self.logdir = logdir
        self.build = build
        self.redis: Proc | None = None
        self.redis_port = 0
        self.redis_dir: str | None = None
        if redis_cpu is not None:
            self.redis_port = free_port()
            self.redis_dir = tempfile.mkdtemp(prefix="pg-redis-", dir=str(logdir))
            self.redis = Proc("redis", [redis_server_binary(), "--port", str(self.redis_port), "--bind", HOST,
                                        "--save", "", "--appendonly", "no", "--dir", self.redis_dir,
                                        "--maxclients", "10000", "--loglevel", "warning"],
                              redis_cpu, logdir, cwd=self.redis_dir)
        broker = f"redis://{HOST}:{self.redis_port}/0" if self.redis else "memory://"
        self.nodes: list[Proc] = []
        self.ports: list[int] = []
        for i, cpus in enumerate(node_cpus):
            port = free_port()
            launcher = [sys.executable, "-m", "pushgate"]
            if gc_log:
                wrapper = logdir / "gcwrap.py"
                wrapper.write_text(GC_WRAPPER)
                launcher = [sys.executable, str(wrapper)]
            cmd = [*launcher, "serve", "--host", HOST, "--port", str(port),
                   "--broker", broker, "--node-id", f"n{i + 1}", "--log-level", "warning",
                   "--drain-period", str(drain_period)] + (extra_node_args or [])
            self.nodes.append(Proc(f"n{i + 1}", cmd, cpus, logdir, env=build.env(node_path), cwd=str(REPO_DIR)))
            self.ports.append(port)

    @property
    def procs(self) -> dict[str, Proc]:
        d = {p.name: p for p in self.nodes}
        if self.redis:
            d["redis"] = self.redis
        return d

    async def start(self, session: Any, timeout: float = 30.0) -> None:
        if self.redis:
            self.redis.start()
            deadline = time.monotonic() + timeout
            while not redis_ping(self.redis_port):
                if not self.redis.alive():
                    raise RuntimeError(f"redis exited:\n{self.redis.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis not up within {timeout:.0f}s:\n{self.redis.log_tail()}")
                await asyncio.sleep(0.05)
        for n in self.nodes:
            n.start()
        for n, port in zip(self.nodes, self.ports, strict=True):
            await n.wait_http_ok(session, [f"http://{HOST}:{port}/readyz"], timeout)

    def stop(self) -> None:
        for n in self.nodes:  # nodes first (they clean their presence in Redis), in parallel
            n.terminate()
        for n in self.nodes:
            n.wait_stopped()
        if self.redis:
            self.redis.terminate()
            self.redis.wait_stopped()

    def meter(self) -> Meter:
        """CPU of Redis, every node and this client, and every core, over a window."""
        return Meter(lambda: {name: p.pid for name, p in self.procs.items()})


# --------------------------------------------------------------------------------------------
# Latency clients (bench/lib/loadclient.py JsonWS: few connections, every frame parsed)
# --------------------------------------------------------------------------------------------


class LatencySubscriber(JsonWS):
    def __init__(self, request: bytes, accept: bytes, channel: str) -> None:
        super().__init__(request, accept)
        self.channel = channel
        self.subscribed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.since_ns = 1 << 62  # only messages published at/after this time are recorded
        self.lat_ns: list[int] = []
        self.t_ns: list[int] = []  # publish stamps, parallel to lat_ns
        self.received = 0  # recorded messages
        self.other = 0  # messages from before since_ns (warm-up)
        self.last_recv_ns = 0

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if payload.startswith(b'{"type":"message"'):
            i = payload.find(b'"t":', payload.find(b'"data":'))
            j = payload.find(b"}", i)
            t = int(payload[i + 4:j])
            if t >= self.since_ns:
                self.lat_ns.append(now_ns - t)
                self.t_ns.append(t)
                self.received += 1
                self.last_recv_ns = now_ns
            else:
                self.other += 1
        elif b'"type":"ok"' in payload and not self.subscribed.done():
            self.subscribed.set_result(payload)


class LatencyPublisher(JsonWS):
    def __init__(self, request: bytes, accept: bytes) -> None:
        super().__init__(request, accept)
        self.oks = 0

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if b'"type":"ok"' in payload:
            self.oks += 1


# --------------------------------------------------------------------------------------------
# Part 1: publish -> deliver latency
# --------------------------------------------------------------------------------------------


LAT_PLACEMENTS: dict[str, dict[str, Any]] = {
    "packed": {"redis": "0", "n1": "0", "n2": "0",
               "label": "redis+n1+n2 on core 0, load client on core 1"},
    "split": {"redis": "1", "n1": "0", "n2": "1",
              "label": "n1 on core 0; n2+redis+load client on core 1"},
}


# One publisher connection carries the whole offered rate: the per-connection and per-node publish
# limits (client_command_rate, client_publish_bytes_rate, node_publish_rate) would refuse most of it.
LAT_NODE_ARGS = ["--client-command-rate", "0", "--client-publish-bytes-rate", "0", "--node-publish-rate", "0"]


async def paced_publish(pubs: list[LatencyPublisher], channel: str, rate: float, duration: float,
                        tick: float, k0: int) -> dict[str, Any]:
    """Send round(rate*duration) publishes at a steady rate, in batches every ``tick`` seconds.

    Catch-up pacing: each tick sends what is due by ``rate * elapsed``, so a late tick does not
    lower the rate (no coordinated omission on the sending side). One ``time_ns()`` per batch,
    taken right before the batch is built and written. Bounded by count and by time.
    """
    total = max(1, round(rate * duration))
    prefix = b'{"type":"publish","channel":' + json.dumps(channel).encode() + b',"data":{"t":'
    sent = 0
    k = k0
    npub = len(pubs)
    t0 = time.perf_counter()
    hard_end = t0 + duration + 10.0
    max_batch = 0
    late_ticks = 0
    while sent < total:
        now = time.perf_counter()
        if now > hard_end:
            break
        due = min(total, int(rate * (now - t0)) + 1)
        n = due - sent
        if n > 0:
            max_batch = max(max_batch, n)
            if n > max(2, 3 * rate * tick):
                late_ticks += 1
            t = b"%d" % time.time_ns()
            parts: list[list[bytes]] = [[] for _ in range(npub)]
            for j in range(n):
                k += 1
                parts[(sent + j) % npub].append(client_frame(prefix + t + b'},"id":%d}' % k))
            for p, frames in zip(pubs, parts, strict=True):
                if frames:
                    p.write(b"".join(frames))
            sent = due
        if sent >= total:
            break
        next_tick = t0 + (int((time.perf_counter() - t0) / tick) + 1) * tick
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    t1 = time.perf_counter()
    return {"sent": sent, "send_seconds": t1 - t0, "max_batch": max_batch, "late_ticks": late_ticks, "k": k}


def gc_report(cluster: Cluster, sub: LatencySubscriber, end_ns: int) -> dict[str, Any]:
    """GC pauses of each node in the window, and how many of the 1 % slowest messages were in flight
    (between their publish stamp and their arrival) while some node's pause of >= 2 ms ended."""
    out: dict[str, Any] = {}
    big: list[tuple[int, float]] = []
    for node in cluster.nodes:
        ps = gc_pauses(node, sub.since_ns, end_ns)
        g2 = [ms for _, g, ms in ps if g == 2]
        out[node.name] = {"gen2_count": len(g2), "gen2_max_ms": max(g2, default=0.0),
                       "gen2_total_ms": round(sum(g2), 1), "pauses_ge_2ms": sum(1 for _, _, ms in ps if ms >= 2),
                       "max_ms": max((ms for _, _, ms in ps), default=0.0)}
        big += [(t, ms) for t, _, ms in ps if ms >= 2]
    n = len(sub.lat_ns)
    if n and big:
        k = max(1, n // 100)
        slow = sorted(range(n), key=lambda i: sub.lat_ns[i])[-k:]
        hit = sum(1 for i in slow if any(sub.t_ns[i] <= t <= sub.t_ns[i] + sub.lat_ns[i] for t, _ in big))
        out["slowest_1pct_overlapping_gc_ge_2ms"] = round(hit / k, 3)
        # the same for random messages, as the base rate to compare with
        step = max(1, n // k)
        base = range(0, n, step)
        bh = sum(1 for i in base if any(sub.t_ns[i] <= t <= sub.t_ns[i] + sub.lat_ns[i] for t, _ in big))
        out["all_msgs_overlapping_gc_ge_2ms"] = round(bh / max(1, len(base)), 3)
    return out


def _slowest(sub: LatencySubscriber, frac: float) -> list[tuple[float, float]]:
    n = len(sub.lat_ns)
    if not n:
        return []
    k = max(1, int(n * frac))
    idx = sorted(range(n), key=lambda i: sub.lat_ns[i])[-k:]
    return [(round((sub.t_ns[i] - sub.since_ns) / 1e6, 1), round(sub.lat_ns[i] / 1e6, 2)) for i in sorted(idx)]


def pct(sorted_xs: list[int], q: float) -> float:
    if not sorted_xs:
        return float("nan")
    return float(sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))])


async def drain(cond: Any, timeout: float, stall: float, progress: Any) -> str:
    """Wait until cond() (bounded by timeout, and by `stall` seconds without progress())."""
    deadline = time.monotonic() + timeout
    last, last_t = progress(), time.monotonic()
    while not cond():
        await asyncio.sleep(0.02)
        now = time.monotonic()
        p = progress()
        if p != last:
            last, last_t = p, now
        if now - last_t > stall:
            return f"stalled ({stall:.0f}s without progress)"
        if now > deadline:
            return f"timeout ({timeout:.0f}s)"
    return ""


async def measure_latency(cluster: Cluster, pub_node: int, sub_node: int, rate: float, args: argparse.Namespace,
                          k0: int) -> dict[str, Any]:
    channel = args.channel
    res: dict[str, Any] = {"path": f"n{pub_node + 1}->n{sub_node + 1}", "rate": rate, "duration": args.duration,
                           "publishers": args.publishers}
    sub: LatencySubscriber | None = None
    pubs: list[LatencyPublisher] = []
    meter = cluster.meter()
    try:
        sub = await open_ws(LatencySubscriber, cluster.ports[sub_node], channel)
        sub.send_text(json.dumps({"type": "subscribe", "channel": channel, "id": 1}).encode())
        await asyncio.wait_for(sub.subscribed, 10)
        for _ in range(args.publishers):
            pubs.append(await open_ws(LatencyPublisher, cluster.ports[pub_node]))

        def oks() -> int:
            return sum(p.oks for p in pubs)

        # Warm-up at the same rate, then let everything drain before the measured window.
        k = k0
        if args.warmup > 0:
            w = await paced_publish(pubs, channel, rate, args.warmup, args.tick, k)
            k = w["k"]
            await drain(lambda: oks() >= w["sent"] and sub.other >= w["sent"], 15, 5, lambda: (oks(), sub.other))
        ok0, err0 = oks(), sub.errors + sum(p.errors for p in pubs)
        sub.since_ns = time.time_ns()
        spies = start_py_spy(cluster, args, f"lat-{res['path'].replace('>', '')}-{rate:.0f}")
        a = meter.snap()
        p = await paced_publish(pubs, channel, rate, args.duration, args.tick, k)
        b = meter.snap()
        if spies:
            res["profile"] = finish_py_spy(spies)
        backlog_at_end = p["sent"] - (oks() - ok0)
        recv_at_end = sub.received
        reason = await drain(lambda: sub.received >= p["sent"] and oks() - ok0 >= p["sent"],
                             args.drain_timeout, 5, lambda: (sub.received, oks()))
        c = meter.snap()
        lat = sorted(sub.lat_ns)
        sent = p["sent"]
        res.update(
            sent=sent,
            received=sub.received,
            lost=sent - sub.received,
            replies_ok=oks() - ok0,
            errors=sub.errors + sum(pp.errors for pp in pubs) - err0,
            first_error=sub.first_error or next((pp.first_error for pp in pubs if pp.first_error), ""),
            drain_incomplete=reason,
            achieved_rate=round(sent / p["send_seconds"], 1),
            # what the cluster got through during the send window: < achieved_rate means it fell behind
            delivered_in_window=recv_at_end,
            delivered_rate_in_window=round(recv_at_end / p["send_seconds"], 1),
            replied_rate_in_window=round((p["sent"] - backlog_at_end) / p["send_seconds"], 1),
            reply_backlog_at_end=backlog_at_end,
            max_batch=p["max_batch"],
            late_ticks=p["late_ticks"],
            drain_seconds=round(c[0] - b[0], 3),
            p50_ms=pct(lat, 0.50) / 1e6,
            p90_ms=pct(lat, 0.90) / 1e6,
            p99_ms=pct(lat, 0.99) / 1e6,
            p999_ms=pct(lat, 0.999) / 1e6,
            max_ms=(lat[-1] / 1e6) if lat else float("nan"),
            min_ms=(lat[0] / 1e6) if lat else float("nan"),
            mean_ms=(statistics.fmean(lat) / 1e6) if lat else float("nan"),
            # the 1 % slowest messages, as (ms since the window started, latency ms), in time order: shows
            # whether the tail is spread out or comes in bursts (a stall of some process)
            slowest=_slowest(sub, 0.01),
            meter=meter.diff(a, b),
            k=p["k"],
        )
        # CPU per publication of every process over the window (the publishing node's is the
        # cluster goal of issue #10): CPU seconds / publications sent in the window, in µs.
        res["us_per_pub"] = {n: round(1e6 * s / max(1, sent), 2) for n, s in res["meter"]["cpu_s"].items()}
        res["saturated_cores"] = [c_ for c_ in (0, 1) if saturated(res["meter"], c_)]
        res["noise_pct"] = noise_pct(res["meter"])
        if args.gc_log:
            res["gc"] = gc_report(cluster, sub, time.time_ns())
        res["overloaded"] = res["delivered_rate_in_window"] < 0.95 * res["achieved_rate"]
        res["ok"] = True
    except Exception as e:
        res["ok"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        res["k"] = k0 + 10**6
    finally:
        for pp in pubs:
            pp.close()
        if sub is not None:
            sub.close()
        await asyncio.sleep(0.3)  # let the nodes see the close and unsubscribe
    return res


def _build_tag(args: argparse.Namespace, build: PushgateBuild) -> dict[str, str]:
    """The ``build`` field of a result (only when several builds are compared, so old files read the same)."""
    return {"build": build.name} if len(args.builds) > 1 else {}


async def latency_part(args: argparse.Namespace, logdir: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    plan: list[tuple[int, int, float]] = [(0, 0, r) for r in args.peer_rates_list]
    plan += [(0, 1, r) for r in args.rates_list]
    for run in range(1, args.runs + 1):
        args._run = run
        for build in args.builds:
            for placement in args.placements_list:
                results += await latency_cluster(args, logdir, run, build, placement, plan)
    return results


async def latency_cluster(args: argparse.Namespace, logdir: Path, run: int, build: PushgateBuild, placement: str,
                          plan: list[tuple[int, int, float]]) -> list[dict[str, Any]]:
    """One fresh cluster in one placement; every (path, rate) of the plan measured in it."""
    import aiohttp

    results: list[dict[str, Any]] = []
    tag = _build_tag(args, build)
    pl = LAT_PLACEMENTS[placement]
    waited = (await wait_for_quiet((0, 1), 10.0, args.quiet_wait)) if args.quiet_wait > 0 else 0.0
    cluster = Cluster(build, [pl["n1"], pl["n2"]], pl["redis"], logdir, gc_log=args.gc_log, node_path=args.node_paths,
                      extra_node_args=LAT_NODE_ARGS)
    k = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            await cluster.start(session)
            for pub_node, sub_node, rate in plan:
                async def attempt(n: int, pub_node: int = pub_node, sub_node: int = sub_node,
                                  rate: float = rate) -> dict[str, Any]:
                    nonlocal k
                    if n > 1 and args.quiet_wait > 0:
                        await wait_for_quiet((0, 1), 10.0, args.quiet_wait)
                    r = await measure_latency(cluster, pub_node, sub_node, rate, args, k)
                    k = r.pop("k")
                    r.update(part="latency", placement=placement, waited_for_quiet_s=waited,
                             kind="peer" if pub_node == sub_node else "cross", **tag)
                    if not r["ok"]:
                        r["logs"] = {n: p.log_tail(600) for n, p in cluster.procs.items()}
                    return r

                results += await report.measure_until_quiet(attempt, run, args.noise_retries, args.max_noise,
                                                            _print_latency)
        except Exception as e:
            results.append({"part": "latency", "run": run, "placement": placement, "ok": False,
                            "error": f"{type(e).__name__}: {e}", **tag})
            print(f"  latency run {run} {placement}: FAILED {e}", file=sys.stderr, flush=True)
        finally:
            cluster.stop()
    return results


def _print_latency(r: dict[str, Any]) -> None:
    head = f"  latency run {r['run']}.{r['attempt']} {r.get('build', '')}{' ' if r.get('build') else ''}" \
        f"{r['placement']:<6} {r['path']}"
    if not r.get("ok"):
        print(f"{head} @{r['rate']:.0f}/s FAILED: {r['error']}", file=sys.stderr, flush=True)
        return
    print(f"{head} @{r['rate']:>6.0f}/s: "
          f"sent {r['sent']} at {r['achieved_rate']:,.0f}/s (in window: replied {r['replied_rate_in_window']:,.0f}/s, "
          f"delivered {r['delivered_rate_in_window']:,.0f}/s), p50 {r['p50_ms']:.2f} p90 {r['p90_ms']:.2f} "
          f"p99 {r['p99_ms']:.2f} max {r['max_ms']:.1f} ms, lost {r['lost']}, err {r['errors']}; "
          f"{describe(r['meter'])}; noise {r['noise_pct']:.0f}%" + ("  OVERLOADED" if r["overloaded"] else "")
          + (f"  DRAIN {r['drain_incomplete']}" if r["drain_incomplete"] else ""),
          file=sys.stderr, flush=True)


def start_py_spy(cluster: Cluster, args: argparse.Namespace, tag: str) -> list[tuple[str, Path, Any]]:
    """With --py-spy DIR: sample every node (non-blocking) for the measured window (run 1 only)."""
    if not args.py_spy or getattr(args, "_run", 1) != 1:
        return []
    out = Path(args.py_spy)
    if len(args.builds) > 1:
        tag = f"{cluster.build.name}-{tag}"
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for n in cluster.nodes:
        path = out / f"{tag}-{n.name}.txt"
        cmd = ["py-spy", "record", "--pid", str(n.pid), "--duration", str(max(1, int(args.duration))),
               "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(path)]
        spies.append((n.name, path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return spies


def _topn(d: dict[str, int], total: int, top: int) -> list[tuple[str, float]]:
    return [(f, round(100 * c / max(1, total), 1)) for f, c in sorted(d.items(), key=lambda x: -x[1])[:top]]


def finish_py_spy(spies: list[tuple[str, Path, Any]], top: int = 12) -> dict[str, Any]:
    """Wait for the samplers; per node the hottest frames by self and by inclusive samples."""
    out: dict[str, Any] = {}
    for name, path, proc in spies:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        self_: dict[str, int] = {}
        incl: dict[str, int] = {}
        total = 0
        try:
            lines = path.read_text().splitlines()
        except OSError:
            out[name] = {"error": "no py-spy output"}
            continue
        for line in lines:
            stack, _, cnt = line.rpartition(" ")
            if not cnt.isdigit():
                continue
            c = int(cnt)
            total += c
            frames = stack.split(";")
            self_[frames[-1]] = self_.get(frames[-1], 0) + c
            for f in set(frames):
                incl[f] = incl.get(f, 0) + c
        out[name] = {"samples": total, "file": str(path), "self_pct": _topn(self_, total, top),
                     "inclusive_pct": _topn(incl, total, top)}
    return out


# --------------------------------------------------------------------------------------------
# Part 2: fan-out deliveries/s, K nodes x N clients on one channel
# --------------------------------------------------------------------------------------------


FANOUT_CONFIGS: dict[str, dict[str, Any]] = {
    "3 nodes": {"nodes": 3, "redis": True, "label": "3 nodes + Redis, all on core 0"},
    "1 node": {"nodes": 1, "redis": True, "label": "1 node + Redis, both on core 0"},
    "1 node, memory": {"nodes": 1, "redis": False, "label": "1 node, in-process memory broker, core 0"},
}
FANOUT_KEYS = {"3x": "3 nodes", "1x": "1 node", "1x-memory": "1 node, memory"}


def _subscribe_all(clients: list[WSClient], frame: bytes) -> None:
    for c in clients:
        if c.transport is not None and not c.transport.is_closing():
            c.transport.write(frame)


async def _round(groups: list[tuple[Stats, list[WSClient]]], marker: bytes, expect: int) -> None:
    """Arm a counting round: every client must count `expect` frames containing `marker`."""
    for st, cl in groups:
        for c in cl:
            c.count = 0
            c.finished = False
        st.marker = marker
        st.sample = None
        st.reads = 0
        st.reset_round(expect, len(cl))


async def _wait_round(groups: list[tuple[Stats, list[WSClient]]], timeout: float, stall: float,
                      trig: asyncio.Future[Any] | None = None) -> str:
    deadline = time.monotonic() + timeout
    last, last_t = -1, time.monotonic()
    while not all(st.done_event.is_set() for st, _ in groups):  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        now = time.monotonic()
        total = sum(c.count for _, cl in groups for c in cl)
        if total != last:
            last, last_t = total, now
        if (trig is None or trig.done()) and now - last_t > stall:
            return f"stalled: no progress for {stall:.0f}s"
        if now > deadline:
            return f"timeout after {timeout:.0f}s"
    return ""


async def measure_fanout(build: PushgateBuild, config: str, per_node: int, m: int, args: argparse.Namespace,
                         logdir: Path) -> dict[str, Any]:
    import aiohttp

    cfg = FANOUT_CONFIGS[config]
    k = cfg["nodes"]
    total_clients = per_node * args.fanout_total_nodes  # same total for every configuration
    per = [total_clients // k + (1 if i < total_clients % k else 0) for i in range(k)]
    res: dict[str, Any] = {"part": "fanout", "config": config, "nodes": k, "clients": total_clients,
                           "clients_per_node": per, "messages": m}
    cluster = Cluster(build, [args.fanout_node_cpu] * k, args.fanout_node_cpu if cfg["redis"] else None, logdir,
                      node_path=args.node_paths)
    groups: list[tuple[Stats, list[WSClient]]] = []
    data = json.dumps("x" * args.data_chars)
    body = json.dumps({"channel": args.fanout_channel, "data": json.loads(data)}).encode()
    sub_frame = client_frame(json.dumps({"type": "subscribe", "channel": args.fanout_channel, "id": 1}).encode())
    meter = cluster.meter()
    conn = aiohttp.TCPConnector(limit=args.trigger_concurrency + 4)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            if args.quiet_wait > 0:
                res["waited_for_quiet_s"] = await wait_for_quiet((0, 1), 10.0, args.quiet_wait)
            await cluster.start(session)
            rss0 = {n.name: rss_kb(n.pid) for n in cluster.nodes}
            t_conn = time.perf_counter()
            for port, n in zip(cluster.ports, per, strict=True):
                st = Stats()
                st.reads = 0
                cl = await connect_clients(port, n, st, args.connect_batch, args.connect_timeout,
                                           client_class=WSClient16)
                groups.append((st, cl))
            res["connect_seconds"] = round(time.perf_counter() - t_conn, 2)
            # Subscribe every client; a round counting the `ok` replies tells when all are in.
            t_sub = time.perf_counter()
            await _round(groups, b'"type":"ok"', 1)
            for _, cl in groups:
                for i in range(0, len(cl), 200):
                    _subscribe_all(cl[i:i + 200], sub_frame)
                    await asyncio.sleep(0)
            why = await _wait_round(groups, args.connect_timeout, 15)
            if why:
                got = sum(st.done for st, _ in groups)
                raise RuntimeError(f"subscribe: {got}/{total_clients} ok replies ({why})")
            res["subscribe_seconds"] = round(time.perf_counter() - t_sub, 2)
            res["rss_idle_kb"] = {n.name: rss_kb(n.pid) for n in cluster.nodes}
            res["kb_per_conn"] = round(sum(res["rss_idle_kb"][x] - rss0[x] for x in rss0) / total_clients, 2)
            url = f"http://{HOST}:{cluster.ports[0]}/api/publish"
            # Warm-up: one publication to everybody.
            await _round(groups, b'"type":"message"', 1)
            await trigger_broadcasts(session, url, body, 1, 1)
            why = await _wait_round(groups, 30, 10)
            if why:
                raise RuntimeError(f"warm-up publication not delivered to all: {why}")
            sample = groups[0][0].sample
            await asyncio.sleep(0.3)
            # Measured round.
            await _round(groups, b'"type":"message"', m)
            a = meter.snap()
            t0 = time.perf_counter()
            trig = asyncio.ensure_future(trigger_broadcasts(session, url, body, m, args.trigger_concurrency))
            incomplete = await _wait_round(groups, args.deliver_timeout, args.stall_seconds, trig)
            t1 = max(st.t_done for st, _ in groups) if not incomplete else time.perf_counter()
            b = meter.snap()
            trig_res = await asyncio.wait_for(trig, 60)
            elapsed = t1 - t0
            delivered = sum(min(c.count, m) for _, cl in groups for c in cl)
            md = meter.diff(a, b)
            node_cpu = sum(md["cpu_s"][n.name] for n in cluster.nodes)
            res.update(
                elapsed_s=round(elapsed, 4),
                delivered=delivered,
                expected=total_clients * m,
                deliveries_per_s=round(delivered / elapsed, 1),
                deliveries_per_node_cpu_s=round(delivered / node_cpu, 1) if node_cpu > 0 else None,
                # frames per client socket read; ~ frames per server write() when the client keeps up
                frames_per_read=round(delivered / max(1, sum(st.reads for st, _ in groups)), 2),
                node_cpu_pct_sum=round(100 * node_cpu / md["window_s"], 1),
                meter=md,
                complete=delivered == total_clients * m and not incomplete,
                incomplete_reason=incomplete,
                frame_payload_bytes=len(sample) if sample else None,
                sample_frame=sample.decode(errors="replace")[:200] if sample else None,
                closed_by_server=sum(st.closed_by_server for st, _ in groups),
                lost_connections=sum(st.lost for st, _ in groups),
                **trig_res,
            )
            res["saturated_cores"] = [c_ for c_ in (0, 1) if saturated(md, c_)]
            res["noise_pct"] = noise_pct(md)
            res["ok"] = True
        except Exception as e:
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            res["logs"] = {n: p.log_tail(800) for n, p in cluster.procs.items()}
        finally:
            for _, cl in groups:
                for c in cl:
                    c.abort()
            await asyncio.sleep(0.3)
            cluster.stop()
    return res


async def fanout_part(args: argparse.Namespace, logdir: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for build in args.builds:
            for config in args.fanout_configs_list:
                async def attempt(_: int, build: PushgateBuild = build, config: str = config) -> dict[str, Any]:
                    r = await measure_fanout(build, config, args.clients_per_node, args.messages, args, logdir)
                    r.update(_build_tag(args, build))
                    return r

                results += await report.measure_until_quiet(attempt, run, args.noise_retries, args.max_noise,
                                                            _print_fanout)
    return results


def _print_fanout(r: dict[str, Any]) -> None:
    head = f"  fanout run {r['run']}.{r['attempt']} {r.get('build', '')}{' ' if r.get('build') else ''}" \
        f"{r['config']:<15}"
    if not r["ok"]:
        print(f"{head} FAILED {r['error']}\n{json.dumps(r.get('logs'), indent=1)}", file=sys.stderr, flush=True)
        return
    print(f"{head} {r['clients']} clients x {r['messages']}: {r['deliveries_per_s']:>10,.0f} deliveries/s "
          f"({r['elapsed_s']:.2f}s), {_f(r['deliveries_per_node_cpu_s'], ',.0f')}/node-CPU-s; {describe(r['meter'])}; "
          f"connect {r['connect_seconds']}s subscribe {r['subscribe_seconds']}s; noise {r['noise_pct']:.0f}%"
          + ("" if r["complete"] else f"  INCOMPLETE {r['delivered']}/{r['expected']} {r['incomplete_reason']} "
             f"closed={r['closed_by_server']} lost={r['lost_connections']} trig_err={r['trigger_errors'][:1]}"),
          file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Summary and tables
# --------------------------------------------------------------------------------------------


def summarize_latency(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for placement in args.placements_list:
        peer_rows: dict[float, dict[str, Any]] = {}
        keys = [("peer", r) for r in args.peer_rates_list] + [("cross", r) for r in args.rates_list]
        for kind, rate in keys:
            rs = [r for r in results if r.get("part") == "latency" and r.get("placement") == placement
                  and r.get("kind") == kind and r.get("rate") == rate and r.get("ok") and r.get("used", True)]
            row: dict[str, Any] = {"placement": placement, "kind": kind, "rate": rate,
                                   "path": "n1->n1" if kind == "peer" else "n1->n2", "runs_ok": len(rs)}
            for key in ("achieved_rate", "delivered_rate_in_window", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                        "max_ms", "mean_ms", "lost", "errors", "reply_backlog_at_end", "noise_pct"):
                row[key] = med(rs, key)
            row["p50_all"] = [round(r["p50_ms"], 3) for r in rs]
            row["p99_all"] = [round(r["p99_ms"], 3) for r in rs]
            row["lost_all"] = [r["lost"] for r in rs]
            row.update(_cpu_columns(rs, ("redis", "n1", "n2", "client")))
            row["us_per_pub"] = {n: med(rs, "us_per_pub", n) for n in ("n1", "n2", "redis")}
            row["pub_node_us_all"] = [r["us_per_pub"]["n1"] for r in rs if "us_per_pub" in r]
            row["saturated_runs"] = {c: sum(1 for r in rs if c in r.get("saturated_cores", [])) for c in (0, 1)}
            row["overloaded_runs"] = sum(1 for r in rs if r.get("overloaded"))
            if kind == "peer":
                peer_rows[rate] = row
            out.append(row)
        ref = peer_rows.get(min(args.peer_rates_list)) if args.peer_rates_list else None
        for row in out:
            if row["placement"] == placement and ref and row["p50_ms"] and ref.get("p50_ms"):
                row["p50_vs_peer"] = row["p50_ms"] / ref["p50_ms"]
                row["p99_vs_peer"] = row["p99_ms"] / ref["p99_ms"] if ref.get("p99_ms") else None
    return out


def _cpu_columns(rs: list[dict[str, Any]], names: Any) -> dict[str, Any]:
    """Median CPU % per process and busy/steal % per core of the attempts ``rs``."""
    return {"cpu_pct": {n: med(rs, "meter", "cpu_pct", n) for n in names},
            "core_busy_pct": {c: med(rs, "meter", "cores", c, "busy_pct") for c in ("core0", "core1")},
            "core_steal_pct": {c: med(rs, "meter", "cores", c, "steal_pct") for c in ("core0", "core1")}}


def summarize_fanout(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for config in args.fanout_configs_list:
        rs = [r for r in results if r.get("part") == "fanout" and r.get("config") == config and r.get("ok")
              and r.get("used", True)]
        row: dict[str, Any] = {"config": config, "label": FANOUT_CONFIGS[config]["label"],
                               "nodes": FANOUT_CONFIGS[config]["nodes"], "runs_ok": len(rs),
                               "runs_complete": sum(1 for r in rs if r.get("complete")),
                               "noise_pct": med(rs, "noise_pct")}
        row["clients"] = rs[0]["clients"] if rs else None
        row["messages"] = rs[0]["messages"] if rs else None
        for key in ("deliveries_per_s", "deliveries_per_node_cpu_s", "frames_per_read", "node_cpu_pct_sum", "elapsed_s",
                    "connect_seconds", "subscribe_seconds", "kb_per_conn", "frame_payload_bytes"):
            row[key] = med(rs, key)
        row["deliveries_per_s_all"] = [r["deliveries_per_s"] for r in rs]
        row.update(_cpu_columns(rs, ["redis"] + [f"n{i + 1}" for i in range(FANOUT_CONFIGS[config]["nodes"])]
                                + ["client"]))
        row["errors"] = [r["error"] for r in results if r.get("part") == "fanout" and r.get("config") == config
                         and not r.get("ok")][:3]
        out.append(row)
    base = next((r for r in out if r["config"] == "1 node" and r["deliveries_per_s"]), None)
    for r in out:
        if base and r["deliveries_per_s"]:
            r["vs_1_node"] = r["deliveries_per_s"] / base["deliveries_per_s"]
            if r["deliveries_per_node_cpu_s"] and base["deliveries_per_node_cpu_s"]:
                r["per_cpu_vs_1_node"] = r["deliveries_per_node_cpu_s"] / base["deliveries_per_node_cpu_s"]
    return out


# Columns compared between builds (--pushgate-src): numerator/denominator of the ratio to the baseline build.
BUILD_RATIOS = {"latency": ("p50_ms", "p99_ms"), "fanout": ("deliveries_per_s", "deliveries_per_node_cpu_s")}


def per_build(summarize: Any, part: str, results: list[dict[str, Any]],
              args: argparse.Namespace) -> list[dict[str, Any]]:
    """``summarize`` for every build (one when only this tree is measured), rows tagged with the build and,
    with several builds, the ratios of :data:`BUILD_RATIOS` against the same row of ``--baseline``."""
    names = args.build_names if len(args.build_names) > 1 else [None]
    rows: dict[Any, list[dict[str, Any]]] = {}
    for b in names:
        rows[b] = summarize([r for r in results if r.get("build") == b], args)
        for row in rows[b]:
            if b is not None:
                row["build"] = b
    base_rows = rows.get(args.baseline)
    if base_rows is not None and len(names) > 1:
        for b in names:
            for row, base in zip(rows[b], base_rows, strict=True):
                row["vs_baseline"] = [row[k] / base[k] if row.get(k) and base.get(k) else None
                                      for k in BUILD_RATIOS[part]]
    return [row for b in names for row in rows[b]]


def _vs_baseline(r: dict[str, Any], baseline: str) -> str:
    if r.get("build") == baseline:
        return "(baseline)"
    return " / ".join(f"{x:.2f}x" if x else "-" for x in r.get("vs_baseline") or [None, None])


def _build_columns(rows: list[dict[str, Any]], head: list[str], ratios: str, baseline: str) -> tuple[list[str], Any]:
    """With several builds: the table head with a build and a ratio column first, and a function giving
    a row's cells for them ("" for one build)."""
    if not any("build" in r for r in rows):
        return head, lambda r: ""
    return ([f"| build | {ratios} vs {baseline} " + head[0], "|---|---:" + head[1]],
            lambda r: f"| {r['build']} | {_vs_baseline(r, baseline)} ")


def render_latency(rows: list[dict[str, Any]], runs: int, baseline: str) -> str:
    lines, build_cells = _build_columns(rows, [
             "| placement | path | offered msg/s | delivered msg/s (in window) | p50 ms | p90 ms | p99 ms | max ms "
             "| p50 / p99 vs n1->n1 | lost | CPU µs per publication n1 (publishing) / n2 / redis "
             "| CPU % redis / n1 / n2 / client | core0 / core1 busy % | noise % | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---|"], "p50 / p99", baseline)
    for r in rows:
        pre = build_cells(r)
        if not r["runs_ok"]:
            lines.append(f"{pre}| {r['placement']} | {r['path']} | {r['rate']:,.0f} | failed "
                         f"| | | | | | | | | | | 0/{runs} |")
            continue
        c, b = r["cpu_pct"], r["core_busy_pct"]
        ratio = (f"{r['p50_vs_peer']:.2f}x / {r['p99_vs_peer']:.2f}x" if r.get("p50_vs_peer") and r.get("p99_vs_peer")
                 else "-")
        if r["kind"] == "peer" and r.get("p50_vs_peer") and abs(r["p50_vs_peer"] - 1) < 1e-9:
            ratio = "(reference)"
        sat = [f"core{k} {v}/{r['runs_ok']}" for k, v in r["saturated_runs"].items() if v]
        sat_s = f" **saturated: {', '.join(sat)}**" if sat else ""
        over = f" **overloaded** ({r['overloaded_runs']}/{r['runs_ok']})" if r["overloaded_runs"] else ""
        if r["overloaded_runs"]:
            ratio = "n/a (queueing)"
        lines.append(
            f"{pre}| {r['placement']} | {r['path']} | {r['rate']:,.0f} "
            f"| {_f(r['delivered_rate_in_window'], ',.0f')}{over} "
            f"| {_f(r['p50_ms'], '.2f')} | {_f(r['p90_ms'], '.2f')} | {_f(r['p99_ms'], '.2f')} "
            f"| {_f(r['max_ms'], '.1f')} | {ratio} | {_f(r['lost'], '.0f')} "
            f"| {_us(r, 'n1')} / {_us(r, 'n2')} / {_us(r, 'redis')} "
            f"| {_f(c['redis'], '.0f')} / {_f(c['n1'], '.0f')} / {_f(c['n2'], '.0f')} / {_f(c['client'], '.0f')} "
            f"| {_f(b['core0'], '.0f')} / {_f(b['core1'], '.0f')}{sat_s} | {_f(r['noise_pct'], '.0f')} "
            f"| {r['runs_ok']}/{runs} |")
    return "\n".join(lines)


def _us(row: dict[str, Any], name: str) -> str:
    """CPU µs per publication of process ``name`` (rows of results saved before the metric: "-")."""
    return _f((row.get("us_per_pub") or {}).get(name), ".1f")


def render_fanout(rows: list[dict[str, Any]], runs: int, baseline: str) -> str:
    lines, build_cells = _build_columns(rows, [
             "| configuration | clients | M | deliveries/s, median (min-max) | vs 1 node "
             "| deliveries per node-CPU-s | vs 1 node | frames per client read | node CPU % (sum) | redis CPU % "
             "| client CPU % | core0 / core1 busy % | noise % | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"],
        "deliveries/s / per node-CPU-s", baseline)
    for r in rows:
        pre = build_cells(r)
        if not r["deliveries_per_s"]:
            lines.append(f"{pre}| {r['config']} | | | failed: {first_error(r['errors'])} "
                         f"| | | | | | | | | | 0/{runs} |")
            continue
        c, b = r["cpu_pct"], r["core_busy_pct"]
        inc = "" if r["runs_complete"] == r["runs_ok"] else f" ({r['runs_ok'] - r['runs_complete']} incomplete)"
        lines.append(
            f"{pre}| {r['config']} ({r['label']}) | {r['clients']:,} | {r['messages']} "
            f"| {r['deliveries_per_s']:,.0f}{spread(r['deliveries_per_s_all'])} "
            f"| {_f(r.get('vs_1_node'), '.2f')}x | {_f(r['deliveries_per_node_cpu_s'], ',.0f')} "
            f"| {_f(r.get('per_cpu_vs_1_node'), '.2f')}x | {_f(r['frames_per_read'], '.2f')} "
            f"| {_f(r['node_cpu_pct_sum'], '.0f')} "
            f"| {_f(c.get('redis'), '.1f')} | {_f(c.get('client'), '.0f')} "
            f"| {_f(b['core0'], '.0f')} / {_f(b['core1'], '.0f')} | {_f(r['noise_pct'], '.0f')} "
            f"| {r['runs_ok']}/{runs}{inc} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement; medians are quoted (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 run, --duration 3, 500 clients per node, M=20")
    ap.add_argument("--only", choices=("latency", "fanout"), default=None, help="run only one part")
    # latency
    ap.add_argument("--rates", default="1000,10000", help="cross-node publish rates, msg/s (default 1000,10000)")
    ap.add_argument("--peer-rates", default="1000", help="same-node (n1->n1) reference rates (default 1000)")
    ap.add_argument("--duration", type=float, default=None, help="seconds of publishing per rate (default 10)")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of publishing before each window")
    ap.add_argument("--tick", type=float, default=0.005, help="publisher batch interval, seconds")
    ap.add_argument("--publishers", type=int, default=1,
                    help="publisher connections on n1 (round-robin); the issue's setup is 1")
    ap.add_argument("--placements", default="packed,split", help=f"from {','.join(LAT_PLACEMENTS)}")
    ap.add_argument("--channel", default="lat")
    ap.add_argument("--drain-timeout", type=float, default=60.0,
                    help="after the window, wait at most this long for outstanding deliveries")
    # fanout
    ap.add_argument("--clients-per-node", type=int, default=None, help="clients per node (default 2000)")
    ap.add_argument("--fanout-total-nodes", type=int, default=3,
                    help="single-node configs get clients-per-node x this many clients (default 3)")
    ap.add_argument("--messages", type=int, default=None, help="publications per fan-out measurement (default 100)")
    ap.add_argument("--fanout-configs", default="3x,1x,1x-memory", help=f"from {','.join(FANOUT_KEYS)}")
    ap.add_argument("--fanout-node-cpu", default="0", help="taskset CPU list for the fan-out nodes and Redis")
    ap.add_argument("--fanout-channel", default="fan")
    ap.add_argument("--data-chars", type=int, default=80, help="length of the published JSON string")
    ap.add_argument("--trigger-concurrency", type=int, default=16)
    ap.add_argument("--connect-batch", type=int, default=100)
    ap.add_argument("--connect-timeout", type=float, default=180.0)
    ap.add_argument("--deliver-timeout", type=float, default=180.0)
    ap.add_argument("--stall-seconds", type=float, default=10.0)
    # common
    ap.add_argument("--client-cpu", type=int, default=1, help="CPU the load client pins itself to")
    ap.add_argument("--quiet-wait", type=float, default=15.0,
                    help="before each cluster start wait up to this long for both CPUs to be <10%% busy (0: off)")
    ap.add_argument("--max-noise", type=float, default=15.0,
                    help="redo a measurement whose window saw more than this much CPU (%% of a core) taken by "
                         "other processes + steal")
    ap.add_argument("--noise-retries", type=int, default=2, help="redos per measurement (least noisy is used)")
    ap.add_argument("--gc-log", action="store_true",
                    help="run the latency nodes under a wrapper that logs their GC pauses; reports them per window")
    ap.add_argument("--py-spy", default=None, metavar="DIR",
                    help="profile every node with py-spy during the latency windows of run 1 (adds overhead)")
    ap.add_argument("--node-path", default="", metavar="DIR[:DIR]",
                    help="extra import path for the nodes only, after src/ (e.g. a `pip install --target` dir "
                         "with hiredis, to compare redis-py's parsers without touching the environment)")
    ap.add_argument("--pushgate-src", action="append", default=[], metavar="NAME=PATH",
                    help="also measure the pushgate build NAME, run from PATH (a repo or its src/) or git:REV of "
                    "this repo; repeatable; every cluster is then started once per build (interleaved)")
    ap.add_argument("--baseline", default="pushgate",
                    help="with --pushgate-src: the build the other builds' ratios are against (default pushgate)")
    report.add_result_options(ap, "cluster-20261122-052040")
    args = ap.parse_args(argv)
    try:
        args.builds = parse_builds(args.pushgate_src)
    except ValueError as e:
        ap.error(str(e))
    args.build_names = [b.name for b in args.builds]
    if len(args.builds) > 1 and args.baseline not in args.build_names:
        ap.error(f"--baseline {args.baseline!r} is not one of the builds {', '.join(args.build_names)}")
    args.node_paths = [p for p in args.node_path.split(os.pathsep) if p]
    report.fill_defaults(args, runs=(1, 3), duration=(3.0, 10.0), clients_per_node=(500, 2000), messages=(20, 100))
    args.rates_list = [float(x) for x in args.rates.split(",") if x.strip()]
    args.peer_rates_list = [float(x) for x in args.peer_rates.split(",") if x.strip()]
    args.placements_list = [p.strip() for p in args.placements.split(",") if p.strip()]
    for p in args.placements_list:
        if p not in LAT_PLACEMENTS:
            ap.error(f"unknown placement {p!r}")
    args.fanout_configs_list = []
    for c in args.fanout_configs.split(","):
        c = c.strip()
        if c:
            if c not in FANOUT_KEYS:
                ap.error(f"unknown fan-out config {c!r}; choose from {', '.join(FANOUT_KEYS)}")
            args.fanout_configs_list.append(FANOUT_KEYS[c])
    return args


def probe_redis_py(build: PushgateBuild, node_path: list[str]) -> str:
    """redis-py version and parser (pure Python or hiredis) as the nodes of ``build`` will import them."""
    probe = ("import redis, redis.utils as u; "
             "print(redis.__version__, 'hiredis' if u.HIREDIS_AVAILABLE else 'pure-python parser')")
    return subprocess.run([sys.executable, "-c", probe], env=build.env(node_path), capture_output=True, text=True,
                          timeout=60).stdout.strip()


async def amain(args: argparse.Namespace) -> int:
    started = time.strftime("%Y%m%d-%H%M%S")
    logdir = Path(tempfile.mkdtemp(prefix="pushgate-cluster-"))
    for b in args.builds:
        b.snapshot(logdir / f"src-{b.name}")
    this = args.builds[0]
    node_probe = probe_redis_py(this, args.node_paths)
    print(f"# nodes: redis-py {node_probe}", file=sys.stderr, flush=True)
    src_state: dict[str, Any] = {
        "git_head": git("rev-parse", "--short", "HEAD"), "src_dirty": git("status", "--short", "src"),
        "src_sha256_12": this.sha256_12, "node_redis_py": node_probe, "node_path": args.node_paths}
    if len(args.builds) > 1:
        src_state["builds"] = {b.name: b.info() | {"node_redis_py": probe_redis_py(b, args.node_paths)}
                               for b in args.builds}
    dirty = "uncommitted changes in src/" if src_state["src_dirty"] else "clean src/"
    print(f"# code under test: {src_state['git_head']} + {dirty} (snapshot {this.sha256_12})", file=sys.stderr,
          flush=True)
    for b in args.builds[1:]:
        print(f"# {b.name}: {b.describe_source()} -> {b.src} (sha256 {b.sha256_12})", file=sys.stderr, flush=True)
    print(f"# cluster bench: runs={args.runs} rates={args.rates_list} peer={args.peer_rates_list} "
          f"duration={args.duration}s placements={args.placements_list} clients/node={args.clients_per_node} "
          f"M={args.messages} fanout={args.fanout_configs_list} builds={args.build_names} logs={logdir}",
          file=sys.stderr, flush=True)
    lat_results: list[dict[str, Any]] = []
    fan_results: list[dict[str, Any]] = []
    if args.only in (None, "latency"):
        lat_results = await latency_part(args, logdir)
    if args.only in (None, "fanout"):
        fan_results = await fanout_part(args, logdir)

    doc: dict[str, Any] = {"benchmark": "cluster", "started": started, "argv": sys.argv,
                           "code_under_test": src_state,
                           "args": {k: v for k, v in vars(args).items() if k != "builds"}}
    summary, text = build_report(doc, args, lat_results, fan_results)
    print(text)
    if not args.no_save:
        try:
            import aiohttp
            import redis
            import uvloop
            versions = {"aiohttp": aiohttp.__version__, "redis-py": redis.__version__, "uvloop": uvloop.__version__,  # type: ignore[attr-defined]
                        "redis-server": subprocess.run([redis_server_binary(), "--version"], capture_output=True,
                                                       text=True, timeout=10).stdout.strip()}
        except Exception as e:  # informational only
            versions = {"error": str(e)}
        doc |= {"machine": report.machine_info(), "versions": versions, "summary": summary,
                "runs": lat_results + fan_results}
        report.save(args.out_dir, f"cluster-{started}", doc, text)
    return 0 if all(r.get("ok") for r in lat_results + fan_results) else 1


def build_report(doc: dict[str, Any], args: argparse.Namespace, lat_results: list[dict[str, Any]],
                 fan_results: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """(summary, printable markdown) of a session; also used by --render on a saved result."""
    src_state = doc.get("code_under_test") or {"git_head": (doc.get("machine") or {}).get("git_rev")}
    code = f"{src_state['git_head']}" + (" + uncommitted src/ changes" if src_state.get("src_dirty") else "")
    if src_state.get("node_redis_py"):
        code += f"; nodes' redis-py: {src_state['node_redis_py']}"
    for name, b in (src_state.get("builds") or {}).items():
        if name != args.build_names[0]:
            code += f"; {name}: {b.get('source')} (git {b.get('git')}, sha256 {b.get('sha256_12')})"
    sections = [f"## pushgate cluster benchmark ({doc['started']}, code: {code})\n",
                "Command: `" + shlex.join(["python", "bench/cluster.py", *doc["argv"][1:]]) + "`\n"]
    lat_rows = fan_rows = None
    if lat_results:
        lat_rows = per_build(summarize_latency, "latency", lat_results, args)
        sections.append("### Publish -> deliver latency (client publish over WebSocket, Redis broker)\n")
        sections.append(render_latency(lat_rows, args.runs, args.baseline) + "\n")
        sections.append("\n".join(f"- `{k}`: {v['label']}" for k, v in LAT_PLACEMENTS.items()
                                  if k in args.placements_list))
        sections.append(
            f"- latency = subscriber's `time_ns()` when the read arrived - `t` stamped by the publisher (same "
            f"process, same clock) right before its batch was built; {args.duration:g} s per rate after "
            f"{args.warmup:g} s warm-up, batches every {args.tick * 1000:g} ms, {args.publishers} publisher "
            f"connection(s); median of {args.runs} runs. lost = published - received after a drain of <= "
            f"{args.drain_timeout:g} s.\n"
            f"- delivered msg/s (in window) = messages published in the window that reached the subscriber before "
            f"it ended / window. **overloaded** (k/n runs) = below 95 % of the offered rate: the node cannot keep "
            f"up, publishes queue (in the publisher's socket and n1's WebSocket reader) and the latency columns "
            f"measure that queue, which grows with --duration; nothing is lost, it drains afterwards.\n"
            f"- noise % = CPU taken by other processes on the machine + hypervisor steal during the window, in % "
            f"of one core; a measurement above {args.max_noise:g} % was redone (up to {args.noise_retries}x), "
            f"the least noisy attempt is used.\n"
            f"- CPU µs per publication = CPU time of the process in the window / publications sent in it "
            f"(n1 is the publishing node: WebSocket read, publish, Redis, reply; n2 delivers to the subscriber).\n"
            f"- CPU % = CPU time of the process / window (100 = one core); core busy % from /proc/stat "
            f"(all processes, incl. irq); saturated = busy + steal >= {SATURATED_PCT:g} %.\n")
    if fan_results:
        fan_rows = per_build(summarize_fanout, "fanout", fan_results, args)
        sections.append("### Fan-out: deliveries/s on one channel\n")
        sections.append(render_fanout(fan_rows, args.runs, args.baseline) + "\n")
        fb = next((r["frame_payload_bytes"] for r in fan_rows if r.get("frame_payload_bytes")), None)
        sections.append(
            f"- deliveries/s = clients x M / (first `POST /api/publish` on n1 -> last client got its M-th "
            f"`message` frame); {args.trigger_concurrency} triggers in flight; data = a {args.data_chars}-char "
            f"JSON string (frame payload {fb} bytes); median of {args.runs} runs (min-max).\n"
            f"- nodes and Redis pinned to CPU {args.fanout_node_cpu}, load client to CPU {args.client_cpu}: the "
            f"3-node cluster gets the same CPU as the single node, so the table shows the cost of clustering "
            f"on one core, and deliveries per node-CPU-s what one node contributes per core it is given.\n")
    if len(args.build_names) > 1:
        sections.append(f"- builds (interleaved: run 1 of every build, then run 2, ...): "
                        f"{', '.join(args.build_names)}; ratios against {args.baseline}.\n")
    return {"latency": lat_rows, "fanout": fan_rows}, "\n".join(sections)


def saved_tables(doc: dict[str, Any], sargs: argparse.Namespace) -> str:
    """--render: the report of a saved session."""
    runs = doc["runs"]
    _, text = build_report(doc, sargs, [r for r in runs if r.get("part") == "latency"],
                           [r for r in runs if r.get("part") == "fanout"])
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return report.render_saved(args.render, lambda: parse_args([]), saved_tables)
    return run_load_client(lambda: amain(args), args.client_cpu)


if __name__ == "__main__":
    sys.exit(main())
