"""Prometheus view of the daemon's counters (``--metrics``), read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.web import resource, server

from netecho.faults import FAULT_KINDS
from netecho.stats import ECHO_LABELS, Stats

STREAM_SERVICES = ("tcp", "unix", "random", "pb")


class StatsCollector:
    """
    Turns L{Stats} into metric families when Prometheus scrapes, so the echo
    path only bumps plain integers and pays nothing for metrics.
    """

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self):
        s = self.stats
        connections = CounterMetricFamily(
            "netecho_connections", "Stream connections accepted, by service.", labels=["service"])
        active = GaugeMetricFamily(
            "netecho_active_connections", "Stream connections open now, by service.", labels=["service"])
        for service in STREAM_SERVICES:
            connections.add_metric([service], s.opened.get(service, 0))
            active.add_metric([service], s.active.get(service, 0))
        yield connections
        yield active

        echoed = CounterMetricFamily(
            "netecho_bytes_echoed", "Bytes echoed back, by service.", labels=["service"])
        for service in ECHO_LABELS:
            echoed.add_metric([service], s.bytes_sent[service])
        yield echoed

        datagrams = CounterMetricFamily(
            "netecho_datagrams", "UDP datagrams received, by outcome (echoed or why not).",
            labels=["outcome"])
        datagrams.add_metric(["echoed"], s.datagrams_echoed)
        refused = CounterMetricFamily(
            "netecho_refused", "Connections refused or aborted, by reason.", labels=["reason"])
        for reason, count in sorted(s.dropped.items()):
            if reason.startswith("udp_"):
                datagrams.add_metric([reason[4:]], count)
            else:
                refused.add_metric([reason], count)
        yield datagrams
        yield refused

        calls = CounterMetricFamily(
            "netecho_rpc_calls", "PB calls, by method and outcome.", labels=["method", "outcome"])
        for (method, outcome), count in sorted(s.rpc_outcomes.items()):
            calls.add_metric([method, outcome], count)
        yield calls

        faults = CounterMetricFamily(
            "netecho_faults", "Faults injected on purpose (--faults), by fault.", labels=["fault"])
        for fault in FAULT_KINDS:
            faults.add_metric([fault], s.faults.get(fault, 0))
        yield faults

        lookups = CounterMetricFamily(
            "netecho_lookups", "DNS lookups served over RPC, by outcome.", labels=["outcome"])
        for outcome in ("ok", "error"):
            lookups.add_metric([outcome], s.lookups.get(outcome, 0))
        yield lookups

        yield GaugeMetricFamily("netecho_uptime_seconds", "Seconds since the daemon started.",
                                value=s.uptime())


class MetricsPage(resource.Resource):
    """C{GET /metrics}: the text exposition, rendered in the reactor thread."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def metrics_site(stats: Stats) -> server.Site:
    """A web site serving the daemon's metrics at C{/metrics} (404 elsewhere)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatsCollector(stats))
    root = resource.Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    site = server.Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
