import random

from twisted.internet import address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from netecho.echo import EchoFactory, escape
from netecho.randomnum import RandomNumberFactory
from netecho.stats import Stats


def connect(factory, peer=None):
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=peer or address.IPv4Address("TCP", "127.0.0.1", 5000))
    proto.makeConnection(transport)
    return proto, transport


class EchoTests(SynchronousTestCase):
    def setUp(self):
        self.stats = Stats()
        self.stops = []
        self.factory = EchoFactory(self.stats, on_stop_word=lambda: self.stops.append(1))

    def test_byte_exact(self):
        proto, transport = connect(self.factory)
        data = bytes(range(256)) * 100
        for i in range(0, len(data), 777):
            proto.dataReceived(data[i : i + 777])
        self.assertEqual(transport.value(), data)
        self.assertEqual(self.stats.bytes_echoed, len(data))
        self.assertEqual((self.stats.tcp, self.stats.unix), (1, 0))

    def test_registers_itself_as_producer(self):
        """The transport pauses its own reading while its write buffer is full."""
        proto, transport = connect(self.factory)
        self.assertIs(transport.producer, transport)
        self.assertTrue(transport.streaming)

    def test_stop_word_echoes_then_closes(self):
        proto, transport = connect(self.factory)
        proto.dataReceived(b"hello\nSTOP\nafter\n")
        self.assertEqual(transport.value(), b"hello\nSTOP\n")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        proto.dataReceived(b"more")
        self.assertEqual(transport.value(), b"hello\nSTOP\n")
        proto.connectionLost(None)
        self.assertEqual(self.stops, [1])

    def test_no_stop_word(self):
        factory = EchoFactory(self.stats, stop_word=b"")
        proto, transport = connect(factory)
        proto.dataReceived(b"STOP\n")
        self.assertFalse(transport.disconnecting)

    def test_half_close(self):
        """The client's EOF: what was echoed stays, then the server closes."""
        proto, transport = connect(self.factory)
        proto.dataReceived(b"tail without newline")
        proto.readConnectionLost()
        self.assertEqual(transport.value(), b"tail without newline")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.stops, [])

    def test_unix_counted_as_unix(self):
        proto, transport = connect(self.factory, address.UNIXAddress(None))
        from zope.interface import alsoProvides
        from twisted.internet.interfaces import IUNIXTransport

        # StringTransport is not a Unix transport; say it is, as a real one does.
        proto2 = self.factory.buildProtocol(None)
        t2 = StringTransport(peerAddress=address.UNIXAddress(None))
        alsoProvides(t2, IUNIXTransport)
        proto2.makeConnection(t2)
        self.assertEqual((self.stats.tcp, self.stats.unix), (1, 1))
        self.assertEqual(proto2.peer, "unix:@peer")

    def test_escape(self):
        self.assertEqual(escape(b"a\x00\n'"), "a\\x00\\n'")
        self.assertEqual(escape(b"x" * 300, 10), "xxxxxxxxxx... (+290 bytes)")


class RandomNumberTests(SynchronousTestCase):
    def test_one_number_per_line(self):
        stats = Stats()
        factory = RandomNumberFactory(stats, rng=random.Random(7))
        proto, transport = connect(factory)
        proto.dataReceived(b"a\nb")
        proto.dataReceived(b"c\n\n" + b"x" * 100000)
        expected = random.Random(7)
        numbers = [expected.randrange(2**31) for _ in range(3)]
        self.assertEqual(transport.value(), "".join(f"{n}\n" for n in numbers).encode())
        self.assertEqual(stats.bytes_echoed, 0)

    def test_stop_word_closes(self):
        factory = RandomNumberFactory(Stats(), rng=random.Random(1))
        proto, transport = connect(factory)
        proto.dataReceived(b"STOP\nmore\n")
        self.assertEqual(transport.value().count(b"\n"), 1)
        self.assertTrue(transport.disconnecting)
