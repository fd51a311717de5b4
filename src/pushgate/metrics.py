"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Per-delivery counts come from the hub's plain integer counter, read at scrape time, so the
fan-out path pays no metrics cost.

The registry is the node's own (tests run several nodes in one process), so the standard
process, platform and Python GC collectors are added to it explicitly: without them an
operator loses CPU, memory and file-descriptor series. Counters do not expose ``_created``
series (one more series per counter that dashboards never use). The metric names are the
contract of ``deploy/grafana-dashboard.json`` and ``deploy/prometheus-alerts.yml``: a test
checks every name those files use against a running node's ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .gcprobe import GcProbe

if TYPE_CHECKING:
    from .hub import Hub
    from .web.connection import Connection

disable_created_metrics()  # type: ignore[no-untyped-call]  # process-wide in prometheus_client; pushgate never wants the _created series


class _HubCollector(Collector):
    def __init__(self, hub: Hub, ready: Callable[[], bool]) -> None:
        self.hub = hub
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield GaugeMetricFamily("pushgate_connections", "Open client connections", value=len(hub.connections))
        yield GaugeMetricFamily("pushgate_users", "Distinct users connected", value=hub.user_count())
        yield GaugeMetricFamily("pushgate_channels", "Channels with local subscribers", value=hub.channel_count())
        yield GaugeMetricFamily(
            "pushgate_subscriptions", "Channel subscriptions of local connections", value=hub.subscription_count()
        )
        yield CounterMetricFamily(
            "pushgate_messages_out", "Frames handed to client transports", value=hub.delivered
        )
        yield GaugeMetricFamily("pushgate_ready", "1 when ready to serve", value=1 if self.ready() else 0)
        info = GaugeMetricFamily("pushgate_build_info", "Always 1; the labels say which pushgate runs",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info


# What a broker may report about itself, read at scrape time where it has the attribute:
# (attribute, metric name, help, kind).
_BROKER_STATS = (
    ("history_bytes", "pushgate_history_bytes", "Bytes of history this node's memory broker keeps", "gauge"),
    ("history_channels", "pushgate_history_channels", "Channels keeping history in the memory broker", "gauge"),
    ("history_positions", "pushgate_history_positions",
     "Channels the memory broker remembers by position only (history expired or evicted)", "gauge"),
    ("idempotency_keys", "pushgate_idempotency_keys", "Publish idempotency keys remembered in memory", "gauge"),
    ("acked_streams", "pushgate_acked_streams", "User streams with a stored acknowledgement in memory", "gauge"),
    ("dropped_messages", "pushgate_broker_dropped_messages",
     "Messages from the broker dropped as invalid (not UTF-8, bad envelope)", "counter"),
)


class _BrokerCollector(Collector):
    def __init__(self, broker: object) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        healthy = getattr(self.broker, "healthy", None)
        if isinstance(healthy, bool):
            yield GaugeMetricFamily("pushgate_broker_up", "1 while the broker link is up (0: /readyz is 503)",
                                    value=1 if healthy else 0)
        # The Redis broker's publish pipelines (backends/redis/publishing.py, one per Redis server):
        # how deep each one is now. Read defensively, at scrape time; the memory broker has none.
        pipes = getattr(self.broker, "publish_pipes", None)
        if isinstance(pipes, list):
            depth = GaugeMetricFamily("pushgate_broker_publish_in_flight",
                                      "Publications queued or awaiting Redis's reply, per Redis server",
                                      labels=["server"])
            limit = GaugeMetricFamily("pushgate_broker_publish_in_flight_limit",
                                      "Most publications a pipeline holds before publishers wait (max_in_flight)",
                                      labels=["server"])
            for pipe in pipes:
                depth.add_metric([str(pipe.name)], pipe.in_flight)
                limit.add_metric([str(pipe.name)], pipe.max_in_flight)
            yield depth
            yield limit
        for attr, name, help_text, kind in _BROKER_STATS:
            value = getattr(self.broker, attr, None)
            if isinstance(value, int | float):
                family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
                yield family(name, help_text, value=value)


class NodeMetrics:
    """The node's counters, plus gauges read from ``hub``, ``ready()`` and the broker at scrape time."""

    def __init__(self, hub: Hub, ready: Callable[[], bool], broker: object | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_HubCollector(hub, ready))
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            self.registry.register(standard)
        self.gc = GcProbe(self.registry)  # installed by the node while it runs
        if broker is not None:
            self.registry.register(_BrokerCollector(broker))
        r = self.registry
        self.connections_total = Counter(
            "pushgate_connections_opened", "Connections accepted", ["transport"], registry=r
        )
        self.connections_closed = Counter(
            "pushgate_connections_closed",
            "Connections closed, by transport and close code ('client': the client closed or went away)",
            ["transport", "code"], registry=r,
        )
        self.connection_duration = Histogram(
            "pushgate_connection_duration_seconds", "How long connections stayed open", ["transport"],
            registry=r, buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
        )
        self.broker_link_losses = Counter(
            "pushgate_broker_link_losses",
            "Times the broker link went down (each is followed by a refill from history)", registry=r,
        )
        self.subscriptions_total = Counter("pushgate_subscribes", "Successful subscribes", registry=r)
        self.messages_in = Counter("pushgate_messages_in", "Client frames received", ["transport"], registry=r)
        self.published_total = Counter(
            "pushgate_published", "Publications, broadcasts and user sends accepted", registry=r
        )
        self.publish_latency = Histogram(
            "pushgate_publish_latency_seconds",
            "Time for the broker to accept a publication",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.slow_consumers = Counter("pushgate_slow_consumers", "Connections closed as slow", registry=r)
        self.errors_total = Counter("pushgate_client_errors", "Error replies sent", ["transport", "code"],
                                    registry=r)
        self.gap_fills_total = Counter("pushgate_gap_fills", "Stream gaps filled from history", registry=r)
        self.resyncs_total = Counter(
            "pushgate_resyncs", "Stream gaps history could not fill: subscribers told to resync in-band", registry=r
        )
        self.broker_rewinds = Counter(
            "pushgate_broker_rewinds",
            "Streams found behind what this node delivered after a broker link loss (writes lost in a "
            "failover) and given a new epoch: their subscribers resync in-band",
            registry=r,
        )
        self.history_reads = Counter(
            "pushgate_history_reads",
            "History reads this node made: recover (shared by concurrent recoveries of a channel) or fill",
            ["reason"],
            registry=r,
        )

    # -- connection lifetimes: what the close debug line and the close-code series report --------
    def opened(self, conn: Connection) -> None:
        """Count ``conn``; its close code is recorded by :meth:`Connection.close` itself."""
        conn.opened_at = time.monotonic()
        self.connections_total.labels(conn.transport_name).inc()

    def closed(self, conn: Connection) -> tuple[int | None, str, float] | None:
        """``(code, reason, seconds open)`` of a connection :meth:`opened` saw, counted once;
        None if it was not seen or was counted already. Code None: the client closed."""
        if not conn.opened_at:
            return None
        duration = time.monotonic() - conn.opened_at
        conn.opened_at = 0.0
        code = "client" if conn.close_code is None else str(conn.close_code)
        self.connections_closed.labels(conn.transport_name, code).inc()
        self.connection_duration.labels(conn.transport_name).observe(duration)
        return conn.close_code, conn.close_reason, duration
