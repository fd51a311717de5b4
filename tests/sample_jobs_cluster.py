"""A periodic job used by the cluster tests: returns the tick's wall-clock second."""

from __future__ import annotations

import time


def tick() -> dict[str, float]:
    return {"at": round(time.time(), 1)}
