"""Garbage-collection pauses: a probe that measures them and a policy that keeps them short.

Full (generation 2) collections scan every tracked object, and a node with many connections has
many: their pauses set the tail latency of every delivery (measured: p99 at 5k connections and
10 msg/s fell from 233 ms to 65 ms with full collections off). Two parts:

* :class:`GcProbe` times each collection (``gc.callbacks``: a clock read at start and stop) into
  the ``pushgate_gc_pause_seconds`` histogram per generation and the longest pause into
  ``pushgate_gc_pause_max_seconds``; it costs nothing per delivery.
* :class:`GcPolicy` moves long-lived objects out of the collector's sight with ``gc.freeze()``:
  once after start-up (modules, the app, the node) and again every ``gc_refreeze_connections``
  accepted connections, so a full collection walks only what is young instead of every
  connection the node holds. Frozen objects are still freed by reference counting when they
  die; only *cyclic* garbage among them waits. Each connection class states how many objects
  in cycles a closed one leaves (:attr:`~pushgate.web.connection.Connection.cyclic_garbage`:
  0 for the lean WebSocket, which a test proves acyclic; ~50 for the aiohttp-served
  transports). When the estimate reaches a quarter of the frozen objects (CPython's own rule
  for full collections, applied to garbage instead of growth), or after 100,000 closes
  whatever the estimate, the policy unfreezes, collects everything once and freezes again:
  frozen garbage stays bounded, and connections that leave no cycles never cost a full pause
  (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

log = logging.getLogger(__name__)

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RECLAIM_DELAY = 0.5  # seconds from the close that makes a reclaim due to the reclaim
RECLAIM_EVERY_CLOSES = 100_000  # closed connections after which a reclaim runs whatever the estimate
GARBAGE_SHARE = 0.25  # reclaim when estimated frozen garbage reaches this share of the frozen objects
_started_once = False  # the start-up freeze of this process happened


class GcProbe:
    """Times every collection while installed; ``longest`` is the worst pause seen (seconds)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "pushgate_gc_pause_seconds", "Garbage collection pauses of the event loop's process",
            ["generation"], registry=registry, buckets=BUCKETS,
        )
        self.longest_gauge = Gauge(
            "pushgate_gc_pause_max_seconds", "Longest garbage collection pause since the node started",
            registry=registry,
        )
        self.frozen = Gauge(
            "pushgate_gc_frozen_objects", "Objects frozen out of garbage collections (gc_freeze)",
            registry=registry,
        )
        self.frozen.set_function(gc.get_freeze_count)
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
            self.longest_gauge.set(pause)


class GcPolicy:
    """Freezes long-lived objects after start-up and every ``refreeze_connections`` accepted
    connections; reclaims the cyclic garbage closed connections leave (see the module).

    The node calls :meth:`connected` / :meth:`disconnected` per connection (a counter each, on
    the handshake path, never per delivery). Freezing is ``gc.freeze()``: it moves the tracked
    objects into a permanent generation in O(1); a young collection first (gens 0-1, a few
    thousand objects: well under a millisecond) keeps this moment's cyclic garbage out of it.

    Freezing *during* a burst of connections, not after it, matters: once start-up is frozen,
    CPython sees almost no long-lived objects, so its 25 % rule runs full collections often while
    connections pour in, and each one walked every connection accepted so far (measured: 51 ms
    at 19,000 connections). Freezing every ``refreeze_connections`` keeps each walk to at most
    that many connections' objects.
    """

    def __init__(self, *, enabled: bool, refreeze_connections: int, garbage_share: float = GARBAGE_SHARE) -> None:
        self.enabled = enabled
        self.refreeze_connections = refreeze_connections
        self.garbage_share = garbage_share
        self.freezes = 0
        self.reclaims = 0
        self._accepted = 0  # since the last freeze
        self._closed = 0  # since the last reclaim
        self.garbage = 0.0  # estimated cyclic objects closed connections left frozen since the last reclaim
        self._timer: asyncio.TimerHandle | None = None
        # gc.get_freeze_count() walks the whole permanent generation (O(frozen objects), about a
        # millisecond at 19k connections): counted at most once per freeze, and only once there
        # is garbage to compare with it. Asked on every close, it made closing 5,000 sockets cost
        # seconds of CPU (measured with py-spy on a mass disconnect).
        self._frozen_count: int | None = None

    def start(self) -> None:
        """After start-up: everything alive now lives as long as the process.

        Once per process: a second node in the same process (tests, an embedding app that
        restarts its node) skips the full collection that start-up freezing begins with.
        """
        global _started_once
        if self.enabled and not _started_once:
            _started_once = True
            gc.collect()
            self._freeze()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def connected(self) -> None:
        if not self.enabled:
            return
        self._accepted += 1
        if self._accepted >= self.refreeze_connections:
            gc.collect(1)
            self._freeze()

    def disconnected(self, cyclic_garbage: float) -> None:
        """A connection closed, leaving about ``cyclic_garbage`` objects in reference cycles
        (its class says how many: :attr:`~pushgate.web.connection.Connection.cyclic_garbage`)."""
        if not self.enabled:
            return
        self._closed += 1
        self.garbage += cyclic_garbage
        if self._timer is None and self._reclaim_due():
            # a moment later, so a wave of closes is reclaimed once, not once per close
            self._timer = asyncio.get_running_loop().call_later(RECLAIM_DELAY, self._reclaim_if_due)

    def _reclaim_due(self) -> bool:
        if self._closed >= RECLAIM_EVERY_CLOSES:
            return True  # the estimates could be wrong: memory stays bounded anyway
        if self._closed < self.refreeze_connections or self.garbage <= 0.0:
            return False
        if self._frozen_count is None:
            self._frozen_count = gc.get_freeze_count()
        return self.garbage >= self.garbage_share * self._frozen_count

    def _reclaim_if_due(self) -> None:
        self._timer = None
        if self._reclaim_due():
            self.reclaim()

    def reclaim(self) -> None:
        """Unfreeze and collect everything once (cyclic garbage of closed connections), refreeze."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        self._freeze()
        log.info("gc reclaim after %d closed connections: %d unreachable objects freed (%.0f estimated) "
                 "in %.0f ms; %d objects frozen", self._closed, found, self.garbage,
                 (time.perf_counter() - started) * 1000, gc.get_freeze_count())
        self._closed = 0
        self.garbage = 0.0
        self.reclaims += 1

    def _freeze(self) -> None:
        gc.freeze()
        self._frozen_count = None
        self._accepted = 0
        self.freezes += 1


__all__ = ["GcPolicy", "GcProbe"]
