from twisted.internet import address, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from netecho.limits import ConnectionLimits, IdleSweeper, RateWindow, source_prefix
from tests.test_datagram import make


def peer(host):
    return address.IPv6Address("TCP", host, 5000) if ":" in host else address.IPv4Address("TCP", host, 5000)


class ConnectionLimitsTests(SynchronousTestCase):
    def test_per_source_with_mapped_addresses(self):
        limits = ConnectionLimits(total=10, per_source=2)
        self.assertEqual(limits.admit(peer("127.0.0.1")), (None, "127.0.0.1"))
        self.assertEqual(limits.admit(peer("::ffff:127.0.0.1")), (None, "127.0.0.1"))
        self.assertEqual(limits.admit(peer("127.0.0.1")), ("max_per_ip", None))
        self.assertEqual(limits.admit(peer("127.0.0.2")), (None, "127.0.0.2"))
        limits.release("127.0.0.1")
        self.assertEqual(limits.admit(peer("127.0.0.1")), (None, "127.0.0.1"))
        self.assertEqual(limits.active, 3)

    def test_total(self):
        limits = ConnectionLimits(total=2, per_source=0)
        self.assertEqual([limits.admit(peer("::1"))[0] for _ in range(3)], [None, None, "max_connections"])
        self.assertEqual(limits.admit(address.UNIXAddress(None)), ("max_connections", None))
        limits.release("::1")
        self.assertEqual(limits.admit(address.UNIXAddress(None)), (None, None))

    def test_zero_disables(self):
        limits = ConnectionLimits(total=0, per_source=0)
        for _ in range(50):
            self.assertIsNone(limits.admit(peer("10.0.0.1"))[0])


class Session:
    def __init__(self):
        self.received = 0
        self.transport = StringTransport()


class IdleSweeperTests(SynchronousTestCase):
    def test_aborts_only_sessions_without_progress(self):
        clock = task.Clock()
        aborted = []
        sweeper = IdleSweeper(clock, timeout=10, on_abort=aborted.append)
        busy, idle = Session(), Session()
        sweeper.track(busy)
        sweeper.track(idle)
        sweeper.startService()
        for _ in range(12):
            busy.received += 1
            clock.advance(1)
        self.assertEqual(aborted, [idle])
        self.assertTrue(idle.transport.disconnecting)
        self.assertFalse(busy.transport.disconnecting)
        self.assertNotIn(idle, sweeper.sessions)
        sweeper.stopService()

    def test_zero_disables(self):
        clock = task.Clock()
        sweeper = IdleSweeper(clock, timeout=0)
        sweeper.track(Session())
        sweeper.startService()
        self.assertEqual(clock.getDelayedCalls(), [])


class UDPRateTests(SynchronousTestCase):
    def test_per_network_and_global(self):
        clock = task.Clock()
        proto, transport, stats = make(
            rate=RateWindow(2, clock=clock.seconds),
            global_rate=RateWindow(3, size=1, clock=clock.seconds),
        )
        for port in range(40000, 40004):  # one /24: two get through
            proto.datagramReceived(b"x", ("192.0.2.7", port))
        proto.datagramReceived(b"x", ("198.51.100.1", 40000))  # another network: third token
        proto.datagramReceived(b"x", ("203.0.113.1", 40000))  # global bucket empty
        self.assertEqual(len(transport.sent), 3)
        self.assertEqual(stats.dropped, {"udp_rate_limited": 2, "udp_global_rate_limited": 1})
        clock.advance(1)
        proto.datagramReceived(b"x", ("192.0.2.8", 40000))
        self.assertEqual(len(transport.sent), 4)

    def test_global_rate_alone(self):
        clock = task.Clock()
        proto, transport, stats = make(global_rate=RateWindow(1, size=1, clock=clock.seconds))
        proto.datagramReceived(b"x", ("192.0.2.7", 40000))
        proto.datagramReceived(b"x", ("198.51.100.7", 40000))
        self.assertEqual(stats.dropped, {"udp_global_rate_limited": 1})

    def test_window_table_is_bounded(self):
        clock = task.Clock()
        window = RateWindow(2, size=3, clock=clock.seconds)
        self.assertEqual([window.allow(k) for k in "abc"], [True] * 3)
        # Keys beyond the table share one count.
        self.assertEqual([window.allow(k) for k in "defg"], [True, True, False, False])
        self.assertEqual(len(window._counts), 4)
        clock.advance(1)
        self.assertTrue(window.allow("g"))

    def test_prefixes(self):
        self.assertEqual(source_prefix("192.0.2.77"), "192.0.2")
        self.assertEqual(source_prefix("::ffff:192.0.2.77"), "192.0.2")
        self.assertEqual(source_prefix("2001:db8:1:2ff:abcd::1"), "2001:db8:1:200::/56")
