"""Periodic publications that run exactly once per tick across the cluster.

Ticks are aligned to the wall clock (tick *n* of a job is due at ``n * every``), so every node
agrees on which tick is due. One node holds the scheduler lease (renewed every third of its
ttl) and runs the jobs; another takes over within one lease period if the leader dies. Each tick
is also claimed once through the lease store, so a tick is never published twice even while
the lease changes hands. A failing job logs and keeps its schedule.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import msgspec

from .backends.lease import LeaseStore
from .config import ScheduleConfig
from .errors import ConfigError, PushgateError

log = logging.getLogger(__name__)
LEASE = "scheduler"


def _one_line(exc: BaseException) -> str:
    """``exc`` as one short line: its text (or its type's name when it has none)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, TimeoutError) and text == "TimeoutError":
        text = "timed out"
    return text[:300]


def load_callable(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("schedule.call", f"cannot load {spec!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigError("schedule.call", f"{spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


Publish = Callable[[str, bytes], Awaitable[object]]


class Scheduler:
    """Runs ``jobs`` while ``holder`` holds the scheduler lease in ``leases``; publishes with ``publish``.

    It needs only these four things, not a whole node, so it can be tested (and embedded) with a
    lease store and a function.
    """

    def __init__(
        self,
        jobs: Sequence[ScheduleConfig],
        leases: LeaseStore,
        holder: str,
        lease_ttl: float,
        publish: Publish,
    ) -> None:
        self.jobs = list(jobs)
        self.leases = leases
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.publish = publish
        self.calls = {job.name: load_callable(job.call) for job in self.jobs if job.call}
        self.is_leader = False
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if not self.jobs:
            return
        self._tasks.append(asyncio.create_task(self._lease_loop(), name="scheduler-lease"))
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._job_loop(job), name=f"job-{job.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.is_leader:
            try:
                await self.leases.release(LEASE, self.holder)
            except Exception as exc:
                log.warning("could not release scheduler lease: %s", exc)
            self.is_leader = False
        if self._http is not None:
            await self._http.close()

    async def _lease_loop(self) -> None:
        ttl = self.lease_ttl
        while True:
            try:
                leader = await self.leases.acquire(LEASE, self.holder, ttl)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduler lease check failed: %s", exc)
                leader = False
            if leader != self.is_leader:
                log.info("node %s %s the scheduler lease", self.holder, "took" if leader else "lost")
            self.is_leader = leader
            await asyncio.sleep(ttl / 3)

    async def _job_loop(self, job: ScheduleConfig) -> None:
        while True:
            now = time.time()
            tick = math.floor(now / job.every) + 1
            await asyncio.sleep(max(0.0, tick * job.every - now))
            if not self.is_leader:
                continue
            try:
                claim_ttl = max(job.every * 2, self.lease_ttl * 2)
                if not await self.leases.claim_once(f"tick:{job.name}:{tick}", claim_ttl):
                    continue
                await self.run_once(job)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, PushgateError) as exc:
                if job.url is None and not isinstance(exc, PushgateError):  # the app's own code: keep its traceback
                    log.exception("scheduled job %s failed (tick %d); it keeps its schedule", job.name, tick)
                else:
                    # the URL is down or the broker is: outside our control, so one line per tick
                    # (a traceback every few seconds would bury everything else in the log)
                    log.warning("job %s: tick %d skipped: %s", job.name, tick, _one_line(exc))
            except Exception:
                log.exception("scheduled job %s failed (tick %d); it keeps its schedule", job.name, tick)

    async def run_once(self, job: ScheduleConfig) -> bool:
        """Run a job now; True if something was published."""
        if job.call:
            fn = self.calls[job.name]
            # a plain function may block (I/O, CPU): keep it off the event loop
            data = await (fn() if inspect.iscoroutinefunction(fn) else asyncio.to_thread(fn))
            if data is None:
                return False
            payload = msgspec.json.encode(data)
        else:
            assert job.url is not None
            if self._http is None:
                self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=min(job.every, 10.0)))
            async with self._http.get(job.url) as resp:
                if resp.status != 200:
                    log.warning("job %s: %s answered %d, tick skipped", job.name, job.url, resp.status)
                    return False
                body = await resp.read()
            try:
                msgspec.json.decode(body)
            except msgspec.DecodeError:
                log.warning("job %s: %s did not return JSON, tick skipped", job.name, job.url)
                return False
            payload = body
        await self.publish(job.channel, payload)
        return True
