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
    def __init__(self, key=None, started=0.0, received=0, gone=False):
        self.received = received
        self.sent = received
        self.started = started
        self.limit_key = key
        self.gone = gone
        self.peer = f"peer-{id(self)}"
        self.transport = StringTransport()

    def peer_gone(self):
        return self.gone


class GuardTests(SynchronousTestCase):
    def guard(self, total=0, per_source=0):
        from netecho.limits import Guard
        from netecho.stats import Stats
        from twisted.logger import Logger

        self.now = [100.0]
        self.stats = Stats()
        return Guard(self.stats, ConnectionLimits(total, per_source), IdleSweeper(task.Clock(), 0), Logger(),
                     clock=lambda: self.now[0])

    def open(self, guard, host, **kw):
        accepted, key = guard.admit(peer(host))
        if not accepted:
            return None
        session = Session(key, started=self.now[0], **kw)
        guard.opened(session)
        return session

    def test_dead_connections_of_that_source_stop_counting(self):
        """A source at its cap whose earlier peers have closed (EOF not read yet) is not refused."""
        guard = self.guard(per_source=2)
        a, b = self.open(guard, "192.0.2.1"), self.open(guard, "192.0.2.1")
        self.assertIsNone(self.open(guard, "192.0.2.1"))  # both alive: refused
        a.gone = True
        c = self.open(guard, "192.0.2.1")
        self.assertIsNotNone(c)
        self.assertEqual(guard.limits.active, 2)
        guard.closed(a)  # its connectionLost comes later: counted once only
        self.assertEqual(guard.limits.active, 2)
        guard.closed(b)
        guard.closed(c)
        self.assertEqual((guard.limits.active, guard._by_key), (0, {}))
        self.assertEqual(self.stats.dropped, {"max_per_ip": 1})

    def test_full_evicts_the_slowest_old_enough(self):
        guard = self.guard(total=3)
        fast = self.open(guard, "192.0.2.1", received=10_000_000)
        slow = self.open(guard, "192.0.2.2", received=1)
        slower = self.open(guard, "192.0.2.3", received=0)
        self.now[0] += 0.5  # all younger than EVICT_MIN_AGE: refused
        self.assertIsNone(self.open(guard, "192.0.2.9"))
        self.now[0] += 1
        newcomer = self.open(guard, "192.0.2.9")
        self.assertIsNotNone(newcomer)
        self.assertTrue(slower.transport.disconnecting)  # aborted
        self.assertFalse(slow.transport.disconnecting)
        self.assertEqual(self.stats.dropped, {"max_connections": 1, "evicted": 1})
        guard.closed(slower)
        self.assertEqual(guard.limits.active, 3)
        # The newcomer is protected while young; slow goes next; fast never.
        self.assertIsNotNone(self.open(guard, "192.0.2.10"))
        self.assertTrue(slow.transport.disconnecting)
        self.now[0] += 1000  # the newcomers (nothing moved) go; fast (>1 KiB/s on average) stays
        self.assertIsNotNone(self.open(guard, "192.0.2.11"))
        self.assertIsNotNone(self.open(guard, "192.0.2.12"))
        self.assertTrue(newcomer.transport.disconnecting)
        self.assertFalse(fast.transport.disconnecting)
        self.now[0] += 0.1  # the last two are young, fast is fast: no one to evict
        self.assertIsNone(self.open(guard, "192.0.2.13"))


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

    def test_within_ten_percent(self):
        """--idle-timeout 2: a connection goes between 2 s and 2.2 s after its last progress, wherever it falls."""
        for start in (0.0, 0.03, 0.17, 0.199):
            clock = task.Clock()
            gone = []
            sweeper = IdleSweeper(clock, timeout=2, on_abort=lambda s: gone.append(clock.seconds()))
            sweeper.startService()
            clock.advance(start)
            session = Session()
            sweeper.track(session)
            while not gone and clock.seconds() < 5:
                clock.advance(0.01)
            sweeper.stopService()
            self.assertTrue(gone, start)
            self.assertGreaterEqual(gone[0] - start, 2.0 - 1e-9)
            self.assertLessEqual(gone[0] - start, 2.2 + 1e-9)

    def test_progress_restarts_the_wait(self):
        clock = task.Clock()
        gone = []
        sweeper = IdleSweeper(clock, timeout=2, on_abort=gone.append)
        sweeper.startService()
        session = Session()
        sweeper.track(session)
        clock.pump([0.1] * 15)
        session.received += 1  # at 1.5 s
        clock.pump([0.1] * 30)  # 4.5 s: idle since 1.5-1.7 s, so gone by 3.9 s at the latest
        self.assertEqual(gone, [session])
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
