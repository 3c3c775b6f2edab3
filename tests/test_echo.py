"""The protocols alone, and with the policies wrapped around them (netecho.policies)."""

import random

from twisted.internet import address, interfaces
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from netecho.echo import Echo, EchoFactory
from netecho.policies import Served, escape
from netecho.randomnum import RandomNumberFactory
from netecho.stats import Stats


def connect(factory, peer=None, unix=False):
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=peer or address.IPv4Address("TCP", "127.0.0.1", 5000))
    if unix:
        # StringTransport is not a Unix transport; say it is, as a real one does.
        alsoProvides(transport, interfaces.IUNIXTransport)
    proto.makeConnection(transport)
    return proto, transport


class EchoProtocolTests(SynchronousTestCase):
    """Echo on its own: bytes in, the same bytes out."""

    def test_bytes_back(self):
        proto, transport = connect(EchoFactory())
        self.assertIsInstance(proto, Echo)
        proto.dataReceived(b"\x00binary\xff no newline")
        self.assertEqual(transport.value(), b"\x00binary\xff no newline")

    def test_registers_its_transport_as_producer(self):
        """The transport pauses its own reading while its write buffer is full."""
        proto, transport = connect(EchoFactory())
        self.assertIs(transport.producer, transport)
        self.assertTrue(transport.streaming)

    def test_half_close(self):
        proto, transport = connect(EchoFactory())
        self.assertTrue(interfaces.IHalfCloseableProtocol.providedBy(proto))
        proto.dataReceived(b"tail")
        proto.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"tail")


class ServedEchoTests(SynchronousTestCase):
    """Echo inside the policies, as the daemon serves it."""

    def setUp(self):
        self.stats = Stats()
        self.stops = []
        self.factory = Served(EchoFactory(), self.stats, "echo", stop_word=b"STOP",
                              on_stop_word=lambda: self.stops.append(1))

    def test_byte_exact(self):
        proto, transport = connect(self.factory)
        data = bytes(range(256)) * 100
        for i in range(0, len(data), 777):
            proto.dataReceived(data[i : i + 777])
        self.assertEqual(transport.value(), data)
        self.assertEqual(self.stats.bytes_echoed, len(data))
        self.assertEqual((proto.received, proto.sent), (len(data), len(data)))
        self.assertEqual((self.stats.tcp, self.stats.unix), (1, 0))
        self.assertEqual(self.stats.active, {"tcp": 1})

    def test_producer_is_the_real_transport_through_the_wrapper(self):
        proto, transport = connect(self.factory)
        self.assertIs(transport.producer, proto)
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

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
        self.assertEqual(self.stats.active, {"tcp": 0})

    def test_stop_word_split_across_reads(self):
        proto, transport = connect(self.factory)
        for piece in (b"a\n ST", b"O", b"P \r", b"\nnot echoed"):
            proto.dataReceived(piece)
        self.assertEqual(transport.value(), b"a\n STOP \r\n")
        self.assertTrue(transport.disconnecting)

    def test_no_stop_word(self):
        factory = Served(EchoFactory(), self.stats, "echo", stop_word=b"")
        proto, transport = connect(factory)
        proto.dataReceived(b"STOP\n")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"STOP\n")

    def test_half_close_forwarded(self):
        """Twisted's ProtocolWrapper does not forward half-close; ours does."""
        proto, transport = connect(self.factory)
        self.assertTrue(interfaces.IHalfCloseableProtocol.providedBy(proto))
        proto.dataReceived(b"tail without newline")
        proto.readConnectionLost()
        self.assertEqual(transport.value(), b"tail without newline")
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.stops, [])

    def test_unix_counted_as_unix(self):
        connect(self.factory)
        proto, transport = connect(self.factory, address.UNIXAddress(None), unix=True)
        self.assertEqual((self.stats.tcp, self.stats.unix), (1, 1))
        self.assertEqual(proto.peer, "unix:@peer")
        proto.dataReceived(b"abc")
        self.assertEqual(self.stats.bytes_sent["unix"], 3)

    def test_log_data(self):
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = Served(EchoFactory(), self.stats, "echo", log_data=True)
        proto, transport = connect(factory)
        proto.dataReceived(b"secret\x00\n")
        self.assertIn("secret\\x00\\n", [e.get("data") for e in events])

    def test_escape(self):
        self.assertEqual(escape(b"a\x00\n'"), "a\\x00\\n'")
        self.assertEqual(escape(b"x" * 300, 10), "xxxxxxxxxx... (+290 bytes)")


class RandomNumberTests(SynchronousTestCase):
    def test_one_number_per_line(self):
        stats = Stats()
        factory = Served(RandomNumberFactory(rng=random.Random(7)), stats, "random")
        proto, transport = connect(factory)
        proto.dataReceived(b"a\nb")
        proto.dataReceived(b"c\n\n" + b"x" * 100000)
        expected = random.Random(7)
        numbers = [expected.randrange(2**31) for _ in range(3)]
        self.assertEqual(transport.value(), "".join(f"{n}\n" for n in numbers).encode())
        self.assertEqual(stats.bytes_echoed, 0)
        self.assertEqual(stats.bytes_sent["random"], len(transport.value()))
        self.assertEqual((stats.tcp, stats.random, stats.opened), (0, 1, {"random": 1}))

    def test_answers_only_as_the_transport_takes_them(self):
        """64 Ki line feeds in one read: batches while the buffer has room, the rest owed (a count)."""
        from netecho.randomnum import BATCH_LINES

        class Buffered(StringTransport):
            def write(self, data):
                super().write(data)
                if len(self.value()) > 65536 and self.producer is not None:
                    self.producer.pauseProducing()

        proto = RandomNumberFactory(rng=random.Random(3)).buildProtocol(None)
        transport = Buffered()
        proto.makeConnection(transport)
        self.assertIs(transport.producer, proto)
        proto.dataReceived(b"\n" * 65536)
        self.assertLess(len(transport.value()), 65536 + BATCH_LINES * 11 + 1)
        self.assertEqual(transport.producerState, "paused")  # reading stops too
        proto.readConnectionLost()  # half-close: everything owed is still answered
        self.assertFalse(transport.disconnecting)
        total = 0
        for _ in range(1000):
            total += transport.value().count(b"\n")
            transport.clear()
            if not proto.owed:
                break
            proto.resumeProducing()
        total += transport.value().count(b"\n")
        self.assertEqual(total, 65536)
        self.assertTrue(transport.disconnecting)

    def test_stop_word_closes(self):
        factory = Served(RandomNumberFactory(rng=random.Random(1)), Stats(), "random", stop_word=b"STOP")
        proto, transport = connect(factory)
        proto.dataReceived(b"STOP\nmore\n")
        self.assertEqual(transport.value().count(b"\n"), 1)
        self.assertTrue(transport.disconnecting)
