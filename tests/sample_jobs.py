"""Scheduled jobs for test_scheduler.py (``call = "tests.sample_jobs:<name>"``).

The scheduler runs in the test's own process, so module-level counters let a test see how
often each job was called; ``reset()`` clears them between tests.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

calls: Counter[str] = Counter()


def reset() -> None:
    calls.clear()


def now() -> dict[str, Any]:
    """A plain (sync) job: the scheduler runs it in a thread."""
    calls["now"] += 1
    return {"now": time.time(), "call": calls["now"]}


async def async_now() -> dict[str, Any]:
    calls["async_now"] += 1
    await asyncio.sleep(0)
    return {"async": True, "now": time.time(), "call": calls["async_now"]}


def nothing() -> None:
    """Returns None: the tick is skipped, nothing is published."""
    calls["nothing"] += 1
    return None


def boom() -> dict[str, Any]:
    calls["boom"] += 1
    raise RuntimeError(f"job failure #{calls['boom']}")


async def async_boom() -> dict[str, Any]:
    calls["async_boom"] += 1
    raise RuntimeError("async job failure")


not_callable = 42
