"""pushgate's longest garbage-collection pause, read from its ``/metrics``.

pushgate times every collection (``gcprobe.py``) into the histogram ``pushgate_gc_pause_seconds``
(label ``generation``). A histogram cannot give the exact maximum, only a bucket: the longest pause
of a window lies between the last bucket bound below which *fewer* collections fell than in total
and the first bound below which *all* fell. When the node also exports the gauge
``pushgate_gc_pause_max_seconds`` (longest pause since start) that exact value is reported too.

Benchmarks scrape before and after a measured window: :func:`window` gives the pauses of that
window (count, total, bucket bounds of the longest), so start-up collections do not count.
"""

from __future__ import annotations

import math
import re
from typing import Any

_BUCKET = re.compile(r'^pushgate_gc_pause_seconds_bucket\{([^}]*)\}\s+(\S+)', re.M)
_SUM = re.compile(r'^pushgate_gc_pause_seconds_sum\{[^}]*\}\s+(\S+)', re.M)
_GAUGE = re.compile(r'^pushgate_gc_pause_max_seconds(?:\{[^}]*\})?\s+(\S+)', re.M)


def parse(text: str) -> dict[str, Any]:
    """Cumulative bucket counts summed over generations (``{le: count}``), the pause sum, the gauge."""
    buckets: dict[float, float] = {}
    for labels, value in _BUCKET.findall(text):
        m = re.search(r'le="([^"]+)"', labels)
        if not m:
            continue
        le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
        buckets[le] = buckets.get(le, 0.0) + float(value)
    gauge = _GAUGE.search(text)
    return {"buckets": buckets, "sum": sum(float(x) for x in _SUM.findall(text)),
            "max_gauge": float(gauge.group(1)) if gauge else None}


def longest_bounds(buckets: dict[float, float]) -> tuple[float, float] | None:
    """(lower, upper) seconds of the longest pause counted in ``buckets`` (cumulative); None if empty."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    lower = 0.0
    for le in les:
        if buckets[le] >= total:
            return lower, le
        lower = le
    return lower, math.inf


def window(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """The collections between two scrapes: count, seconds paused, bounds of the longest, and the gauge."""
    if not after or not after["buckets"]:
        return {}
    b0 = before["buckets"] if before else {}
    delta = {le: c - b0.get(le, 0.0) for le, c in after["buckets"].items()}
    bounds = longest_bounds(delta)
    out: dict[str, Any] = {
        "collections": int(delta.get(math.inf, 0.0)),
        "paused_ms": round(1000 * (after["sum"] - (before["sum"] if before else 0.0)), 2),
        "longest_ms_gt": None if bounds is None else round(1000 * bounds[0], 2),
        "longest_ms_le": None if bounds is None else (None if math.isinf(bounds[1]) else round(1000 * bounds[1], 2)),
    }
    if after.get("max_gauge") is not None:
        out["max_since_start_ms"] = round(1000 * after["max_gauge"], 2)
    return out


def describe(w: dict[str, Any]) -> str:
    """A table cell for the longest pause of a window: the bucket bound (``≤ 5`` ms, ``> 1000`` ms)."""
    if not w:
        return "-"
    if not w.get("collections"):
        return "no GC"
    if w.get("longest_ms_le") is None:
        return f"> {w['longest_ms_gt']:g}"
    return f"≤ {w['longest_ms_le']:g}"
