from twisted.internet import address, error
from twisted.trial.unittest import SynchronousTestCase

from netecho.datagram import DatagramGuard, is_group_address
from netecho.echo import DatagramEcho
from netecho.policies import ServedDatagrams
from netecho.stats import Stats


class FakeUDPTransport:
    def __init__(self, host="127.0.0.1", port=45000, fail=None):
        self.sent = []
        self.host = address.IPv4Address("UDP", host, port)
        self.fail = fail

    def getHost(self):
        return self.host

    def write(self, data, addr):
        if self.fail:
            raise self.fail
        self.sent.append((data, addr))


def make(own_ports=(), fail=None, rate=None, global_rate=None, **kw):
    """DatagramEcho served as the daemon serves it, on a fake port."""
    stats = Stats()
    guard = DatagramGuard(stats, set(own_ports), rate=rate, global_rate=global_rate)
    proto = ServedDatagrams(DatagramEcho(), stats, guard=guard, **kw)
    transport = FakeUDPTransport(fail=fail)
    proto.makeConnection(transport)
    return proto, transport, stats


class DatagramEchoTests(SynchronousTestCase):
    def test_protocol_alone(self):
        proto = DatagramEcho()
        transport = FakeUDPTransport()
        proto.makeConnection(transport)
        proto.datagramReceived(b"\x00abc", ("192.0.2.1", 7))
        self.assertEqual(transport.sent, [(b"\x00abc", ("192.0.2.1", 7))])

    def test_echo_whole(self):
        proto, transport, stats = make()
        data = b"\x00" * 65507
        proto.datagramReceived(data, ("127.0.0.1", 40000))
        self.assertEqual(transport.sent, [(data, ("127.0.0.1", 40000))])
        self.assertEqual((stats.datagrams_echoed, stats.bytes_echoed, stats.udp_peers), (1, 65507, 1))

    def test_guards(self):
        proto, transport, stats = make(own_ports={45000, 1234})
        cases = [
            (("127.0.0.1", 1023), "udp_privileged_source_port"),
            (("127.0.0.1", 0), "udp_privileged_source_port"),
            (("127.0.0.1", 1234), "udp_own_service_port"),
            (("224.0.0.1", 5000), "udp_group_source"),
            (("255.255.255.255", 5000), "udp_group_source"),
            (("ff02::1", 5000), "udp_group_source"),
            (("::ffff:239.1.1.1", 5000), "udp_group_source"),
        ]
        for addr, reason in cases:
            proto.datagramReceived(b"x", addr)
        self.assertEqual(transport.sent, [])
        self.assertEqual(
            stats.dropped,
            {"udp_privileged_source_port": 2, "udp_own_service_port": 1, "udp_group_source": 4},
        )

    def test_own_address(self):
        """Even if own_ports were empty, our own socket never gets a reply."""
        proto, transport, stats = make()
        proto.datagramReceived(b"x", ("::ffff:127.0.0.1", 45000))
        self.assertEqual(transport.sent, [])
        self.assertEqual(stats.dropped, {"udp_own_address": 1})

    def test_send_error_counted_not_raised(self):
        for fail in (OSError(11, "Resource temporarily unavailable"), error.MessageLengthError("too long")):
            proto, transport, stats = make(fail=fail)
            proto.datagramReceived(b"x", ("127.0.0.1", 40000))
            self.assertEqual(stats.dropped, {"udp_send_error": 1})
            self.assertEqual(stats.datagrams_echoed, 0)

    def test_stop_word(self):
        stops = []
        proto, transport, stats = make(stop_word=b"STOP", on_stop_word=lambda: stops.append(1))
        proto.datagramReceived(b"STOPPED\n", ("127.0.0.1", 40000))
        self.assertEqual(stops, [])
        proto.datagramReceived(b" STOP\r\n", ("127.0.0.1", 40000))
        self.assertEqual(stops, [1])
        self.assertEqual(len(transport.sent), 2)

    def test_stop_word_without_exit_on_stop(self):
        """Without --exit-on-stop (no on_stop_word) the stop word is just echoed."""
        proto, transport, stats = make(stop_word=b"STOP")
        proto.datagramReceived(b"STOP", ("127.0.0.1", 40000))
        self.assertEqual(transport.sent, [(b"STOP", ("127.0.0.1", 40000))])

    def test_is_group_address(self):
        for host in ("224.0.0.1", "239.255.255.255", "255.255.255.255", "ff05::2"):
            self.assertTrue(is_group_address(host), host)
        for host in ("127.0.0.1", "10.0.0.255", "223.1.1.1", "240.0.0.1", "::1", "fe80::1"):
            self.assertFalse(is_group_address(host), host)
