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
