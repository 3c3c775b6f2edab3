from twisted.trial.unittest import SynchronousTestCase

from netecho import stats as stats_module
from netecho.stats import Stats


class StatsTests(SynchronousTestCase):
    def test_summary_line(self):
        now = [100.0]
        s = Stats(clock=lambda: now[0])
        for label, count in (("tcp", 9), ("unix", 3), ("pb", 2)):
            for _ in range(count):
                s.connection_opened(label)
        for i in range(17):
            s.datagram_sent(1000, ("127.0.0.1", 5000 + i % 4))
        s.sent("tcp", 40960 - 17000)
        s.sent("random", 99)  # not an echo
        for _ in range(5):
            s.rpc_call("add")
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
            s.datagram_sent(1, ("::1", port))
        self.assertEqual(s.udp_peers, 10)

    def test_drops(self):
        s = Stats()
        s.drop("a")
        s.drop("a")
        s.drop("b")
        self.assertEqual(s.dropped, {"a": 2, "b": 1})

    def test_connections_by_label(self):
        s = Stats()
        s.connection_opened("tcp")
        s.connection_opened("pb")
        s.connection_closed("tcp")
        self.assertEqual((s.opened, s.active), ({"tcp": 1, "pb": 1}, {"tcp": 0, "pb": 1}))
        self.assertEqual((s.clients_served, s.pb), (1, 1))

    def test_random_clients_apart(self):
        """tcp means the TCP echo's clients, as the metrics' service label does; random ones are counted apart."""
        s = Stats()
        s.connection_opened("tcp")
        s.connection_opened("random")
        s.connection_opened("random")
        self.assertEqual((s.tcp, s.random, s.clients_served), (1, 2, 3))
        self.assertIn(" tcp=1 unix=0 random=2 ", s.summary())
        self.assertEqual((s.as_dict()["tcp"], s.as_dict()["random"]), (1, 2))
