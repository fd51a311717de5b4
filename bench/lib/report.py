"""Results: medians, table cells, the noisy-attempt policy, machine info, saving and loading.

Layout of a saved session ``<bench>-<timestamp>`` under ``--out-dir`` (default ``bench/results``):

* ``<name>.md`` -- the printed tables and notes (committed for runs the docs cite);
* ``<name>.summary.json`` -- arguments, machine, versions, code under test, the summary rows and one
  line per attempt with its numbers, CPU meter, profile/GC digest, error and log tail of a failed
  attempt, but without the per-message latency lists and frame samples (committed with the ``.md``);
* ``raw/<name>.json.gz`` -- everything (compact JSON, gzipped; ``bench/results/raw/`` is git-ignored).

:func:`load` reads any of them (and the old indented ``.json``); ``--render`` rebuilds the tables
from the attempts, which both the raw and the summary file carry.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lib.servers import REPO_DIR, RESULTS_DIR

# Per-attempt fields that only the raw file keeps: per-message latency lists, frame samples.
BULKY_RUN_FIELDS = ("slowest", "sample_frame")
COMPACT = (",", ":")


# --------------------------------------------------------------------------------------------
# Numbers and cells
# --------------------------------------------------------------------------------------------


def median(xs: list[Any]) -> float | None:
    """Median of the values that are not None/NaN; None if there are none."""
    ys = [x for x in xs if x is not None and x == x]
    return statistics.median(ys) if ys else None


def med(rs: list[dict[str, Any]], *path: str) -> float | None:
    """Median of ``r[path[0]][path[1]]...`` over the attempts ``rs`` that have it."""
    xs = []
    for r in rs:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        xs.append(v)
    return median(xs)


def cell(x: Any, fmt: str) -> str:
    """A table cell: ``-`` for a missing or NaN value."""
    return "-" if x is None or x != x else format(x, fmt)


def spread(xs: list[float]) -> str:
    """`` (min-max)`` of more than one value, else empty."""
    return f" ({min(xs):,.0f}-{max(xs):,.0f})" if len(xs) > 1 else ""


def first_error(errors: list[str]) -> str:
    """The first error of a row, fit for a table cell."""
    return (errors[0] if errors else "no data").replace("|", "/").splitlines()[0][:80]


# --------------------------------------------------------------------------------------------
# Noisy attempts
# --------------------------------------------------------------------------------------------


def pick_least_noisy(attempts: list[dict[str, Any]]) -> None:
    """Mark the least noisy successful attempt (``used``) as the one the tables use."""
    ok = [a for a in attempts if a.get("ok")]
    best = min(ok, key=lambda a: a["noise_pct"]) if ok else attempts[-1]
    for a in attempts:
        a["used"] = a is best


async def measure_until_quiet(measure: Callable[[int], Awaitable[dict[str, Any]]], run: int, retries: int,
                              max_noise: float, show: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Measure (``measure(attempt)``) until an attempt's ``noise_pct`` is at most ``max_noise``, at most
    ``retries`` extra times; every attempt is returned, the least noisy one marked ``used``."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(1, retries + 2):
        r = await measure(attempt)
        r["run"], r["attempt"] = run, attempt
        attempts.append(r)
        show(r)
        if r.get("ok") and r["noise_pct"] <= max_noise:
            break
    pick_least_noisy(attempts)
    return attempts


# --------------------------------------------------------------------------------------------
# Machine and versions
# --------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop
        info["uvloop"] = uvloop.__version__  # type: ignore[attr-defined]
    except ImportError:
        pass
    try:
        r = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        info["git_rev"] = r.stdout.strip() or None
    except Exception:
        info["git_rev"] = None
    return info


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def _digest(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in BULKY_RUN_FIELDS}


def summary_text(doc: dict[str, Any]) -> str:
    """The committed summary: compact JSON, one attempt per line (readable diffs, small files)."""
    head = json.dumps({k: v for k, v in doc.items() if k != "runs"}, separators=COMPACT, default=str)
    runs = ",\n".join(json.dumps(_digest(r), separators=COMPACT, default=str) for r in doc.get("runs", []))
    return head[:-1] + ',"runs":[\n' + runs + "\n]}\n"


def save(out_dir: str | Path, name: str, doc: dict[str, Any], text: str) -> None:
    """Write ``name``.md, ``name``.summary.json and raw/``name``.json.gz under ``out_dir``."""
    out = Path(out_dir)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "raw" / f"{name}.json.gz", "wt", encoding="utf-8") as f:
        json.dump(doc, f, separators=COMPACT, default=str)
    (out / f"{name}.summary.json").write_text(summary_text(doc))
    (out / f"{name}.md").write_text(text)
    print(f"# saved {out / name}.md, .summary.json and raw/{name}.json.gz", file=sys.stderr)


def resolve(ref: str) -> Path:
    """A result file: a path, or a session name (``fanout-20261122-050715``) looked up in bench/results
    (the raw file if it is there, else the summary)."""
    p = Path(ref)
    if p.exists():
        return p
    for cand in (RESULTS_DIR / "raw" / f"{ref}.json.gz", RESULTS_DIR / f"{ref}.summary.json",
                 RESULTS_DIR / f"{ref}.json"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no result {ref!r} (looked for a file, and {ref}.* in {RESULTS_DIR})")


def session_name(path: Path) -> str:
    name = path.name
    for suffix in (".json.gz", ".summary.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def md_path(path: Path) -> Path:
    """Where the ``.md`` of a result file lives (raw files sit one level down, in raw/)."""
    folder = path.parent.parent if path.parent.name == "raw" else path.parent
    return folder / f"{session_name(path)}.md"


def load(path: Path) -> dict[str, Any]:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            doc: dict[str, Any] = json.load(f)
            return doc
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def rewrite_md(path: Path, text: str) -> None:
    print(text)
    md_path(path).write_text(text)


def add_result_options(ap: argparse.ArgumentParser, example: str) -> None:
    """--out-dir, --no-save and --render (``example``: a session name for the help text)."""
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--render", metavar="RESULT",
                    help="re-print the tables of a saved result (a .json.gz, .summary.json or old .json file, or a "
                    f"session name such as {example}) and rewrite its .md")


def fill_defaults(args: argparse.Namespace, **defaults: tuple[Any, Any]) -> None:
    """Options left at None get their default: ``name=(with --quick, without)``."""
    for name, (quick, normal) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)


def render_saved(ref: str, defaults: Callable[[], argparse.Namespace],
                 tables: Callable[[dict[str, Any], argparse.Namespace], str]) -> int:
    """--render: the tables of a saved result, with the current defaults overlaid by its arguments
    (for options newer than the file); printed and written to its ``.md``."""
    path = resolve(ref)
    doc = load(path)
    args = defaults()
    vars(args).update(doc["args"])
    rewrite_md(path, tables(doc, args))
    return 0
