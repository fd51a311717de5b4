#!/usr/bin/env python3
"""Steady-stream latency: a paced publisher, N subscribers, a ladder of rates per server.

Fan-out throughput (fanout.py) measures bursts; real traffic is mostly a steady stream, where a
server that batches only under overload still pays one write per frame per socket and where a
garbage-collection pause shows up directly as tail latency. For every target and every N:

* a fresh server (pinned to ``--server-cpu``), N clients of the C load client (bench/lib/cload.c,
  pinned to ``--client-cpu``) and its publisher on the same core: ``POST /api/broadcast`` over
  keep-alive HTTP/1.1 connections (``--pub-conns``, 16; each request to the least busy), paced at
  R requests/s (timer ticks, catch-up), each body stamped ``"t": CLOCK_REALTIME ns``;
* for each rate R of the ladder (ascending): R x ``--seconds`` messages; latency = the kernel's
  receive timestamp in the client's socket - the stamp, for every (message, client), so the client's
  own queueing behind other sockets does not count (it is reported apart); the level ends when
  every client has every message or nothing arrived for ``--stall`` seconds;
* reported per level: delivered/s, p50/p99/max latency, loss (N x sent - received), server and
  client CPU %, the publisher's worst lateness, and for pushgate the longest GC pause of the level
  (``/metrics``, bench/lib/gcpause.py). A level *passes* with p99 <= ``--p99-limit`` ms (50) and no
  loss; the ladder stops at an overloaded level (loss, delivered < 80 % of offered, p99 > 1 s) or
  after two failing levels in a row (higher rates would only queue more).

Tables: the ladder (medians over runs), the highest passing rate per target and N with ratios
against the peers in the same run (median of the per-run ratios), and the N=5k, 10 msg/s p99 row.

Examples::

    python bench/steady.py                              # the issue's tables: ~15 min on a quiet machine
    python bench/steady.py --quick                      # 1 run, N=1000, 3 rates: ~1.5 min
    python bench/steady.py --targets pushgate,uws --ladder "5000=10" --runs 5
    python bench/steady.py --targets pushgate --pushgate-src before=git:HEAD~1 --baseline before

Results: ``bench/results/steady-<timestamp>.md``, ``.summary.json``, ``raw/steady-<timestamp>.json.gz``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import gcpause, report
from lib.cload import CLoad, CLoadError
from lib.meter import CoreWindow, cpu_seconds, cpu_split, wait_for_quiet
from lib.report import cell as _f
from lib.servers import HOST, REPO_DIR, Proc, apply_nice, free_port, parse_builds, run_load_client
from lib.targets import CLOAD_UNSUPPORTED, PEERS, Target, place_builds, resolve_targets

DEFAULT_TARGETS = "pushgate,node-ws,uws,aiohttp,socketio"
DEFAULT_LADDER = "1000=10,50,100,200,500,1000,2000;5000=10,50,100,200"
QUICK_LADDER = "1000=10,100,500"


# --------------------------------------------------------------------------------------------
# One ladder: a fresh server, N clients, every rate
# --------------------------------------------------------------------------------------------


async def scrape_gc(session: Any, port: int) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://{HOST}:{port}/metrics") as r:
            return gcpause.parse(await r.text()) if r.status == 200 else None
    except Exception:
        return None


async def level(cl: CLoad, server: Proc, target: Target, session: Any, port: int, n: int, rate: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """One rate: publish rate x seconds paced messages, wait for all of them, read the client's stats."""
    count = max(args.min_messages, round(rate * args.seconds))
    gc0 = await scrape_gc(session, port) if target.is_pushgate else None
    await cl.cmd("reset")
    srv0 = cpu_seconds(server.pid)
    split0 = cpu_split(server.pid)
    cores = CoreWindow((args.server_cpu, args.client_cpu))
    t0 = time.time_ns()
    pub = asyncio.ensure_future(cl.cmd("publish", rate, count, timeout=count / rate + args.drain + 60))
    w = await cl.cmd("wait", count, count / rate + args.drain, args.stall, timeout=count / rate + args.drain + 60)
    if not pub.done():  # wait stalled before the publisher finished: give it a moment, then read anyway
        await asyncio.wait([pub], timeout=5)
    if not pub.done():
        pub.cancel()  # the stats below carry what the publisher sent and got back
    st = await cl.cmd("stats")
    t1 = time.time_ns()
    srv = cpu_seconds(server.pid) - srv0
    split1 = cpu_split(server.pid)
    cores.stop()
    gc1 = await scrape_gc(session, port) if target.is_pushgate else None
    window = max(1e-9, ((st["t_last_ns"] or t1) - t0) / 1e9)
    el = (t1 - t0) / 1e9
    sent = st["pub"]["sent"]
    lat = st["lat"]
    loss = n * sent - st["frames"]
    res: dict[str, Any] = {
        "rate": rate, "messages": count, "sent": sent, "pub_ok": st["pub"]["ok"], "pub_errors": st["pub"]["errors"],
        "pub_lag_max_ms": round(st["pub"]["lag_max_us"] / 1000, 2),
        "offered_per_s": rate * n, "delivered": st["frames"], "expected": n * sent, "loss": loss,
        "delivered_per_s": round(st["frames"] / window, 1),
        "p50_ms": round(lat["p50_us"] / 1000, 3), "p90_ms": round(lat["p90_us"] / 1000, 3),
        "p99_ms": round(lat["p99_us"] / 1000, 3), "p999_ms": round(lat["p999_us"] / 1000, 3),
        "max_ms": round(lat["max_us"] / 1000, 3), "mean_ms": round(lat["mean_us"] / 1000, 3),
        # what an application reading these sockets would see, and the client's own share of it
        "read_p50_ms": round(st["lat_read"]["p50_us"] / 1000, 3),
        "read_p99_ms": round(st["lat_read"]["p99_us"] / 1000, 3),
        "client_queue_p99_ms": round(st["client_queue"]["p99_us"] / 1000, 3),
        "client_queue_max_ms": round(st["client_queue"]["max_us"] / 1000, 3),
        "reads_without_timestamp": st["reads_without_timestamp"],
        "server_cpu_pct": round(100 * srv / el, 1), "client_cpu_pct": round(100 * st["cpu_s"] / el, 1),
        "server_us_per_delivery": round(1e6 * srv / st["frames"], 3) if st["frames"] else None,
        "client_us_per_delivery": round(1e6 * st["cpu_s"] / st["frames"], 3) if st["frames"] else None,
        "frames_per_read": round(st["frames"] / st["reads"], 2) if st["reads"] else None,
        "closed_by_server": st["closed_by_server"], "lost_connections": st["lost"],
        "wait": {k: w.get(k) for k in ("done", "reason", "clients_done", "open")},
        "elapsed_s": round(el, 3),
        "server_user_pct": round(100 * (split1[0] - split0[0]) / el, 1),
        "server_sys_pct": round(100 * (split1[1] - split0[1]) / el, 1),
        "server_core_softirq_pct": round(100 * cores.seconds(args.server_cpu, 3) / el, 1),
        "server_cpu_other_pct": round(100 * (cores.seconds(args.server_cpu, 0) - srv) / el, 1),
        "server_cpu_steal_pct": round(100 * cores.seconds(args.server_cpu, 2) / el, 1),
        "client_core_busy_pct": round(100 * cores.seconds(args.client_cpu, 0) / el, 1),
    }
    res["noise_pct"] = max(0.0, round(res["server_cpu_other_pct"] + res["server_cpu_steal_pct"], 1))
    if target.is_pushgate:
        res["gc"] = gcpause.window(gc0, gc1)
    res["passed"] = bool(loss == 0 and sent == count and not res["pub_errors"] and res["p99_ms"] <= args.p99_limit
                         and not st["lost"] and not st["closed_by_server"])
    return res


async def ladder(target: Target, n: int, rates: list[int], args: argparse.Namespace, logdir: Path,
                 run: int) -> dict[str, Any]:
    import aiohttp

    res: dict[str, Any] = {"target": target.name, "clients": n, "run": run, "levels": []}
    port = free_port()
    server = Proc(target.name, target.command(port, port), str(args.server_cpu), logdir, env=target.env(),
                  cwd=str(REPO_DIR), nice=args.nice, log_name=f"{target.name}-{port}.log")
    cl = CLoad(port, args.client_cpu, path=target.ws_path, proto=target.proto, payload=args.payload_bytes,
               pub_conns=args.pub_conns)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            if args.quiet_wait > 0:
                res["waited_for_quiet_s"] = await wait_for_quiet((args.server_cpu, args.client_cpu), 10.0,
                                                                 args.quiet_wait)
            server.start()
            await server.wait_http_ok(session, [f"http://{HOST}:{port}/healthz"])
            await cl.start()
            srv0 = cpu_seconds(server.pid)
            con = await cl.connect(n, args.connect_batch, args.connect_timeout)
            res["connect_s"] = round(con["seconds"], 3)
            res["server_us_per_connect"] = round(1e6 * (cpu_seconds(server.pid) - srv0) / n, 1)
            # Warm-up: JIT, lazily built machinery and the first GCs of a fresh process are not charged
            # to the first level. At no more than the first level's rate: a faster warm-up leaves a
            # transient the first level would measure instead of its own steady state (a server that
            # batched the warm-up's frames -- pushgate, raw-coalesce -- wrote 5,000 sockets up to 40 %
            # slower for the next ~1.3 s, the kernel's doing: measured in docs/performance.md).
            warm_rate = min(50, rates[0])
            await cl.cmd("reset")
            warm = asyncio.ensure_future(cl.cmd("publish", warm_rate, 20))
            await cl.cmd("wait", 20, 20 / warm_rate + 10, 3)
            await asyncio.wait_for(warm, 20 / warm_rate + 30)
            fails = 0
            for rate in rates:
                lv = await level(cl, server, target, session, port, n, rate, args)
                res["levels"].append(lv)
                report_level(target.name, n, run, lv)
                if not server.alive():
                    raise RuntimeError(f"server exited during the {rate}/s level:\n{server.log_tail()}")
                fails = 0 if lv["passed"] else fails + 1
                if not args.keep_going and (overloaded(lv, n) or fails >= args.stop_after_fails):
                    res["stopped_after"] = rate
                    break
                await asyncio.sleep(args.pause)
            res["ok"] = True
        except (Exception, CLoadError) as e:
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            res["server_log_tail"] = server.log_tail()
            print(f"  run {run} N={n} {target.name}: FAILED {res['error']}", file=sys.stderr, flush=True)
        finally:
            await cl.stop()
            server.stop(timeout=5)
    return res


def overloaded(lv: dict[str, Any], n: int) -> bool:
    """A level the server clearly could not carry: messages lost, or delivered well below offered.

    Such a level ends the ladder at once (a higher rate only queues more); a level that merely
    missed the p99 limit -- on a shared machine often one stall -- does not, unless it is the
    ``--stop-after-fails``-th in a row."""
    return bool(lv["loss"] > 0 or lv["delivered_per_s"] < 0.8 * lv["rate"] * n or lv["p99_ms"] > 1000)


def report_level(name: str, n: int, run: int, lv: dict[str, Any]) -> None:
    gc = f" gc {gcpause.describe(lv['gc'])}ms" if "gc" in lv else ""
    print(f"  run {run} N={n:<5} {name:<9} {lv['rate']:>6}/s  {lv['delivered_per_s']:>11,.0f} dlv/s  "
          f"p50 {lv['p50_ms']:7.2f}  p99 {lv['p99_ms']:8.2f}  max {lv['max_ms']:8.2f} ms "
          f"(cli queue p99 {lv['client_queue_p99_ms']:.2f})  loss {lv['loss']:>7}  "
          f"srv {lv['server_cpu_pct']:5.1f}% (usr {lv['server_user_pct']:.1f} sys {lv['server_sys_pct']:.1f} "
          f"sirq {lv['server_core_softirq_pct']:.1f})  cli {lv['client_cpu_pct']:5.1f}%  "
          f"lag {lv['pub_lag_max_ms']:.1f}ms "
          f"noise {lv['noise_pct']:.0f}%{gc}  {'ok' if lv['passed'] else 'FAIL'}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Summaries and tables
# --------------------------------------------------------------------------------------------


def highest_passing(lad: dict[str, Any]) -> int | None:
    """The highest rate of a ladder that passed (0: none did; None: the ladder failed to run)."""
    if not lad.get("ok"):
        return None
    return max((lv["rate"] for lv in lad["levels"] if lv["passed"]), default=0)


def summarize(results: list[dict[str, Any]], targets: list[str], ladders: dict[int, list[int]],
              runs: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    best: dict[str, Any] = {}
    for n, rates in ladders.items():
        for t in targets:
            lads = [r for r in results if r["target"] == t and r["clients"] == n]
            hp = [highest_passing(r) for r in lads]
            best[f"{t}@{n}"] = {"target": t, "clients": n, "highest_rate_all": hp,
                                "highest_rate": report.median(hp),
                                "errors": [r["error"] for r in lads if not r.get("ok")][:3],
                                "server_us_per_connect": report.med(lads, "server_us_per_connect")}
            for rate in rates:
                lvs = [lv for r in lads for lv in r["levels"] if lv["rate"] == rate]
                if not lvs:
                    continue
                row = {"target": t, "clients": n, "rate": rate, "runs": len(lvs),
                       "passed": sum(1 for lv in lvs if lv["passed"]),
                       "loss_max": max(lv["loss"] for lv in lvs),
                       "max_ms_worst": max(lv["max_ms"] for lv in lvs),
                       "p99_ms_all": [lv["p99_ms"] for lv in lvs]}
                for k in ("delivered_per_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_pct", "client_cpu_pct",
                          "pub_lag_max_ms", "noise_pct", "frames_per_read", "server_us_per_delivery",
                          "client_us_per_delivery", "read_p99_ms", "client_queue_p99_ms", "server_user_pct",
                          "server_sys_pct", "server_core_softirq_pct"):
                    row[k] = report.med(lvs, k)
                gcs = [lv["gc"] for lv in lvs if lv.get("gc")]
                if gcs:
                    les = [g.get("longest_ms_le") for g in gcs if g.get("collections")]
                    row["gc_longest_ms_le_worst"] = (max(x if x is not None else float("inf") for x in les)
                                                     if les else 0.0)
                    row["gc_collections"] = report.median([g.get("collections") for g in gcs])
                    gauges = [g.get("max_since_start_ms") for g in gcs if g.get("max_since_start_ms") is not None]
                    row["gc_max_since_start_ms"] = max(gauges) if gauges else None
                rows[f"{t}@{n}@{rate}"] = row
    # ratios against peers in the same run (median of per-run ratios)
    ratios: dict[str, Any] = {}
    for n in ladders:
        for t in targets:
            for peer in targets:
                if peer == t:
                    continue
                per_run_best, per_run_p99 = [], []
                for run in range(1, runs + 1):
                    a = next((r for r in results if r["target"] == t and r["clients"] == n and r["run"] == run), None)
                    b = next((r for r in results if r["target"] == peer and r["clients"] == n and r["run"] == run),
                             None)
                    if not a or not b:
                        continue
                    ha, hb = highest_passing(a), highest_passing(b)
                    if ha is not None and hb:
                        per_run_best.append(ha / hb)
                    pa = next((lv["p99_ms"] for lv in a.get("levels", []) if lv["rate"] == 10), None)
                    pb = next((lv["p99_ms"] for lv in b.get("levels", []) if lv["rate"] == 10), None)
                    if pa is not None and pb:
                        per_run_p99.append(pa / pb)
                ratios[f"{t}/{peer}@{n}"] = {"highest_rate": report.median(per_run_best),
                                             "p99_at_10": report.median(per_run_p99)}
    return {"levels": rows, "best": best, "ratios": ratios}


def ratio_cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def gc_cell(row: dict[str, Any]) -> str:
    if "gc_longest_ms_le_worst" not in row:
        return ""
    v = row["gc_longest_ms_le_worst"]
    cell = "no GC" if v == 0 else ("> 1000" if v == float("inf") else f"≤ {v:g}")
    if row.get("gc_max_since_start_ms") is not None:
        cell += f" ({row['gc_max_since_start_ms']:.1f})"
    return cell


def render(summary: dict[str, Any], targets: list[str], ladders: dict[int, list[int]], args: argparse.Namespace,
           started: str, notes: list[str]) -> str:
    levels, best, ratios = summary["levels"], summary["best"], summary["ratios"]
    peers = [p for p in ("node-ws", "uws", getattr(args, "baseline", None)) if p and p in targets]
    peers = list(dict.fromkeys(peers))
    out = [f"## pushgate steady-stream latency ({started})", ""]
    # 1. highest rate passing
    hdr = (f"| N | target | highest rate with p99 ≤ {args.p99_limit:g} ms, no loss: msgs/s (deliveries/s) "
           "| per run |" + "".join(f" vs {p} |" for p in peers) + " server µs/connect |")
    out += ["**Highest steady rate** (median over runs; ratios: median of the per-run ratios)", "", hdr,
            "|---:|---|---:|---|" + "---:|" * len(peers) + "---:|"]
    for n in ladders:
        top = max(ladders[n])
        for t in targets:
            b = best[f"{t}@{n}"]
            hr = b["highest_rate"]
            if hr is None:
                out.append(f"| {n} | {t} | failed: {report.first_error(b['errors'])} | | " + "| " * len(peers) + "|")
                continue
            ge = "≥ " if hr == top else ""
            per = ", ".join("-" if x is None else str(x) for x in b["highest_rate_all"])
            rs = "".join(f" {ratio_cell(ratios.get(f'{t}/{p}@{n}', {}).get('highest_rate'))} |" if p != t else " |"
                         for p in peers)
            out.append(f"| {n} | {t} | {ge}{hr:,.0f} ({ge}{hr * n:,.0f}) | {per} |{rs} "
                       f"{_f(b['server_us_per_connect'], ',.0f')} |")
    # 2. the N=5k, 10 msg/s row
    n5 = [n for n in ladders if 10 in ladders[n]]
    if n5:
        out += ["", "**p99 at 10 msgs/s** (median over runs; ratio: median of per-run ratios)", "",
                "| N | target | p50 ms | p99 ms | max ms (worst run) | loss | GC longest ms |"
                + "".join(f" p99 vs {p} |" for p in peers),
                "|---:|---|---:|---:|---:|---:|---|" + "---:|" * len(peers)]
        for n in n5:
            for t in targets:
                row = levels.get(f"{t}@{n}@10")
                if not row:
                    continue
                rs = "".join(f" {ratio_cell(ratios.get(f'{t}/{p}@{n}', {}).get('p99_at_10'))} |" if p != t else " |"
                             for p in peers)
                out.append(f"| {n} | {t} | {_f(row['p50_ms'], '.2f')} | {_f(row['p99_ms'], '.2f')} "
                           f"| {row['max_ms_worst']:.1f} | {row['loss_max']} | {gc_cell(row)} |{rs}")
    # 3. the ladder
    out += ["", "**Every level** (median over the runs that reached it)", "",
            "| N | target | msgs/s | offered dlv/s | delivered/s | p50 ms | p99 ms | max ms | loss (max) "
            "| server CPU % (user / sys; core softirq) | client CPU % | frames/read | client queue p99 ms "
            "| p99 at read ms | publisher lag ms "
            "| GC longest ms | noise % | passed |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for n, rates in ladders.items():
        for t in targets:
            for rate in rates:
                row = levels.get(f"{t}@{n}@{rate}")
                if not row:
                    continue
                cb = " ‡" if (row["client_cpu_pct"] or 0) >= 90 else ""
                out.append(
                    f"| {n} | {t} | {rate:,} | {rate * n:,} | {_f(row['delivered_per_s'], ',.0f')}{cb} "
                    f"| {_f(row['p50_ms'], '.2f')} | {_f(row['p99_ms'], '.2f')} | {_f(row['max_ms'], '.1f')} "
                    f"| {row['loss_max']:,} | {_f(row['server_cpu_pct'], '.0f')} "
                    f"({_f(row.get('server_user_pct'), '.0f')} / "
                    f"{_f(row.get('server_sys_pct'), '.0f')}; {_f(row.get('server_core_softirq_pct'), '.0f')}) "
                    f"| {_f(row['client_cpu_pct'], '.0f')} "
                    f"| {_f(row['frames_per_read'], '.1f')} | {_f(row['client_queue_p99_ms'], '.2f')} "
                    f"| {_f(row['read_p99_ms'], '.2f')} | {_f(row['pub_lag_max_ms'], '.1f')} | {gc_cell(row)} "
                    f"| {_f(row['noise_pct'], '.0f')} | {row['passed']}/{row['runs']} |")
    return "\n".join(out) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"


def notes_for(args: argparse.Namespace, versions: dict[str, str], builds: dict[str, Any],
              skipped: dict[str, str]) -> list[str]:
    notes = [
        "latency = arrival in the client's socket (kernel receive timestamp, SO_TIMESTAMPNS) - the publisher's "
        "stamp (both CLOCK_REALTIME), every (message, client): the client's own queueing is excluded and shown "
        "apart (client queue = read - arrival; p99 at read = what a reading application sees); "
        f"{args.seconds:g} s per level (at least {args.min_messages} messages), rates ascending on one server "
        f"per (target, N, run); a level passes with p99 ≤ {args.p99_limit:g} ms and no loss; highest rate = the "
        "highest passing level; the ladder stops at an overloaded level (loss, delivered < 80 % of offered, "
        f"p99 > 1 s) or after {args.stop_after_fails} failing levels in a row"
        + (" (--keep-going: it did not)" if args.keep_going else "") + ".",
        f"publisher: POST /api/broadcast over {args.pub_conns} keep-alive HTTP/1.1 connections (each request to "
        "the one with the fewest in flight, pipelined only when all are busy), paced by a timer with catch-up, "
        "in the C load client (bench/lib/cload.c); publisher lag = its worst "
        "lateness against the schedule (large lag = the trigger, not the server, was late).",
        f"server pinned to CPU {args.server_cpu}; the C client (N sockets + publisher) to CPU {args.client_cpu}. "
        "CPU % = CPU time / level wall time (100 = one core). ‡ = client CPU ≥ 90 %: may be client-bound. "
        "User / sys: the server process's split (/proc/PID/stat, sampled at the clock tick: rough); core softirq: "
        "the server core's softirq time, mostly the loopback receive work its writes trigger, charged to no "
        "process.",
        "GC longest = pushgate's longest collection in the level, as the bucket bound of "
        "pushgate_gc_pause_seconds (worst run); in parentheses pushgate_gc_pause_max_seconds (since start) "
        "when the server exports it.",
        "server µs/connect = server CPU while the N clients connected / N (handshakes + welcome).",
        "noise % = other processes + steal on the server's core during the level (not redone: check it).",
        "versions: " + "; ".join(versions.values()) + (
            " (pushgate builds: " + "; ".join(f"{k} = {v.get('source')} sha256 {v.get('sha256_12')}"
                                              f"{', git ' + v['git'] if v.get('git') else ''}"
                                              for k, v in builds.items()) + ")" if builds else "") + ".",
    ]
    if skipped:
        notes.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    return notes


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_ladder(spec: str) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        n, _, rates = part.partition("=")
        out[int(n)] = sorted({int(x) for x in rates.split(",") if x.strip()})
    return out


def estimate_minutes(args: argparse.Namespace, ntargets: int) -> float:
    """Upper bound: every level run (no early stop), plus start-up and connects."""
    per = sum(3.0 + n / 2000 + sum(max(args.seconds, args.min_messages / r) + 1.5 + args.pause for r in rates)
              for n, rates in args.ladders.items())
    return float(args.runs * ntargets * per / 60)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ladder", default=None,
                    help=f"N=rate,rate;N=... msgs/s per client count (default {DEFAULT_LADDER!r}; "
                    f"--quick {QUICK_LADDER!r})")
    ap.add_argument("--clients", default=None, help="only these N of the ladder (comma-separated)")
    ap.add_argument("--runs", type=int, default=None, help="runs per (target, N) (default 3, --quick 1)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per level (default 3)")
    ap.add_argument("--min-messages", type=int, default=50, help="at least this many messages per level")
    ap.add_argument("--p99-limit", type=float, default=50.0, help="a level passes with p99 at most this (ms)")
    ap.add_argument("--keep-going", action="store_true", help="run every rate even after failing levels")
    ap.add_argument("--stop-after-fails", type=int, default=2,
                    help="stop a ladder after this many failing levels in a row (an overloaded level -- loss, "
                    "delivered < 80%% of offered, p99 > 1 s -- stops it at once)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma-separated, from pushgate,{','.join(p for p in PEERS if p not in CLOAD_UNSUPPORTED)} "
                    "and the --pushgate-src names")
    ap.add_argument("--pushgate-src", action="append", default=[], metavar="NAME=PATH",
                    help="another pushgate build as target NAME (a repo, its src/, or git:REV); repeatable")
    ap.add_argument("--baseline", default=None,
                    help="one more ratio column against this target (e.g. the older build of --pushgate-src)")
    ap.add_argument("--quick", action="store_true", help=f"1 run, ladder {QUICK_LADDER!r}")
    ap.add_argument("--payload-bytes", type=int, default=100, help="approximate size of a message body")
    ap.add_argument("--pub-conns", type=int, default=16,
                    help="publisher HTTP connections; each request goes to the one with the fewest in flight "
                    "(default 16: over one connection an HTTP/1.1 server answers pipelined requests one after "
                    "another -- pushgate ~130 broadcasts/s at N=1k, uWS slower still -- so the trigger, not the "
                    "fan-out, would be measured)")
    ap.add_argument("--drain", type=float, default=10.0, help="max seconds after the last publish to wait")
    ap.add_argument("--stall", type=float, default=3.0, help="a level ends after this long without a frame")
    ap.add_argument("--pause", type=float, default=0.5, help="idle seconds between levels")
    ap.add_argument("--connect-batch", type=int, default=100)
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each ladder wait up to this long for both CPUs to be <10%% busy (default 60, "
                    "--quick 5; 0: off)")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--live-src", action="store_true")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    report.add_result_options(ap, "steady-20261201-180000")
    args = ap.parse_args(argv)
    report.fill_defaults(args, runs=(1, 3), quiet_wait=(5.0, 60.0), ladder=(QUICK_LADDER, DEFAULT_LADDER))
    args.ladders = parse_ladder(args.ladder)
    if args.clients:
        keep = {int(x) for x in args.clients.split(",") if x.strip()}
        args.ladders = {n: r for n, r in args.ladders.items() if n in keep}
    if not args.ladders:
        ap.error("empty ladder")
    args.targets_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        args.builds = parse_builds(args.pushgate_src)
    except ValueError as e:
        ap.error(str(e))
    place_builds(ap, args.targets_list, args.builds)
    return args


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="pushgate-steady-"))
    all_targets, targets, skipped = resolve_targets(args.targets_list, args.builds, logdir, live=args.live_src,
                                                    unsupported=CLOAD_UNSUPPORTED)
    builds = {b.name: b for b in args.builds if b.name in targets}
    if not targets:
        return 2
    versions = {t: all_targets[t].version() for t in targets}
    started = time.strftime("%Y%m%d-%H%M%S")
    cmdline = "python bench/steady.py " + " ".join(argv)
    print(f"# steady: targets={','.join(targets)} ladder={args.ladders} runs={args.runs} "
          f"(at most ~{estimate_minutes(args, len(targets)):.0f} min; less when ladders stop early) logs={logdir}",
          file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for n, rates in args.ladders.items():
            for t in targets:
                results.append(await ladder(all_targets[t], n, rates, args, logdir, run))
    build_info = {b.name: b.info() for b in builds.values()}
    summary = summarize(results, targets, args.ladders, args.runs)
    notes = [f"command: `{cmdline.strip()}`", *notes_for(args, versions, build_info, skipped)]
    text = render(summary, targets, args.ladders, args, started, notes)
    print(text)
    if not args.no_save:
        doc = {"benchmark": "steady", "started": started, "command": cmdline.strip(),
               "args": {k: v for k, v in vars(args).items() if k not in ("builds", "ladders")},
               "ladders": {str(n): r for n, r in args.ladders.items()}, "targets": targets,
               "machine": report.machine_info(), "versions": versions, "pushgate_src": build_info,
               "skipped": skipped, "summary": summary, "runs": results}
        report.save(args.out_dir, f"steady-{started}", doc, text)
    return 0 if all(r.get("ok") for r in results) else 1


def saved_tables(doc: dict[str, Any], sargs: argparse.Namespace) -> str:
    """--render: the tables of a saved session with the current table code."""
    ladders = {int(n): r for n, r in doc["ladders"].items()}
    targets = doc["targets"]
    summary = summarize(doc["runs"], targets, ladders, sargs.runs)
    notes = [f"command: `{doc.get('command', '?')}`",
             *notes_for(sargs, doc["versions"], doc.get("pushgate_src") or {}, doc.get("skipped", {}))]
    return render(summary, targets, ladders, sargs, doc["started"], notes)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render:
        return report.render_saved(args.render, lambda: parse_args([]), saved_tables)
    args.nice = apply_nice(args.nice)
    return run_load_client(lambda: amain(args, argv), args.client_cpu)


if __name__ == "__main__":
    sys.exit(main())
