"""
netecho's reactor (netecho/reactor.py) driven by hand, one wait at a time,
with and without its C wait (netecho._speedups.poll_dispatch): the same
echoes, closes and errors either way.
"""

from __future__ import annotations

import os
import select
import socket
import tempfile
import time

from twisted.internet import main
from twisted.trial.unittest import SynchronousTestCase

from netecho import reactor as netecho_reactor
from netecho.echo import EchoFactory
from netecho.policies import Served
from netecho.stats import Stats
from netecho.transports import DIRECT_READS

from tests import peers


def turn_until(r, done, limit: float = 5.0) -> None:
    """Run the reactor's wait until C{done()} (at most C{limit} seconds)."""
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError("the reactor did not get there in time")
        r.runUntilCurrent()
        r.doPoll(0.05)


class ServedByHand:
    def served(self):
        r = netecho_reactor.DirectEPollReactor()
        stats = Stats()
        factory = Served(EchoFactory(), stats, "echo", stop_word=b"STOP")
        tcp = r.listenTCP(0, factory, interface="127.0.0.1")
        path = os.path.join(tempfile.mkdtemp(), "s")
        unix = r.listenUNIX(path, factory, mode=0o600)
        self.addCleanup(lambda: (tcp.stopListening(), unix.stopListening()))
        return r, stats, factory, (("127.0.0.1", tcp.getHost().port), path)

    def test_echo_stop_word_and_close(self):
        r, stats, factory, (tcp_address, path) = self.served()
        clients = [socket.create_connection(tcp_address)]
        unix = socket.socket(socket.AF_UNIX)
        unix.connect(path)
        clients.append(unix)
        for c in clients:
            self.addCleanup(c.close)
            c.setblocking(False)
        replies = [b"", b""]

        def read():
            for i, c in enumerate(clients):
                try:
                    replies[i] += c.recv(65536)
                except BlockingIOError:
                    pass

        for i, c in enumerate(clients):
            c.sendall(b"hello %d\n" % i)
        turn_until(r, lambda: (read(), all(replies))[1])
        self.assertEqual(replies, [b"hello 0\n", b"hello 1\n"])
        clients[0].sendall(b"STOP\n")
        clients[1].shutdown(socket.SHUT_WR)  # half-close: the server closes after the echo
        turn_until(r, lambda: not factory.protocols)
        self.assertEqual((stats.tcp, stats.unix, stats.bytes_echoed), (1, 1, 8 + 8 + 5))

    def test_reader_error_is_logged_and_closes_that_connection(self):
        r, stats, factory, (tcp_address, _) = self.served()

        class Boom(Exception):
            pass

        def explode(data):
            raise Boom("on purpose")

        c = socket.create_connection(tcp_address)
        self.addCleanup(c.close)
        turn_until(r, lambda: factory.protocols)
        (session,) = factory.protocols
        session.dataReceived = explode
        c.sendall(b"x")
        turn_until(r, lambda: not factory.protocols)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


class PythonWaitTests(ServedByHand, SynchronousTestCase):
    """The reactor's wait in Python (no netecho._speedups)."""

    def setUp(self):
        self.patch(netecho_reactor, "poll_dispatch", None)


class CWaitTests(ServedByHand, SynchronousTestCase):
    """The reactor's wait in C (netecho._speedups.poll_dispatch)."""

    def setUp(self):
        if netecho_reactor.poll_dispatch is None:
            peers.missing("netecho._speedups is not built (needs gcc and Python's headers; scripts/test builds it)")


class Readable:
    """A selectable for poll_dispatch alone."""

    def __init__(self, sock, outcome=None):
        self.sock = sock
        self.outcome = outcome
        self.reads = 0

    def doRead(self):
        self.reads += 1
        self.sock.recv(100)
        if isinstance(self.outcome, Exception) and not isinstance(self.outcome, main.error.ConnectionDone):
            raise self.outcome
        return self.outcome


class PollDispatchTests(SynchronousTestCase):
    def setUp(self):
        if netecho_reactor.poll_dispatch is None:
            peers.missing("netecho._speedups is not built (needs gcc and Python's headers; scripts/test builds it)")
        self.ep = select.epoll()
        self.addCleanup(self.ep.close)

    def pair(self, events=select.EPOLLIN):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.ep.register(a.fileno(), events)
        return a, b

    def dispatch(self, selectables, timeout=1.0, direct=()):
        return netecho_reactor.poll_dispatch(self.ep.fileno(), 16, timeout, selectables, direct,
                                             main.CONNECTION_DONE, main.CONNECTION_LOST)

    def test_outcomes(self):
        quiet, q = self.pair()
        closing, c = self.pair()
        failing, f = self.pair()
        writable, _ = self.pair(select.EPOLLOUT)
        gone, g = self.pair()
        error = ValueError("raised by doRead")
        sel = {quiet.fileno(): Readable(quiet), closing.fileno(): Readable(closing, main.CONNECTION_DONE),
               failing.fileno(): Readable(failing, error), writable.fileno(): Readable(writable)}
        for s in (q, c, f, g):
            s.send(b"x")
        got = {fd: (events, outcome) for fd, events, outcome in self.dispatch(sel)}
        self.assertEqual(got, {
            closing.fileno(): (0, main.CONNECTION_DONE),
            failing.fileno(): (-1, error),
            writable.fileno(): (select.EPOLLOUT, None),
        })
        self.assertIsNotNone(error.__traceback__)
        self.assertEqual([sel[s.fileno()].reads for s in (quiet, closing, failing, writable)], [1, 1, 1, 0])

    def test_timeout(self):
        self.pair()
        start = time.monotonic()
        self.assertEqual(self.dispatch({}, timeout=0.2), [])
        self.assertGreaterEqual(time.monotonic() - start, 0.19)

    def test_direct_reads(self):
        """A selectable of a direct type: recv() and its protocol's dataReceived() in C."""
        got = []

        class Protocol:
            def dataReceived(self, data):
                got.append(data)

        class Direct:
            protocol = Protocol()

            def doRead(self):
                raise AssertionError("not called for a direct type")

        a, b = self.pair()
        sel = {a.fileno(): Direct()}
        payload = os.urandom(70000)
        b.sendall(payload)
        while sum(map(len, got)) < len(payload):
            self.assertEqual(self.dispatch(sel, direct=(Direct,)), [])
        self.assertEqual(b"".join(got), payload)
        self.assertLessEqual(max(map(len, got)), 65536)
        b.shutdown(socket.SHUT_WR)  # end of file, and still plain EPOLLIN (a close adds EPOLLHUP)
        self.assertEqual(self.dispatch(sel, direct=(Direct,)), [(a.fileno(), 0, main.CONNECTION_DONE)])

    def test_netechos_direct_types(self):
        """The transports read in C are exactly the ones whose doRead() is recv() then dataReceived()."""
        from netecho.transports import TCPServer, UNIXServer, _EagerWrites

        self.assertEqual(DIRECT_READS, (TCPServer, UNIXServer))
        for kind in DIRECT_READS:
            self.assertIs(kind.doRead, _EagerWrites.doRead)
            self.assertEqual(kind.bufferSize, 65536)  # what the C read takes at once

    def test_instance_doread_wins(self):
        """A direct type whose doRead was replaced on the instance (as abortConnection does) gets that called."""
        calls = []

        class Direct:
            protocol = None

            def doRead(self):
                raise AssertionError("the class's doRead")

        a, b = self.pair()
        selectable = Direct()
        selectable.doRead = lambda: calls.append("instance") or None
        b.send(b"x")
        self.assertEqual(self.dispatch({a.fileno(): selectable}, direct=(Direct,)), [])
        self.assertEqual(calls, ["instance"])
