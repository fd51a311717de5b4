"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process).

Per-delivery counts come from the hub's plain integer counter, read at scrape time, so the
fan-out path pays no metrics cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .hub import Hub


class _HubCollector(Collector):
    def __init__(self, hub: Hub, ready: Callable[[], bool]) -> None:
        self.hub = hub
        self.ready = ready

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield GaugeMetricFamily("pushgate_connections", "Open client connections", value=len(hub.connections))
        yield GaugeMetricFamily("pushgate_users", "Distinct users connected", value=hub.user_count())
        yield GaugeMetricFamily("pushgate_channels", "Channels with local subscribers", value=len(hub.channels))
        yield GaugeMetricFamily(
            "pushgate_subscriptions", "Channel subscriptions of local connections", value=hub.subscription_count()
        )
        yield CounterMetricFamily(
            "pushgate_messages_out", "Frames handed to client transports", value=hub.delivered
        )
        yield GaugeMetricFamily("pushgate_ready", "1 when ready to serve", value=1 if self.ready() else 0)


class NodeMetrics:
    """The node's counters, plus gauges read from ``hub`` and ``ready()`` at scrape time."""

    def __init__(self, hub: Hub, ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_HubCollector(hub, ready))
        r = self.registry
        self.connections_total = Counter("pushgate_connections_opened", "Connections accepted", registry=r)
        self.subscriptions_total = Counter("pushgate_subscribes", "Successful subscribes", registry=r)
        self.messages_in = Counter("pushgate_messages_in", "Client frames received", registry=r)
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
        self.errors_total = Counter("pushgate_client_errors", "Error replies sent", ["code"], registry=r)
        self.gap_fills_total = Counter("pushgate_gap_fills", "Stream gaps filled from history", registry=r)
        self.resyncs_total = Counter(
            "pushgate_resyncs", "Stream gaps history could not fill: subscribers told to resync in-band", registry=r
        )
        self.history_reads = Counter(
            "pushgate_history_reads",
            "History reads this node made: recover (shared by concurrent recoveries of a channel) or fill",
            ["reason"],
            registry=r,
        )
