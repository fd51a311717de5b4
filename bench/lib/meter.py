"""Process and CPU meters from /proc: RSS, CPU seconds per process, per-core busy/idle/steal/irq.

* :func:`rss_kb`, :func:`cpu_seconds` -- one process (``/proc/PID/status`` VmRSS, ``/proc/PID/stat``
  utime+stime).
* :func:`cpu_ticks` -- one core from ``/proc/stat``.
* :func:`wait_for_quiet` -- before a measurement, wait (bounded) until other people's work is off the
  benchmark cores.
* :class:`Meter` -- a window over several processes + this client + every core, and from it
  :func:`noise_pct` (CPU taken by processes that are not ours + hypervisor steal) and :func:`saturated`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
SATURATED_PCT = 90.0  # a core busier than this (incl. steal) during a window counts as saturated


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process: how much of a server's time is its own code and how
    much the kernel's work on its behalf (the send path, epoll, accept)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_ticks(cpu: int) -> tuple[int, int, int, int]:
    """(busy, idle, steal, irq+softirq) jiffies of one CPU from /proc/stat (busy includes irq)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
                return user + nice + system + irq + softirq, idle + iowait, steal, irq + softirq
    return 0, 0, 0, 0


async def wait_for_quiet(cpus: tuple[int, ...], max_busy_pct: float, max_wait: float) -> float:
    """Wait (bounded) until the benchmark CPUs are mostly idle; returns seconds waited.

    Called while none of our processes is busy, so any load seen belongs to someone else (other
    jobs or benchmarks on a shared machine) and would distort the next measurement. Needs two
    consecutive quiet 1-second windows, so a short pause between someone else's jobs does not count.
    """
    t0 = time.monotonic()
    quiet = 0
    while True:
        a = {c: cpu_ticks(c) for c in cpus}
        await asyncio.sleep(1.0)
        b = {c: cpu_ticks(c) for c in cpus}
        busy = max(100 * (b[c][0] - a[c][0] + b[c][2] - a[c][2])
                   / max(1, (b[c][0] - a[c][0]) + (b[c][1] - a[c][1]) + (b[c][2] - a[c][2])) for c in cpus)
        quiet = quiet + 1 if busy <= max_busy_pct else 0
        waited = time.monotonic() - t0
        if quiet >= 2 or waited >= max_wait:
            return round(waited, 1)


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds per named process (NaN for one that is gone)."""
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except OSError:
            out[name] = float("nan")
    return out


Snap = tuple[float, dict[str, float], float, dict[int, tuple[int, int, int, int]]]


class Meter:
    """CPU seconds of some processes + this client, and per-core busy/steal, over a window."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.pids = pids
        self.cpus = list(range(os.cpu_count() or 1))

    def snap(self) -> Snap:
        return (time.perf_counter(), cpu_of(self.pids()), time.process_time(), {c: cpu_ticks(c) for c in self.cpus})

    def diff(self, a: Snap, b: Snap) -> dict[str, Any]:
        t0, p0, c0, k0 = a
        t1, p1, c1, k1 = b
        el = max(1e-9, t1 - t0)
        procs = {n: round(100 * (p1[n] - p0[n]) / el, 1) for n in p0}
        procs["client"] = round(100 * (c1 - c0) / el, 1)
        cores = {}
        busy_all = irq_all = 0.0
        for c in self.cpus:
            busy = (k1[c][0] - k0[c][0]) / CLK_TCK
            steal = (k1[c][2] - k0[c][2]) / CLK_TCK
            irq = (k1[c][3] - k0[c][3]) / CLK_TCK
            busy_all += busy
            irq_all += irq
            cores[f"core{c}"] = {"busy_pct": round(100 * busy / el, 1), "steal_pct": round(100 * steal / el, 1),
                                 "irq_pct": round(100 * irq / el, 1)}
        ours = sum(p1[n] - p0[n] for n in p0) + (c1 - c0)
        # CPU used by processes that are not ours (other jobs on a shared machine), all cores together;
        # irq/softirq (largely loopback TCP, run on behalf of our sockets) is excluded and shown apart.
        others = max(0.0, busy_all - irq_all - ours)
        return {"window_s": round(el, 3), "cpu_pct": procs,
                "others_pct": round(100 * others / el, 1), "irq_pct": round(100 * irq_all / el, 1),
                "cpu_s": {n: round(p1[n] - p0[n], 3) for n in p0} | {"client": round(c1 - c0, 3)},
                "cores": cores}


def noise_pct(meter: dict[str, Any]) -> float:
    """CPU taken by other people's processes + hypervisor steal during the window (% of one core)."""
    total: float = meter["others_pct"] + sum(c["steal_pct"] for c in meter["cores"].values())
    return round(total, 1)


def saturated(meter: dict[str, Any], core: int) -> bool:
    c = meter["cores"].get(f"core{core}")
    return bool(c) and c["busy_pct"] + c["steal_pct"] >= SATURATED_PCT


def describe(meter: dict[str, Any]) -> str:
    """One progress-line fragment: CPU % per process, then busy % (steal) per core, irq and others."""
    cpu = " ".join(f"{n} {v:.0f}%" for n, v in meter["cpu_pct"].items())
    cores = " ".join(f"{n} {v['busy_pct']:.0f}%(st {v['steal_pct']:.0f})" for n, v in meter["cores"].items())
    return f"cpu {cpu}; {cores} irq {meter['irq_pct']:.0f}% others {meter['others_pct']:.0f}%"


class CoreWindow:
    """The ticks of a few cores at the start of a window, and each core's share of it at the end (fanout.py)."""

    def __init__(self, cpus: tuple[int, ...]) -> None:
        self.cpus = cpus
        self.t0 = {c: cpu_ticks(c) for c in cpus}
        self.t1 = self.t0

    def stop(self) -> None:
        self.t1 = {c: cpu_ticks(c) for c in self.cpus}

    def seconds(self, cpu: int, field: int) -> float:
        """CPU seconds of ``field`` (0 busy, 1 idle, 2 steal, 3 irq+softirq) on ``cpu`` in the window."""
        return float(self.t1[cpu][field] - self.t0[cpu][field]) / CLK_TCK
