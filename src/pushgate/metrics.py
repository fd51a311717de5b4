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

from .gcprobe import GcProbe

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
        yield GaugeMetricFamily("pushgate_channels", "Channels with local subscribers", value=hub.channel_count())
        yield GaugeMetricFamily(
            "pushgate_subscriptions", "Channel subscriptions of local connections", value=hub.subscription_count()
        )
        yield CounterMetricFamily(
            "pushgate_messages_out", "Frames handed to client transports", value=hub.delivered
        )
        yield GaugeMetricFamily("pushgate_ready", "1 when ready to serve", value=1 if self.ready() else 0)


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
        self.gc = GcProbe(self.registry)  # installed by the node while it runs
        if broker is not None:
            self.registry.register(_BrokerCollector(broker))
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
