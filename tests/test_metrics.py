from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from netecho.metrics import StatsCollector
from netecho.stats import Stats


def samples(stats):
    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class MetricsTests(SynchronousTestCase):
    def test_families(self):
        stats = Stats()
        stats.opened = {"tcp": 3, "pb": 1}
        stats.active = {"tcp": 1, "pb": 0}
        stats.sent("tcp", 100)
        stats.sent("tcp", 7)
        stats.sent("random", 50)
        stats.datagram_sent(10, ("192.0.2.1", 5000))
        stats.datagram_sent(20, ("192.0.2.1", 5000))
        stats.dropped = {"udp_privileged_source_port": 4, "max_per_ip": 1}
        stats.rpc_outcomes = {("add", "ok"): 2, ("quit", "error"): 1}
        stats.lookups = {"ok": 5}
        stats.fault("drop", 3)
        got = samples(stats)
        expected = {
            ("netecho_connections_total", (("service", "tcp"),)): 3,
            ("netecho_connections_total", (("service", "pb"),)): 1,
            ("netecho_connections_total", (("service", "unix"),)): 0,
            ("netecho_active_connections", (("service", "tcp"),)): 1,
            ("netecho_bytes_echoed_total", (("service", "tcp"),)): 107,
            ("netecho_bytes_echoed_total", (("service", "udp"),)): 30,
            ("netecho_datagrams_total", (("outcome", "echoed"),)): 2,
            ("netecho_datagrams_total", (("outcome", "privileged_source_port"),)): 4,
            ("netecho_refused_total", (("reason", "max_per_ip"),)): 1,
            ("netecho_rpc_calls_total", (("method", "add"), ("outcome", "ok"))): 2,
            ("netecho_rpc_calls_total", (("method", "quit"), ("outcome", "error"))): 1,
            ("netecho_lookups_total", (("outcome", "ok"),)): 5,
            ("netecho_lookups_total", (("outcome", "error"),)): 0,
            ("netecho_faults_total", (("fault", "drop"),)): 3,
            ("netecho_faults_total", (("fault", "reset_after"),)): 0,
        }
        for key, value in expected.items():
            self.assertEqual(got[key], value, key)
        self.assertIn(("netecho_uptime_seconds", ()), got)


class PageTests(SynchronousTestCase):
    """The /metrics page: process metrics, build info, every label from the start, OpenMetrics, 404."""

    def get(self, path: bytes, accept: bytes | None = None):
        from twisted.web.test.requesthelper import DummyRequest

        from netecho.metrics import metrics_site

        site = metrics_site(Stats())
        parts = [p for p in path.split(b"/") if p]
        request = DummyRequest(parts[1:])
        if accept:
            request.requestHeaders.setRawHeaders(b"accept", [accept])
        page = site.resource.getChildWithDefault(parts[0], request)
        body = page.render(request)
        return request, body

    def test_text(self):
        request, body = self.get(b"/metrics")
        text = body.decode()
        self.assertIn("text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0].decode())
        for line in ('netecho_datagrams_total{outcome="rate_limited"} 0.0',
                     'netecho_refused_total{reason="evicted"} 0.0',
                     'netecho_rpc_calls_total{method="add",outcome="error"} 0.0',
                     'netecho_faults_total{fault="drop"} 0.0',
                     "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
                     "python_info"):
            self.assertIn(line, text)
        from netecho import __version__

        self.assertIn(f'netecho_build_info{{version="{__version__}"}} 1.0', text)

    def test_openmetrics(self):
        request, body = self.get(b"/metrics", accept=b"application/openmetrics-text; version=1.0.0")
        self.assertIn("application/openmetrics-text",
                      request.responseHeaders.getRawHeaders(b"content-type")[0].decode())
        self.assertTrue(body.rstrip().endswith(b"# EOF"))

    def test_other_paths_404(self):
        request, body = self.get(b"/metrics/anything")
        self.assertEqual(request.responseCode, 404)


class ReadyPageTests(SynchronousTestCase):
    """/ready: 200 while the daemon says it serves, 503 otherwise, 404 below it and without a check."""

    def get(self, path: bytes, ready=None):
        from twisted.web.test.requesthelper import DummyRequest

        from netecho.metrics import metrics_site

        site = metrics_site(Stats(), ready=ready)
        parts = [p for p in path.split(b"/") if p]
        request = DummyRequest(parts[1:])
        page = site.resource.getChildWithDefault(parts[0], request)
        return request, page.render(request)

    def test_follows_the_check(self):
        state = {"ready": False}
        request, body = self.get(b"/ready", ready=lambda: state["ready"])
        self.assertEqual((request.responseCode, body), (503, b"not ready\n"))
        state["ready"] = True
        request, body = self.get(b"/ready", ready=lambda: state["ready"])
        self.assertIn(request.responseCode, (None, 200))
        self.assertEqual(body, b"ready\n")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])

    def test_elsewhere_404(self):
        request, _ = self.get(b"/ready/more", ready=lambda: True)
        self.assertEqual(request.responseCode, 404)
        request, _ = self.get(b"/ready")  # no check given: no such page
        self.assertEqual(request.responseCode, 404)
