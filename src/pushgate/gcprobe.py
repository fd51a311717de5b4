"""How long the garbage collector stops the event loop: a probe on ``gc.callbacks``.

Full (generation 2) collections scan every tracked object, and a node with many connections has
many: their pauses set the tail latency of every delivery. The probe times each collection
(``time.perf_counter`` at its start and stop) into a Prometheus histogram per generation, so
``/metrics`` shows the pauses an operator's clients feel, and the benchmarks read the longest.
It costs two clock reads and a dict lookup per collection, nothing per delivery.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcProbe:
    """Times every collection while installed; ``longest`` is the worst pause seen (seconds)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "pushgate_gc_pause_seconds", "Garbage collection pauses of the event loop's process",
            ["generation"], registry=registry, buckets=BUCKETS,
        )
        self._children = [self.pauses.labels(str(g)) for g in range(3)]
        self.longest = 0.0
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self._children[min(int(info.get("generation", 0)), 2)].observe(pause)
        if pause > self.longest:
            self.longest = pause


__all__ = ["GcProbe"]
