#!/usr/bin/env python3
"""Connection scale: what each connection costs a server, at 10k and 19k connections.

This machine caps open files at 20,000 per process, so 19k is the most one load process can hold
(the C client, bench/lib/cload.c, holds all sockets; the server's RLIMIT_NOFILE is raised by
lib/servers.py's Proc). For every target, N and run, on a fresh server pinned to ``--server-cpu``:

* **connect rate** -- N WebSocket handshakes (``--connect-batch`` in flight at a time, sliding), each
  counted when its welcome frame arrives: N / wall time;
* **server CPU per accepted connection** -- server CPU seconds during that connect phase / N;
* **RSS per connection** -- (VmRSS after N idle connections - VmRSS after a warm-up that connected,
  broadcast to and closed 10 clients) / N;
* **idle CPU** -- server CPU % during ``--idle-seconds`` of N idle connections (timers, heartbeats if
  one falls in the window);
* **one broadcast to all** -- ``--broadcasts`` single ``POST /api/broadcast`` (one at a time): from the
  stamp in the body to the arrival (kernel receive timestamp) of the *last* of the N copies;
  median over the broadcasts, p50 alongside;
* **longest GC pause** (pushgate) -- over the connect phase and the whole run (lib/gcpause.py);
* **heartbeat cost** (pushgate, ``--heartbeat-seconds``): a separate server with ``--ping-interval 1``
  and the largest N; server CPU over the window / pings sent = CPU per ping (and pong read).

From the per-connection costs the report projects one node at 100k and 1M connections: memory,
cores busy with heartbeats at the default 25 s ping interval, time for one core to accept them all
(a reconnect storm) and for one broadcast to reach them all (linear in N, one core).

Examples::

    python bench/scale.py                                  # N=10k,19k; pushgate,node-ws,uws,aiohttp; 3 runs
    python bench/scale.py --quick                          # 1 run, N=2000: a smoke test (~1 min)
    python bench/scale.py --targets pushgate --pushgate-src before=git:HEAD~1

Results: ``bench/results/scale-<timestamp>.md``, ``.summary.json``, ``raw/scale-<timestamp>.json.gz``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import gcpause, report
from lib.cload import CLoad
from lib.meter import cpu_seconds, rss_kb, wait_for_quiet
from lib.report import cell as _f
from lib.servers import HOST, REPO_DIR, Proc, apply_nice, free_port, parse_builds, run_load_client
from lib.targets import CLOAD_UNSUPPORTED, Target, place_builds, resolve_targets

DEFAULT_TARGETS = "pushgate,node-ws,uws,aiohttp"
DEFAULT_PING_INTERVAL = 25.0  # pushgate's default ping_interval (config.py)


async def scrape_gc(session: Any, port: int) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://{HOST}:{port}/metrics") as r:
            return gcpause.parse(await r.text()) if r.status == 200 else None
    except Exception:
        return None


async def settle_cpu(pid: int, start: float, limit: float) -> float:
    """Server CPU seconds since ``start`` once the server has been idle for 0.5 s (bounded by ``limit``)."""
    last, quiet_since = cpu_seconds(pid), time.perf_counter()
    deadline = quiet_since + limit
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.1)
        now = cpu_seconds(pid)
        if now - last > 0.005:
            last, quiet_since = now, time.perf_counter()
        elif time.perf_counter() - quiet_since >= 0.5:
            break
    return last - start


async def measure(target: Target, n: int, args: argparse.Namespace, logdir: Path, run: int,
                  heartbeat: bool = False) -> dict[str, Any]:
    """One fresh server, N connections: connect, memory, idle CPU, broadcasts (or, with ``heartbeat``,
    only the idle CPU of a server pinging every second)."""
    import aiohttp

    res: dict[str, Any] = {"target": target.name, "clients": n, "run": run, "heartbeat": heartbeat}
    port = free_port()
    server = Proc(target.name, target.command(port, port), str(args.server_cpu), logdir, env=target.env(),
                  cwd=str(REPO_DIR), nice=args.nice, log_name=f"{target.name}-{port}.log")
    cl = CLoad(port, args.client_cpu, path=target.ws_path, proto=target.proto)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            if args.quiet_wait > 0:
                res["waited_for_quiet_s"] = await wait_for_quiet((args.server_cpu, args.client_cpu), 10.0,
                                                                 args.quiet_wait)
            server.start()
            await server.wait_http_ok(session, [f"http://{HOST}:{port}/healthz"])
            await cl.start()
            # Warm-up: a few clients, one broadcast, closed again -- lazily allocated machinery is not
            # charged to the connections.
            await cl.connect(10, 10, 20)
            warm = asyncio.ensure_future(cl.cmd("publish", 0, 1))
            await cl.cmd("wait", 1, 10, 3)
            await asyncio.wait_for(warm, 30)
            await cl.cmd("close")
            await asyncio.sleep(0.5)
            gc0 = await scrape_gc(session, port) if target.is_pushgate else None
            rss0 = rss_kb(server.pid)
            srv0 = cpu_seconds(server.pid)
            con = await cl.connect(n, args.connect_batch, args.connect_timeout)
            srv_connect = cpu_seconds(server.pid) - srv0
            gc1 = await scrape_gc(session, port) if target.is_pushgate else None
            res.update(connect_s=round(con["seconds"], 3), connects_per_s=round(n / con["seconds"], 1),
                       server_us_per_connect=round(1e6 * srv_connect / n, 1),
                       server_cpu_connect_pct=round(100 * srv_connect / con["seconds"], 1))
            await asyncio.sleep(1.0)  # let the last handshakes' garbage settle before reading memory
            rss1 = rss_kb(server.pid)
            res.update(rss_before_kb=rss0, rss_idle_kb=rss1, kb_per_conn=round((rss1 - rss0) / n, 3))
            idle_s = args.heartbeat_seconds if heartbeat else args.idle_seconds
            c0, t0 = cpu_seconds(server.pid), time.perf_counter()
            await cl.cmd("reset")
            await asyncio.sleep(idle_s)
            st = await cl.cmd("stats")
            idle_cpu, el = cpu_seconds(server.pid) - c0, time.perf_counter() - t0
            res.update(idle_cpu_pct=round(100 * idle_cpu / el, 2),
                       idle_us_per_conn_s=round(1e6 * idle_cpu / el / n, 4), pings_in_idle=st["pings"])
            if heartbeat:
                res["server_us_per_ping"] = round(1e6 * idle_cpu / st["pings"], 2) if st["pings"] else None
            else:
                reach = []
                for _ in range(args.broadcasts):
                    await cl.cmd("reset")
                    b0 = cpu_seconds(server.pid)
                    pub = asyncio.ensure_future(cl.cmd("publish", 0, 1))
                    w = await cl.cmd("wait", 1, args.broadcast_timeout, 5)
                    await asyncio.wait_for(pub, 30)
                    bst = await cl.cmd("stats")
                    reach.append({"done": bool(w["done"]), "all_ms": round(bst["lat"]["max_us"] / 1000, 2),
                                  "all_read_ms": round(bst["lat_read"]["max_us"] / 1000, 2),
                                  "p50_ms": round(bst["lat"]["p50_us"] / 1000, 2), "received": bst["frames"],
                                  "server_cpu_ms": round(1000 * (cpu_seconds(server.pid) - b0), 2)})
                    await asyncio.sleep(args.broadcast_pause)
                res["broadcasts"] = reach
                res["broadcast_all_ms"] = report.median([r["all_ms"] for r in reach if r["done"]])
                res["broadcast_p50_ms"] = report.median([r["p50_ms"] for r in reach if r["done"]])
                res["broadcast_server_us_per_delivery"] = report.median(
                    [1000 * r["server_cpu_ms"] / n for r in reach if r["done"]])
                res["broadcast_incomplete"] = sum(1 for r in reach if not r["done"])
            st = await cl.cmd("stats")
            res.update(open=st["open"], lost_connections=st["lost"], closed_by_server=st["closed_by_server"])
            if target.is_pushgate:
                gc2 = await scrape_gc(session, port)
                res["gc_connect"] = gcpause.window(gc0, gc1)
                res["gc_run"] = gcpause.window(gc0, gc2)
            if not heartbeat:
                # A close wave (a network blip, a load balancer restart): every client goes at once.
                c0 = cpu_seconds(server.pid)
                await cl.cmd("close")
                spent = await settle_cpu(server.pid, c0, args.close_timeout)
                res["server_us_per_close"] = round(1e6 * spent / n, 1)
            res["ok"] = True
        except Exception as e:
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            res["server_log_tail"] = server.log_tail()
        finally:
            await cl.stop()
            server.stop(timeout=10)
    show(res)
    return res


def show(r: dict[str, Any]) -> None:
    tag = f"  run {r['run']} N={r['clients']:<6} {r['target']:<9}{' heartbeat' if r['heartbeat'] else ''}"
    if not r.get("ok"):
        print(f"{tag} FAILED: {r['error']}\n{r.get('server_log_tail', '')[-600:]}", file=sys.stderr, flush=True)
        return
    if r["heartbeat"]:
        print(f"{tag} idle {r['idle_cpu_pct']:.1f}% pings {r['pings_in_idle']} -> {r['server_us_per_ping']} us/ping",
              file=sys.stderr, flush=True)
        return
    gc = f" gc(run) {gcpause.describe(r.get('gc_run', {}))}ms" if "gc_run" in r else ""
    print(f"{tag} {r['connects_per_s']:>8,.0f} conn/s {r['server_us_per_connect']:6.0f} us/conn "
          f"{r['kb_per_conn']:6.2f} KB/conn idle {r['idle_cpu_pct']:.1f}% broadcast-to-all "
          f"{_f(r['broadcast_all_ms'], '.1f')} ms{gc}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Summary, tables, projection
# --------------------------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]], targets: list[str], clients: list[int]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for n in clients:
        for t in targets:
            rs = [r for r in results if r["target"] == t and r["clients"] == n and r.get("ok") and not r["heartbeat"]]
            row: dict[str, Any] = {"target": t, "clients": n, "runs_ok": len(rs),
                                   "errors": [r["error"] for r in results if r["target"] == t
                                              and r["clients"] == n and not r.get("ok")][:3]}
            for k in ("connects_per_s", "server_us_per_connect", "kb_per_conn", "idle_cpu_pct", "idle_us_per_conn_s",
                      "broadcast_all_ms", "broadcast_p50_ms", "broadcast_server_us_per_delivery", "rss_idle_kb",
                      "server_us_per_close"):
                row[k] = report.med(rs, k)
            row["kb_per_conn_all"] = [r["kb_per_conn"] for r in rs]
            row["lost_max"] = max((r["lost_connections"] + r["closed_by_server"] for r in rs), default=0)
            for part in ("gc_connect", "gc_run"):
                ws = [r[part] for r in rs if r.get(part)]
                if ws:
                    les = [w.get("longest_ms_le") for w in ws if w.get("collections")]
                    row[f"{part}_longest_ms_le_worst"] = (max(x if x is not None else float("inf") for x in les)
                                                          if les else 0.0)
                    g = [w["max_since_start_ms"] for w in ws if w.get("max_since_start_ms") is not None]
                    row[f"{part}_gauge_ms"] = max(g) if g else None
            hb = [r for r in results if r["target"] == t and r["heartbeat"] and r.get("ok")]
            row["us_per_ping"] = report.med(hb, "server_us_per_ping")
            hb_gc = [r["gc_run"].get("max_since_start_ms") or r["gc_run"].get("longest_ms_le") for r in hb
                     if r.get("gc_run")]
            row["heartbeat_gc_ms_worst"] = max((x for x in hb_gc if x is not None), default=None)
            rows[f"{t}@{n}"] = row
    return rows


def gc_cell(row: dict[str, Any], part: str) -> str:
    if f"{part}_longest_ms_le_worst" not in row:
        return ""
    v = row[f"{part}_longest_ms_le_worst"]
    cell = "no GC" if v == 0 else ("> 1000" if v == float("inf") else f"≤ {v:g}")
    if row.get(f"{part}_gauge_ms") is not None:
        cell += f" ({row[f'{part}_gauge_ms']:.1f})"
    return cell


@dataclasses.dataclass
class Projection:
    """One node at ``n`` connections from the per-connection costs measured at the largest N."""

    n: int
    memory_gb: float | None
    heartbeat_cores: float | None
    accept_all_s: float | None
    broadcast_all_s: float | None
    broadcast_cpu_s: float | None  # server CPU for one broadcast: the wall time on an idle core


def project(row: dict[str, Any], n: int, ping_interval: float) -> Projection:
    kb, us_conn, us_ping = row.get("kb_per_conn"), row.get("server_us_per_connect"), row.get("us_per_ping")
    bc, n0 = row.get("broadcast_all_ms"), row["clients"]
    return Projection(
        n=n,
        memory_gb=None if kb is None else (row["rss_idle_kb"] - kb * n0 + kb * n) / 1024 / 1024,
        heartbeat_cores=None if us_ping is None else n / ping_interval * us_ping / 1e6,
        accept_all_s=None if us_conn is None else n * us_conn / 1e6,
        broadcast_all_s=None if bc is None else bc / 1000 * n / n0,
        broadcast_cpu_s=(None if row.get("broadcast_server_us_per_delivery") is None
                         else n * row["broadcast_server_us_per_delivery"] / 1e6),
    )


def render(summary: dict[str, Any], targets: list[str], clients: list[int], args: argparse.Namespace, started: str,
           notes: list[str]) -> str:
    out = [f"## pushgate connection scale ({started})", "",
           "| N | target | connects/s | server µs per connect | KB per idle conn | idle server CPU % "
           "| one broadcast to all: last copy ms (p50 ms) | server µs per delivery | server µs per close "
           "| GC longest ms: connect / run | lost | runs |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for n in clients:
        for t in targets:
            r = summary[f"{t}@{n}"]
            if not r["runs_ok"]:
                out.append(f"| {n:,} | {t} | failed: {report.first_error(r['errors'])} "
                           f"| | | | | | | | | 0/{args.runs} |")
                continue
            gc = f"{gc_cell(r, 'gc_connect')} / {gc_cell(r, 'gc_run')}" if "gc_run_longest_ms_le_worst" in r else ""
            out.append(
                f"| {n:,} | {t} | {_f(r['connects_per_s'], ',.0f')} | {_f(r['server_us_per_connect'], ',.0f')} "
                f"| {_f(r['kb_per_conn'], '.2f')} "
                f"| {_f(r['idle_cpu_pct'], '.1f')} | {_f(r['broadcast_all_ms'], ',.1f')} "
                f"({_f(r['broadcast_p50_ms'], ',.1f')}) | {_f(r['broadcast_server_us_per_delivery'], '.2f')} "
                f"| {_f(r.get('server_us_per_close'), ',.1f')} | {gc} "
                f"| {r['lost_max']} | {r['runs_ok']}/{args.runs} |")
    top = max(clients)
    out += ["", f"**Projection to one node** (linear in N from the costs at N={top:,}; one core; "
            f"heartbeats at the default {DEFAULT_PING_INTERVAL:g} s ping interval)", "",
            "| target | connections | memory GB | cores for heartbeats | one core accepts all in s "
            "| one broadcast reaches all in s (server CPU s) |",
            "|---|---:|---:|---:|---:|---:|"]
    for t in targets:
        r = summary[f"{t}@{top}"]
        if not r["runs_ok"]:
            continue
        for n in (100_000, 1_000_000):
            p = project(r, n, DEFAULT_PING_INTERVAL)
            out.append(f"| {t} | {n:,} | {_f(p.memory_gb, '.2f')} | {_f(p.heartbeat_cores, '.3f')} "
                       f"| {_f(p.accept_all_s, ',.1f')} | {_f(p.broadcast_all_s, ',.2f')} "
                       f"({_f(p.broadcast_cpu_s, ',.2f')}) |")
    return "\n".join(out) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"


def notes_for(args: argparse.Namespace, versions: dict[str, str], builds: dict[str, Any],
              skipped: dict[str, str], summary: dict[str, Any], targets: list[str]) -> list[str]:
    top = max(args.clients_list)
    hb = [f"{t} {summary[f'{t}@{top}']['us_per_ping']:.1f} µs per ping"
          + (f"; longest GC pause in that run {summary[f'{t}@{top}']['heartbeat_gc_ms_worst']:.1f} ms"
             if summary[f"{t}@{top}"].get("heartbeat_gc_ms_worst") is not None else "")
          for t in targets if summary[f"{t}@{top}"].get("us_per_ping") is not None]
    notes = [
        f"median of {args.runs} runs, a fresh server each; server on CPU {args.server_cpu}, the C client "
        f"(bench/lib/cload.c, all sockets) on CPU {args.client_cpu}; {args.connect_batch} handshakes in flight.",
        "server µs per connect = server CPU during the connect phase / N (accept, HTTP upgrade, welcome frame, "
        "registration); KB per idle conn = (VmRSS with N idle - VmRSS after a 10-client warm-up) / N.",
        f"idle server CPU % over {args.idle_seconds:g} s with N idle connections (a 25 s ping round may or may "
        "not fall inside).",
        f"one broadcast to all = stamp in the POST body -> arrival (kernel receive timestamp) of the last of the "
        f"N copies; median of "
        f"{args.broadcasts} single broadcasts; server µs per delivery = server CPU of that broadcast / N.",
        "server µs per close = server CPU from closing all N client sockets at once until the server is idle "
        "for 0.5 s, / N (a close wave: unregistering, presence, close accounting).",
        "GC longest = bucket bound of pushgate's pushgate_gc_pause_seconds over the connect phase / the whole "
        "run (worst run); in parentheses pushgate_gc_pause_max_seconds when exported.",
        "heartbeat cost: a separate pushgate with --ping-interval 1 and N idle connections; CPU per ping = server "
        "CPU / pings the client answered in " + f"{args.heartbeat_seconds:g} s" + (
            " (" + ", ".join(hb) + ")" if hb else " (not measured)")
        + "; projection: N / 25 s pings x that cost.",
        "projection: memory = RSS at N plus KB/conn x the extra connections; accept-all = N x µs/connect on one "
        "core (a reconnect storm); broadcast-to-all scales the measured time linearly (one core, no batching "
        "gain assumed), in parentheses N x server CPU per delivery (the time on a core of its own: on a busy "
        "machine the wall time is longer). Peers' heartbeats are not measured (node-ws sends none, uws pings "
        "on its own timer).",
        "versions: " + "; ".join(versions.values()) + (
            " (pushgate builds: " + "; ".join(f"{k} = {v.get('source')} sha256 {v.get('sha256_12')}" for k, v in
                                              builds.items()) + ")" if builds else "") + ".",
    ]
    if skipped:
        notes.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    return notes


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default=None, help="comma-separated N (default 10000,19000; --quick 2000)")
    ap.add_argument("--runs", type=int, default=None, help="runs per (target, N) (default 3, --quick 1)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS)
    ap.add_argument("--pushgate-src", action="append", default=[], metavar="NAME=PATH",
                    help="another pushgate build as target NAME (a repo, its src/, or git:REV); repeatable")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--connect-batch", type=int, default=100, help="handshakes in flight at a time")
    ap.add_argument("--connect-timeout", type=float, default=180.0)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--broadcasts", type=int, default=3)
    ap.add_argument("--broadcast-pause", type=float, default=0.5)
    ap.add_argument("--close-timeout", type=float, default=60.0,
                    help="seconds the close wave may take before its CPU is read anyway")
    ap.add_argument("--broadcast-timeout", type=float, default=30.0)
    ap.add_argument("--heartbeat-seconds", type=float, default=None,
                    help="window of the pushgate heartbeat-cost measurement (default 5 s; 0: skip)")
    ap.add_argument("--quiet-wait", type=float, default=None, help="default 60 s (--quick 5); 0: off")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--live-src", action="store_true")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    report.add_result_options(ap, "scale-20261201-180000")
    args = ap.parse_args(argv)
    report.fill_defaults(args, runs=(1, 3), quiet_wait=(5.0, 60.0), clients=("2000", "10000,19000"),
                         heartbeat_seconds=(3.0, 5.0))
    args.clients_list = [int(x) for x in args.clients.split(",") if x.strip()]
    if max(args.clients_list) > 19_500:
        ap.error("this machine caps open files at 20,000 per process: N ≤ 19,500")
    args.targets_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        args.builds = parse_builds(args.pushgate_src)
    except ValueError as e:
        ap.error(str(e))
    place_builds(ap, args.targets_list, args.builds)
    return args


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="pushgate-scale-"))
    all_targets, targets, skipped = resolve_targets(args.targets_list, args.builds, logdir, live=args.live_src,
                                                    unsupported=CLOAD_UNSUPPORTED)
    builds = {b.name: b for b in args.builds if b.name in targets}
    if not targets:
        return 2
    versions = {t: all_targets[t].version() for t in targets}
    started = time.strftime("%Y%m%d-%H%M%S")
    cmdline = ("python bench/scale.py " + " ".join(argv)).strip()
    est = args.runs * (len(targets) * sum(8 + n / 3000 + args.idle_seconds + args.broadcasts * 1.5
                                          for n in args.clients_list)
                       + len(builds) * (8 + max(args.clients_list) / 3000 + (args.heartbeat_seconds or 0)))
    print(f"# scale: targets={','.join(targets)} N={args.clients_list} runs={args.runs} (~{est / 60:.0f} min) "
          f"logs={logdir}", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for n in args.clients_list:
            for t in targets:
                results.append(await measure(all_targets[t], n, args, logdir, run))
        if args.heartbeat_seconds:
            for b in builds.values():
                hb = dataclasses.replace(all_targets[b.name], argv=[*all_targets[b.name].argv, "--ping-interval", "1"])
                results.append(await measure(hb, max(args.clients_list), args, logdir, run, heartbeat=True))
    build_info = {b.name: b.info() for b in builds.values()}
    summary = summarize(results, targets, args.clients_list)
    notes = [f"command: `{cmdline}`", *notes_for(args, versions, build_info, skipped, summary, targets)]
    text = render(summary, targets, args.clients_list, args, started, notes)
    print(text)
    if not args.no_save:
        doc = {"benchmark": "scale", "started": started, "command": cmdline,
               "args": {k: v for k, v in vars(args).items() if k != "builds"}, "targets": targets,
               "machine": report.machine_info(), "versions": versions, "pushgate_src": build_info,
               "skipped": skipped, "summary": summary, "runs": results}
        report.save(args.out_dir, f"scale-{started}", doc, text)
    return 0 if all(r.get("ok") for r in results) else 1


def saved_tables(doc: dict[str, Any], sargs: argparse.Namespace) -> str:
    summary = summarize(doc["runs"], doc["targets"], sargs.clients_list)
    notes = [f"command: `{doc.get('command', '?')}`",
             *notes_for(sargs, doc["versions"], doc.get("pushgate_src") or {}, doc.get("skipped", {}), summary,
                        doc["targets"])]
    return render(summary, doc["targets"], sargs.clients_list, sargs, doc["started"], notes)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render:
        return report.render_saved(args.render, lambda: parse_args([]), saved_tables)
    args.nice = apply_nice(args.nice)
    return run_load_client(lambda: amain(args, argv), args.client_cpu)


if __name__ == "__main__":
    sys.exit(main())
