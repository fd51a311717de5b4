#!/usr/bin/env python3
"""Fan-out benchmark: pushgate vs. peer WebSocket servers, measured side by side in one run.

For every target server and every N in ``--clients`` this measures

* **deliveries/s** -- N clients are connected; M broadcasts of a ~100-byte text message are
  triggered over HTTP (``POST /api/broadcast``); the clock runs from the first trigger until
  every client has received all M frames; deliveries/s = N*M / elapsed.
* **KB per idle connection** -- server RSS (``/proc/PID/status`` VmRSS) after N clients are
  connected and idle, minus RSS before they connected, divided by N.

Each (target, N) is measured ``--runs`` times on a freshly started server; the table quotes the
median and the ratio against ``--baseline``. Runs are interleaved (run 1 of every target, then
run 2, ...) so slow drift of the machine hits every target alike.

The server runs pinned to one core (``--server-cpu``, default 0), this load client pinned to
another (``--client-cpu``, default 1). The load client is bench/lib/loadclient.py (own HTTP
Upgrade, frame counting in ``data_received``, pong replies), so that it is not the bottleneck;
its CPU use and the server's are reported with every run.

Two builds of pushgate side by side: ``--pushgate-src pushgate-before=/tmp/pg-before`` adds a
target that runs pushgate from that tree's ``src/`` (or ``NAME=git:REV``: from a commit of this
repo); ``--baseline pushgate-before`` puts the ratios against it.

Examples::

    python bench/fanout.py                          # N=1000,5000; all targets; 3 runs
    python bench/fanout.py --quick                  # 1 run, ~100k deliveries per (target, N)
    python bench/fanout.py --clients 5000 --runs 5 --targets pushgate,aiohttp
    python bench/fanout.py --targets pushgate --pushgate-src pushgate-before=/tmp/pg-before \\
        --baseline pushgate-before                  # this tree vs. an older one, one session

Results: ``bench/results/fanout-<timestamp>.md`` (the table), ``.summary.json`` and
``raw/fanout-<timestamp>.json.gz`` (every run; see bench/lib/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import report
from lib.loadclient import SioWSClient, Stats, WSClient, connect_clients, trigger_broadcasts
from lib.meter import CoreWindow, cpu_seconds, rss_kb, wait_for_quiet
from lib.report import cell as _f
from lib.servers import (
    HOST,
    REPO_DIR,
    Proc,
    apply_nice,
    free_port,
    parse_builds,
    run_load_client,
)
from lib.targets import PEERS, Target, place_builds, resolve_targets

DEFAULT_TARGETS = "pushgate,aiohttp,websockets,node-ws,uws,raw-uvloop"


# --------------------------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------------------------


async def measure(target: Target, n: int, m: int, args: argparse.Namespace, logdir: Path) -> dict[str, Any]:
    import aiohttp

    res: dict[str, Any] = {"target": target.name, "clients": n, "messages": m}
    port = free_port()
    trigger_port = free_port() if target.needs_trigger_port else port
    server = Proc(target.name, target.command(port, trigger_port), str(args.server_cpu), logdir, env=target.env(),
                  cwd=str(REPO_DIR), nice=args.nice, log_name=f"{target.name}-{port}.log")
    stats = Stats()
    clients: list[WSClient] = []
    data = "x" * max(1, args.payload_bytes - len('{"type":"broadcast","data":""}'))
    body = json.dumps({"data": data}).encode()
    conn = aiohttp.TCPConnector(limit=args.trigger_concurrency + 2, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            if args.quiet_wait > 0:
                res["waited_for_quiet_s"] = await wait_for_quiet((args.server_cpu, args.client_cpu), 10.0,
                                                                 args.quiet_wait)
            server.start()
            await server.wait_http_ok(session, sorted({f"http://{HOST}:{p}/healthz" for p in (port, trigger_port)}))
            trigger_url = target.trigger_url(port, trigger_port)

            # Warm-up: a few clients and one broadcast, so lazily imported/allocated machinery
            # (ws reader, JSON, timers...) is not charged to the per-connection memory.
            wstats = Stats()
            cls = SioWSClient if target.proto == "socketio" else WSClient
            warm = await connect_clients(port, 10, wstats, batch=10, timeout=20, client_class=cls,
                                         path=target.ws_path)
            wstats.reset_round(1, len(warm))
            await trigger_broadcasts(session, trigger_url, body, 1, 1)
            await asyncio.wait_for(wstats.done_event.wait(), 10)  # type: ignore[union-attr]
            for c in warm:
                c.abort()
            await asyncio.sleep(0.5)

            rss0 = rss_kb(server.pid)
            t_conn = time.perf_counter()
            clients = await connect_clients(port, n, stats, args.connect_batch, args.connect_timeout,
                                            client_class=cls, path=target.ws_path)
            res["connect_seconds"] = round(time.perf_counter() - t_conn, 3)
            await asyncio.sleep(args.idle_seconds)
            rss1 = rss_kb(server.pid)
            res.update(rss_before_kb=rss0, rss_idle_kb=rss1, kb_per_conn=round((rss1 - rss0) / n, 3))

            # Broadcast phase
            stats.reset_round(m, n)
            srv_cpu0 = cpu_seconds(server.pid)
            cli_cpu0 = time.process_time()
            cores = CoreWindow((args.server_cpu, args.client_cpu))
            t0 = time.perf_counter()
            trig = asyncio.ensure_future(trigger_broadcasts(session, trigger_url, body, m, args.trigger_concurrency))
            deadline = time.monotonic() + args.deliver_timeout
            last_total, last_progress = -1, time.monotonic()
            incomplete = ""
            while not stats.done_event.is_set():  # type: ignore[union-attr]
                try:
                    await asyncio.wait_for(asyncio.shield(stats.done_event.wait()), 0.5)  # type: ignore[union-attr]
                    break
                except TimeoutError:
                    pass
                total = sum(c.count for c in clients)
                now = time.monotonic()
                if total != last_total:
                    last_total, last_progress = total, now
                if trig.done() and now - last_progress > args.stall_seconds:
                    incomplete = f"stalled: no progress for {args.stall_seconds}s"
                    break
                if now > deadline:
                    incomplete = f"timeout after {args.deliver_timeout}s"
                    break
            t1 = stats.t_done if stats.done_event.is_set() else time.perf_counter()  # type: ignore[union-attr]
            srv_cpu = cpu_seconds(server.pid) - srv_cpu0
            cli_cpu = time.process_time() - cli_cpu0
            cores.stop()
            trig_res = await asyncio.wait_for(trig, 30)
            elapsed = t1 - t0
            delivered = sum(min(c.count, m) for c in clients)
            res.update(
                elapsed_s=round(elapsed, 4),
                delivered=delivered,
                expected=n * m,
                deliveries_per_s=round(delivered / elapsed, 1),
                server_cpu_pct=round(100 * srv_cpu / elapsed, 1),
                client_cpu_pct=round(100 * cli_cpu / elapsed, 1),
                deliveries_per_server_cpu_s=round(delivered / srv_cpu, 1) if srv_cpu > 0 else None,
                client_us_per_delivery=round(1e6 * cli_cpu / delivered, 3) if delivered else None,
                # Interference: what else ran on the two CPUs (other processes, irq) and how much
                # time the hypervisor stole, in % of the broadcast phase.
                server_cpu_other_pct=round(100 * (cores.seconds(args.server_cpu, 0) - srv_cpu) / elapsed, 1),
                # of which irq+softirq (on loopback largely the TCP receive path of the sockets the
                # server writes to, run on the sender's CPU), the rest being other processes
                server_cpu_softirq_pct=round(100 * cores.seconds(args.server_cpu, 3) / elapsed, 1),
                server_cpu_steal_pct=round(100 * cores.seconds(args.server_cpu, 2) / elapsed, 1),
                client_cpu_steal_pct=round(100 * cores.seconds(args.client_cpu, 2) / elapsed, 1),
                rss_after_load_kb=rss_kb(server.pid),
                frame_payload_bytes=len(stats.sample) if stats.sample else None,
                sample_frame=stats.sample.decode(errors="replace")[:200] if stats.sample else None,
                closed_by_server=stats.closed_by_server,
                lost_connections=stats.lost,
                pings=stats.pings,
                **trig_res,
            )
            res["complete"] = delivered == n * m and not incomplete
            if incomplete:
                res["incomplete_reason"] = incomplete
            res["ok"] = True
            res["noise_pct"] = max(0.0, round(res["server_cpu_other_pct"] + res["server_cpu_steal_pct"], 1))
        except Exception as e:
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            res["server_log_tail"] = server.log_tail()
        finally:
            server.stop(timeout=5)
            for c in clients:
                c.abort()
            await asyncio.sleep(0.2)
    return res


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def summarize(results: list[dict[str, Any]], targets: list[str], clients: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for n in clients:
        for t in targets:
            rs = [r for r in results if r["target"] == t and r["clients"] == n and r.get("ok") and r.get("used", True)]
            full = [r for r in rs if r.get("complete")]
            summary[f"{t}@{n}"] = {
                "target": t,
                "clients": n,
                "runs_ok": len(rs),
                "runs_complete": len(full),
                "deliveries_per_s_all": [r["deliveries_per_s"] for r in rs],
                "kb_per_conn_all": [r["kb_per_conn"] for r in rs],
                **{k: report.med(rs, k) for k in (
                    "deliveries_per_s", "deliveries_per_server_cpu_s", "kb_per_conn", "server_cpu_pct",
                    "client_cpu_pct", "client_us_per_delivery", "server_cpu_steal_pct", "server_cpu_other_pct",
                    "server_cpu_softirq_pct", "connect_seconds")},
                "frame_payload_bytes": next((r["frame_payload_bytes"] for r in rs if r.get("frame_payload_bytes")),
                                            None),
                "errors": [r["error"] for r in results if r["target"] == t and r["clients"] == n
                           and not r.get("ok")][:3],
                "noise_pct": report.med(rs, "noise_pct"),
                "attempts_discarded": sum(1 for r in results if r["target"] == t and r["clients"] == n
                                          and not r.get("used", True)),
            }
    return summary


CLIENT_BOUND_PCT = 90.0


def render_table(summary: dict[str, Any], targets: list[str], clients: list[int], baseline: str,
                 runs: int) -> str:
    hdr = (f"| N | target | deliveries/s, median (min-max) | vs {baseline} | deliveries per server CPU-s "
           f"| KB/idle conn | vs {baseline} | server CPU % | client CPU % | noise % | runs |")
    lines = [hdr, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for n in clients:
        base = summary.get(f"{baseline}@{n}", {})
        bd, bk = base.get("deliveries_per_s"), base.get("kb_per_conn")
        for t in targets:
            s = summary[f"{t}@{n}"]
            d, k = s["deliveries_per_s"], s["kb_per_conn"]
            if d is None:
                lines.append(f"| {n} | {t} | failed: {report.first_error(s['errors'])} | | | | | | | | 0/{runs} |")
                continue
            rd = f"{d / bd:.2f}x" if bd else "-"
            rk = f"{k / bk:.2f}x" if bk and bk > 0 else "-"
            inc = "" if s["runs_complete"] == s["runs_ok"] else f" ({s['runs_ok'] - s['runs_complete']} incomplete)"
            rep = f" (+{s['attempts_discarded']} redone)" if s["attempts_discarded"] else ""
            cb = " ‡" if (s["client_cpu_pct"] or 0) >= CLIENT_BOUND_PCT else ""
            lines.append(
                f"| {n} | {t} | {d:,.0f}{cb}{report.spread(s['deliveries_per_s_all'])} | {rd} "
                f"| {_f(s['deliveries_per_server_cpu_s'], ',.0f')} "
                f"| {k:.1f} | {rk} | {_f(s['server_cpu_pct'], '.0f')} | {_f(s['client_cpu_pct'], '.0f')} "
                f"| {_f(s['noise_pct'], '.0f')} | {s['runs_ok']}/{runs}{inc}{rep} |")
    return "\n".join(lines)


def builds_note(builds: dict[str, dict[str, Any]]) -> str:
    if list(builds) == ["pushgate"] and builds["pushgate"].get("sha256_12"):
        return f" (pushgate run from a snapshot of src/, sha256 {builds['pushgate']['sha256_12']})"
    parts = []
    for name, b in builds.items():
        src = "this repo's src/" if name == "pushgate" else (b.get("source") or b.get("path"))
        git = f", git {b['git']}" if b.get("git") else ""
        parts.append(f"{name} = snapshot of {src} (sha256 {b.get('sha256_12')}{git})")
    return " (pushgate builds: " + "; ".join(parts) + ")" if parts else ""


def build_report(results: list[dict[str, Any]], targets: list[str], args: argparse.Namespace,
                 versions: dict[str, str], builds: dict[str, dict[str, Any]], skipped: dict[str, str],
                 baseline: str, started: str) -> tuple[dict[str, Any], str]:
    """(summary, printable markdown) of a session; also used by --render on a saved result."""
    summary = summarize(results, targets, args.clients_list)
    table = render_table(summary, targets, args.clients_list, baseline, args.runs)
    notes = [
        f"deliveries/s = N x M / (first trigger -> last client got its M-th frame); median of {args.runs} runs"
        " (min-max in parentheses).",
        "KB/idle conn = (server VmRSS with N idle clients - VmRSS before connecting) / N.",
        f"server pinned to CPU {args.server_cpu}, load client to CPU {args.client_cpu}; "
        f"CPU % = CPU time / elapsed of the broadcast phase (100 = one full core).",
        "messages per measurement: " + ", ".join(f"N={n}: M={messages_for(args, n)}" for n in args.clients_list)
        + f"; trigger concurrency {args.trigger_concurrency}.",
        "frame payload bytes: " + ", ".join(
            f"{t}={summary[f'{t}@{args.clients_list[0]}']['frame_payload_bytes']}" for t in targets) + ".",
        "noise % = share of the server's CPU taken by other processes, irq and hypervisor steal during the"
        f" broadcast phase; a run above {args.max_noise:g}% was redone (up to {args.noise_retries}x), the least"
        " noisy attempt counts; every attempt is in the JSON.",
        "versions: " + "; ".join(versions.values()) + builds_note(builds) + ".",
    ]
    if args.nice:
        notes.append(f"server and load client ran at niceness {args.nice} (shared machine).")
    if skipped:
        notes.append("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    text = f"## pushgate fan-out benchmark ({started})\n\n{table}\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"
    if any((summary[f"{t}@{n}"]["client_cpu_pct"] or 0) >= CLIENT_BOUND_PCT
           for t in targets for n in args.clients_list):
        text = text.rstrip("\n") + (
            f"\n- ‡ median load-client CPU >= {CLIENT_BOUND_PCT:g}%: this row may be bounded by the load"
            " client; the server can do at least this much (compare deliveries per server CPU-s).\n")
    return summary, text


def report_run(r: dict[str, Any]) -> None:
    run, n, t = r["run"], r["clients"], r["target"]
    tag = f"  run {run}.{r['attempt']} N={n:<5} {t:<10}"
    if r.get("ok"):
        print(f"{tag} {r['deliveries_per_s']:>10,.0f} deliveries/s  "
              f"{r['kb_per_conn']:6.1f} KB/conn  srv {r['server_cpu_pct']:5.1f}% "
              f"(+other {r['server_cpu_other_pct']:4.1f}% "
              f"steal {r['server_cpu_steal_pct']:4.1f}%) "
              f"cli {r['client_cpu_pct']:5.1f}% {r['client_us_per_delivery']:.2f}us/dlv  "
              f"{r['elapsed_s']:.2f}s"
              + ("" if r["complete"] else f"  INCOMPLETE {r['delivered']}/{r['expected']} "
                 f"{r.get('incomplete_reason', '')} closed={r['closed_by_server']} "
                 f"lost={r['lost_connections']} trig_err={r['trigger_errors'][:1]}"),
              file=sys.stderr, flush=True)
    else:
        print(f"{tag} FAILED: {r['error']}\n{r.get('server_log_tail', '')}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def messages_for(args: argparse.Namespace, n: int) -> int:
    return int(args.messages) if args.messages else max(20, round(args.deliveries / n))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1000,5000", help="comma-separated N values (default 1000,5000)")
    ap.add_argument("--messages", type=int, default=None,
                    help="broadcasts per measurement (default: ~--deliveries/N, at least 20)")
    ap.add_argument("--deliveries", type=int, default=None,
                    help="target N*M when --messages is not given (default 1,000,000; 100,000 with --quick)")
    ap.add_argument("--runs", type=int, default=None, help="runs per (target, N); median is quoted (default 3)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma-separated, from pushgate,{','.join(PEERS)} and the --pushgate-src names "
                    "(unavailable ones are skipped)")
    ap.add_argument("--pushgate-src", action="append", default=[], metavar="NAME=PATH",
                    help="another pushgate build as target NAME, run from PATH (a repo or its src/) or from "
                    "git:REV of this repo; repeatable; added after `pushgate` unless --targets places it")
    ap.add_argument("--baseline", default="aiohttp", help="target the ratios are computed against")
    ap.add_argument("--quick", action="store_true", help="1 run and ~100k deliveries per (target, N)")
    ap.add_argument("--payload-bytes", type=int, default=100, help="size of a peer's broadcast frame payload")
    ap.add_argument("--trigger-concurrency", type=int, default=16, help="concurrent POST /api/broadcast")
    ap.add_argument("--connect-batch", type=int, default=100)
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--deliver-timeout", type=float, default=180.0)
    ap.add_argument("--stall-seconds", type=float, default=5.0)
    ap.add_argument("--idle-seconds", type=float, default=1.0, help="settle time before the idle RSS sample")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each measurement wait up to this long for both CPUs to be <10%% busy "
                    "(default 180 s, 10 s with --quick; 0: off)")
    ap.add_argument("--max-noise", type=float, default=15.0,
                    help="a run whose server CPU lost more than this %% to other work or steal is repeated")
    ap.add_argument("--noise-retries", type=int, default=2,
                    help="extra attempts per noisy run; the least noisy attempt is used (0: off)")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness for server and load client, e.g. -10 on a shared machine (negative needs root)")
    ap.add_argument("--live-src", action="store_true",
                    help="run pushgate builds from their trees instead of snapshots taken at start")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    report.add_result_options(ap, "fanout-20261122-050715")
    args = ap.parse_args(argv)
    report.fill_defaults(args, runs=(1, 3), quiet_wait=(10.0, 180.0), deliveries=(100_000, 1_000_000))
    args.clients_list = [int(x) for x in args.clients.split(",") if x.strip()]
    args.targets_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    try:
        args.builds = parse_builds(args.pushgate_src)
    except ValueError as e:
        ap.error(str(e))
    place_builds(ap, args.targets_list, args.builds)
    return args


async def amain(args: argparse.Namespace) -> int:
    logdir = Path(tempfile.mkdtemp(prefix="pushgate-fanout-"))
    all_targets, targets, skipped = resolve_targets(args.targets_list, args.builds, logdir, live=args.live_src)
    builds = {b.name: b for b in args.builds if b.name in targets}
    if not targets:
        print("no target available", file=sys.stderr)
        return 2
    baseline = args.baseline if args.baseline in targets else targets[0]
    versions = {t: all_targets[t].version() for t in targets}

    started = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict[str, Any]] = []
    print(f"# fanout: targets={','.join(targets)} clients={args.clients_list} runs={args.runs} "
          f"messages={[messages_for(args, n) for n in args.clients_list]} server-cpu={args.server_cpu} "
          f"client-cpu={args.client_cpu} logs={logdir}", file=sys.stderr)
    for b in builds.values():
        print(f"# {b.name}: {b.describe_source()} -> {b.src} (sha256 {b.sha256_12})", file=sys.stderr)
    for run in range(1, args.runs + 1):
        for n in args.clients_list:
            for t in targets:
                async def attempt(_: int, t: str = t, n: int = n) -> dict[str, Any]:
                    return await measure(all_targets[t], n, messages_for(args, n), args, logdir)

                results += await report.measure_until_quiet(attempt, run, args.noise_retries, args.max_noise,
                                                            report_run)

    build_info = {b.name: b.info() for b in builds.values()}
    summary, text = build_report(results, targets, args, versions, build_info, skipped, baseline, started)
    print(text)
    if not args.no_save:
        doc = {
            "benchmark": "fanout",
            "started": started,
            "args": {k: v for k, v in vars(args).items() if k != "builds"},
            "machine": report.machine_info(),
            "versions": versions,
            "pushgate_src": build_info,
            "skipped": skipped,
            "baseline": baseline,
            "summary": summary,
            "runs": results,
        }
        report.save(args.out_dir, f"fanout-{started}", doc, text)
    return 0 if all(r.get("ok") for r in results if r.get("used")) else 1


def saved_tables(doc: dict[str, Any], sargs: argparse.Namespace) -> str:
    """--render: the report of a saved session."""
    targets = [t for t in sargs.targets_list if t not in doc.get("skipped", {})]
    builds = doc.get("pushgate_src") or {}
    if "sha256_12" in builds:  # written before several builds could be compared: {"path", "sha256_12"}
        builds = {"pushgate": builds} if builds.get("sha256_12") else {}
    _, text = build_report(doc["runs"], targets, sargs, doc["versions"], builds, doc.get("skipped", {}),
                           doc["baseline"], doc["started"])
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return report.render_saved(args.render, lambda: parse_args([]), saved_tables)
    args.nice = apply_nice(args.nice)
    return run_load_client(lambda: amain(args), args.client_cpu)


if __name__ == "__main__":
    sys.exit(main())
