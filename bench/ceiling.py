#!/usr/bin/env python3
"""The C load client's ceiling, measured against the fastest server: is the client the bottleneck?

steady.py and scale.py trust bench/lib/cload.c to read faster than any server writes. This checks
it: N clients of one server, M broadcasts as fast as the server takes them (``--window`` POSTs in
flight, default 16 as in fanout.py, over as many keep-alive connections), the clock from the first
POST to the last client's M-th frame. For each (target, N) it reports deliveries/s, server and
client CPU %, frames per read and the client's CPU µs per frame, and from that the client's
**ceiling**: frames/s it could read with a whole core at the batching it saw (1e6 / µs per
frame). The client is not the bottleneck when its ceiling is well above the deliveries/s and the
server's core is the saturated one.

Default: uws (the fastest peer) and pushgate at N=1000 and 5000, 3 runs, ~2 minutes.

    python bench/ceiling.py
    python bench/ceiling.py --targets uws,node-ws --clients 5000 --messages 400 --runs 5

Results: ``bench/results/ceiling-<timestamp>.md``, ``.summary.json``, ``raw/ceiling-<timestamp>.json.gz``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import report
from lib.cload import CLoad
from lib.meter import CoreWindow, cpu_seconds, wait_for_quiet
from lib.report import cell as _f
from lib.servers import HOST, REPO_DIR, Proc, apply_nice, free_port, parse_builds, run_load_client
from lib.targets import PEERS, Target, pushgate_target


async def measure(target: Target, n: int, m: int, args: argparse.Namespace, logdir: Path, run: int) -> dict[str, Any]:
    import aiohttp

    res: dict[str, Any] = {"target": target.name, "clients": n, "messages": m, "run": run}
    port = free_port()
    server = Proc(target.name, target.command(port, port), str(args.server_cpu), logdir, env=target.env(),
                  cwd=str(REPO_DIR), log_name=f"{target.name}-{port}.log")
    cl = CLoad(port, args.client_cpu, path=target.ws_path, proto=target.proto, pub_window=args.window,
               pub_conns=args.pub_conns)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            if args.quiet_wait > 0:
                await wait_for_quiet((args.server_cpu, args.client_cpu), 10.0, args.quiet_wait)
            server.start()
            await server.wait_http_ok(session, [f"http://{HOST}:{port}/healthz"])
            await cl.start()
            await cl.connect(n, 100, 120)
            await cl.cmd("reset")
            warm = asyncio.ensure_future(cl.cmd("publish", 0, 20))
            await cl.cmd("wait", 20, 30, 5)
            await asyncio.wait_for(warm, 30)
            await cl.cmd("reset")
            srv0 = cpu_seconds(server.pid)
            cores = CoreWindow((args.server_cpu, args.client_cpu))
            t0 = time.time_ns()
            pub = asyncio.ensure_future(cl.cmd("publish", 0, m, timeout=180))
            w = await cl.cmd("wait", m, 120, 5, timeout=180)
            await asyncio.wait_for(pub, 30)
            st = await cl.cmd("stats")
            srv = cpu_seconds(server.pid) - srv0
            cores.stop()
            el = max(1e-9, ((st["t_last_ns"] or time.time_ns()) - t0) / 1e9)
            us = 1e6 * st["cpu_s"] / st["frames"] if st["frames"] else None
            res.update(
                complete=bool(w["done"]), delivered=st["frames"], expected=n * m, elapsed_s=round(el, 4),
                deliveries_per_s=round(st["frames"] / el, 1), server_cpu_pct=round(100 * srv / el, 1),
                client_cpu_pct=round(100 * st["cpu_s"] / el, 1),
                client_core_busy_pct=round(100 * cores.seconds(args.client_cpu, 0) / el, 1),
                server_core_busy_pct=round(100 * cores.seconds(args.server_cpu, 0) / el, 1),
                frames_per_read=round(st["frames"] / st["reads"], 2) if st["reads"] else None,
                client_us_per_frame=round(us, 4) if us else None,
                client_ceiling_per_s=round(1e6 / us) if us else None,
                server_cpu_other_pct=round(100 * (cores.seconds(args.server_cpu, 0) - srv) / el, 1),
                server_cpu_steal_pct=round(100 * cores.seconds(args.server_cpu, 2) / el, 1))
            res["noise_pct"] = max(0.0, round(res["server_cpu_other_pct"] + res["server_cpu_steal_pct"], 1))
            res["ok"] = True
        except Exception as e:
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            res["server_log_tail"] = server.log_tail()
        finally:
            await cl.stop()
            server.stop(timeout=5)
    if res["ok"]:
        print(f"  run {run} N={n:<5} {target.name:<9} {res['deliveries_per_s']:>11,.0f} dlv/s  srv "
              f"{res['server_cpu_pct']:5.1f}% cli {res['client_cpu_pct']:5.1f}%  {res['frames_per_read']} frames/read "
              f"{res['client_us_per_frame']} us/frame -> client ceiling {res['client_ceiling_per_s']:,}/s",
              file=sys.stderr, flush=True)
    else:
        print(f"  run {run} N={n} {target.name}: FAILED {res['error']}", file=sys.stderr, flush=True)
    return res


def render(results: list[dict[str, Any]], targets: list[str], clients: list[int], args: argparse.Namespace,
           started: str, notes: list[str]) -> str:
    out = [f"## C load client ceiling ({started})", "",
           "| N | target | deliveries/s (min-max) | server CPU % | client CPU % | frames per read "
           "| client µs per frame | client ceiling, frames/s per core | ceiling / delivered | noise % | runs |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in clients:
        for t in targets:
            rs = [r for r in results if r["target"] == t and r["clients"] == n and r.get("ok")]
            if not rs:
                out.append(f"| {n} | {t} | failed | | | | | | | | 0/{args.runs} |")
                continue
            d, c = report.med(rs, "deliveries_per_s"), report.med(rs, "client_ceiling_per_s")
            out.append(f"| {n:,} | {t} | {_f(d, ',.0f')}{report.spread([r['deliveries_per_s'] for r in rs])} "
                       f"| {_f(report.med(rs, 'server_cpu_pct'), '.0f')} "
                       f"| {_f(report.med(rs, 'client_cpu_pct'), '.0f')} "
                       f"| {_f(report.med(rs, 'frames_per_read'), '.1f')} "
                       f"| {_f(report.med(rs, 'client_us_per_frame'), '.3f')} | {_f(c, ',.0f')} "
                       f"| {_f(c / d if c and d else None, '.1f')}x | {_f(report.med(rs, 'noise_pct'), '.0f')} "
                       f"| {len(rs)}/{args.runs} |")
    return "\n".join(out) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="uws,pushgate")
    ap.add_argument("--clients", default="1000,5000")
    ap.add_argument("--deliveries", type=int, default=2_000_000, help="N x M per measurement")
    ap.add_argument("--messages", type=int, default=None, help="M (default --deliveries / N)")
    ap.add_argument("--window", type=int, default=16, help="POSTs in flight (default 16, as fanout.py)")
    ap.add_argument("--pub-conns", type=int, default=16,
                    help="keep-alive connections the POSTs are spread over (default 16: one request in flight "
                    "per connection; pipelined POSTs are answered in order)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pushgate-src", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--quiet-wait", type=float, default=60.0)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    report.add_result_options(ap, "ceiling-20261201-180000")
    args = ap.parse_args(argv)
    args.clients_list = [int(x) for x in args.clients.split(",") if x.strip()]
    args.targets_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.builds = parse_builds(args.pushgate_src)
    for b in args.builds[1:]:
        if b.name not in args.targets_list:
            args.targets_list.append(b.name)
    return args


async def amain(args: argparse.Namespace, argv: list[str]) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="pushgate-ceiling-"))
    builds = {b.name: b for b in args.builds if b.name in args.targets_list}
    for b in builds.values():
        b.snapshot(logdir / f"src-{b.name}")
    all_targets = PEERS | {b.name: pushgate_target(b) for b in builds.values()}
    targets = [t for t in args.targets_list if t in all_targets and all_targets[t].available()[0]
               and not all_targets[t].needs_trigger_port]
    versions = {t: all_targets[t].version() for t in targets}
    started = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for run in range(1, args.runs + 1):
        for n in args.clients_list:
            m = args.messages or max(20, args.deliveries // n)
            for t in targets:
                results.append(await measure(all_targets[t], n, m, args, logdir, run))
    cmdline = ("python bench/ceiling.py " + " ".join(argv)).strip()
    notes = [f"command: `{cmdline}`",
             f"median of {args.runs} runs; M = {args.deliveries:,} / N broadcasts, {args.window} POSTs in flight "
             f"over {args.pub_conns} keep-alive connections; clock from the first POST to the last frame.",
             "client ceiling = 1e6 / client CPU µs per frame: what the C client would read with its whole core at "
             "the batching (frames per read) it saw; ceiling / delivered > 1 means the client had headroom.",
             "noise % = other processes + steal on the server's core (server CPU % well below 100 with noise "
             "means the server was preempted, not idle).",
             "versions: " + "; ".join(versions.values()) + "."]
    text = render(results, targets, args.clients_list, args, started, notes)
    print(text)
    if not args.no_save:
        doc = {"benchmark": "ceiling", "started": started, "command": cmdline, "targets": targets,
               "args": {k: v for k, v in vars(args).items() if k != "builds"}, "machine": report.machine_info(),
               "versions": versions, "runs": results}
        report.save(args.out_dir, f"ceiling-{started}", doc, text)
    return 0 if all(r.get("ok") for r in results) else 1


def saved_tables(doc: dict[str, Any], sargs: argparse.Namespace) -> str:
    return render(doc["runs"], doc["targets"], sargs.clients_list, sargs, doc["started"],
                  [f"command: `{doc.get('command', '?')}`"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render:
        return report.render_saved(args.render, lambda: parse_args([]), saved_tables)
    args.nice = apply_nice(args.nice)
    return run_load_client(lambda: amain(args, argv), args.client_cpu)


if __name__ == "__main__":
    sys.exit(main())
