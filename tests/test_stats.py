from twisted.trial.unittest import SynchronousTestCase

from netecho import stats as stats_module
from netecho.stats import Stats


class StatsTests(SynchronousTestCase):
    def test_summary_line(self):
        now = [100.0]
        s = Stats(clock=lambda: now[0])
        s.tcp, s.unix, s.pb = 9, 3, 2
        for port in range(4):
            s.udp_peer(("127.0.0.1", 5000 + port))
        s.udp_peer(("127.0.0.1", 5000))
        s.bytes_echoed, s.datagrams_echoed, s.rpc_calls = 40960, 17, 5
        now[0] += 311.7
        self.assertEqual(
            s.summary(),
            "summary: clients_served=12 tcp=9 unix=3 udp_peers=4 pb=2 "
            "bytes_echoed=40960 datagrams_echoed=17 rpc_calls=5 uptime_s=311",
        )

    def test_udp_peers_bounded(self):
        self.patch(stats_module, "MAX_TRACKED_UDP_PEERS", 10)
        s = Stats()
        for port in range(100):
            s.udp_peer(("::1", port))
        self.assertEqual(s.udp_peers, 10)

    def test_drops(self):
        s = Stats()
        s.drop("a")
        s.drop("a")
        s.drop("b")
        self.assertEqual(s.dropped, {"a": 2, "b": 1})
