"""Prometheus view of the daemon's counters (``--metrics``), read at scrape time."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from twisted.web import pages, resource, server

from netecho import __version__
from netecho.faults import FAULT_KINDS
from netecho.stats import ECHO_LABELS, Stats

STREAM_SERVICES = ("tcp", "unix", "random", "pb")

#: Every documented label value is shown from the start, at 0, so that
#: alert rules have a series before the first event.
DATAGRAM_OUTCOMES = ("echoed", "privileged_source_port", "own_service_port", "own_address", "group_source",
                     "rate_limited", "global_rate_limited", "send_error", "kernel_dropped")
REFUSED_REASONS = (
    "max_connections", "max_per_ip", "evicted", "fd_limit", "accept_error", "idle_timeout",
    "pb_no_login_in_time", "pb_too_many_bytes_before_login", "pb_not_PB", "pb_failed_login",
    "pb_too_many_logins_in_progress", "pb_message_too_large", "pb_message_not_finished_in_time",
    "pb_too_many_unfinished_bytes", "pb_unknown_Banana_dialect",
    "pb_too_many_lookups_on_one_connection", "pb_too_many_lookups",
)
RPC_METHODS = ("add", "subtract", "echo", "stats", "lookup", "faults", "quit", "unknown")


class StatsCollector:
    """
    Turns L{Stats} into metric families when Prometheus scrapes, so the echo
    path only bumps plain integers and pays nothing for metrics.
    """

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self):
        s = self.stats.combined()
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

        outcomes = dict.fromkeys(DATAGRAM_OUTCOMES, 0)
        reasons = dict.fromkeys(REFUSED_REASONS, 0)
        for reason, count in s.dropped.items():
            if reason.startswith("udp_"):
                outcomes[reason[4:]] = count
            else:
                reasons[reason] = count
        outcomes["echoed"] = s.datagrams_echoed
        datagrams = CounterMetricFamily(
            "netecho_datagrams", "UDP datagrams received, by outcome (echoed or why not).",
            labels=["outcome"])
        for outcome, count in outcomes.items():
            datagrams.add_metric([outcome], count)
        refused = CounterMetricFamily(
            "netecho_refused", "Connections refused or aborted, by reason.", labels=["reason"])
        for reason, count in reasons.items():
            refused.add_metric([reason], count)
        yield datagrams
        yield refused

        calls = CounterMetricFamily(
            "netecho_rpc_calls", "PB calls, by method and outcome.", labels=["method", "outcome"])
        counts = {(method, outcome): 0 for method in RPC_METHODS for outcome in ("ok", "error")}
        counts.update(s.rpc_outcomes)
        for (method, outcome), count in counts.items():
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

        workers = self.stats.by_worker()
        if workers:  # --workers: how the load spreads
            per_connections = CounterMetricFamily(
                "netecho_worker_connections", "Stream connections accepted, by worker process.",
                labels=["worker"])
            per_bytes = CounterMetricFamily(
                "netecho_worker_bytes_echoed", "Bytes echoed back, by worker process.", labels=["worker"])
            for number, counts in workers.items():
                per_connections.add_metric([number], sum(counts.opened.values()))
                per_bytes.add_metric([number], counts.bytes_echoed)
            yield per_connections
            yield per_bytes

        yield GaugeMetricFamily("netecho_uptime_seconds", "Seconds since the daemon started.",
                                value=s.uptime())
        build = InfoMetricFamily("netecho_build", "netecho's version.")
        build.add_metric([], {"version": __version__})
        yield build


class MetricsPage(resource.Resource):
    """
    C{GET /metrics}: the exposition, rendered in the reactor thread, in
    OpenMetrics when the scraper's Accept header asks for it, else in
    Prometheus' text format.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request) -> bytes:
        if request.postpath not in ([], [b""]):  # /metrics/anything
            return pages.notFound().render(request)
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else None)
        request.setHeader(b"Content-Type", content_type.encode())
        return encoder(self.registry)


class ReadyPage(resource.Resource):
    """
    C{GET /ready}: 200 C{ready} while the daemon serves (with C{--workers},
    every worker), else 503 C{not ready}: for readiness probes and load
    balancers' health checks, which a connection to an echo port cannot
    answer (the kernel accepts it even with no worker to serve it).
    """

    isLeaf = True

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self.ready = ready

    def render_GET(self, request) -> bytes:
        if request.postpath not in ([], [b""]):
            return pages.notFound().render(request)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        if self.ready():
            return b"ready\n"
        request.setResponseCode(503)
        return b"not ready\n"


def metrics_site(stats: Stats, ready: Callable[[], bool] | None = None) -> server.Site:
    """
    A web site serving the daemon's metrics at C{/metrics} and, given
    C{ready}, its readiness at C{/ready} (404 elsewhere).
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatsCollector(stats))
    # The process's CPU, memory, descriptors and start time; Python's version.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    root = resource.Resource()
    root.putChild(b"metrics", MetricsPage(registry))
    if ready is not None:
        root.putChild(b"ready", ReadyPage(ready))
    site = server.Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
