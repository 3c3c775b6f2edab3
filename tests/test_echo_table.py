"""
netecho's reactor serving stream echoes in C (netecho._speedups.EchoTable,
netecho/reactor.py, Echo's table methods in netecho/echo.py).

Two levels: the table on its own, driven with a real epoll and real
sockets; and whole echo services on a DirectEPollReactor running in a
thread of its own (trial's reactor is Twisted's, so the other echo tests do
not go through the table; the daemon's integration tests do).
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import socket
import struct
import threading
import time

from twisted.trial.unittest import SkipTest, TestCase

from netecho import echo, reactor as netecho_reactor
from netecho.testing import start

from tests import peers
from tests.test_echo_sockets import connect, read_all, send_and_collect


def table_or_skip():
    if netecho_reactor.EchoTable is None:
        if peers.peers_required():
            peers.missing("netecho._speedups is not built (needs gcc and Python's headers; scripts/test builds it)")
        raise SkipTest("netecho._speedups is not built")
    return netecho_reactor.EchoTable


class Session:
    """Stands for the Echo session an entry belongs to."""


class EchoTableTests(TestCase):
    """The table alone: a real epoll, loopback TCP pairs, a wake-up pipe."""

    def setUp(self):
        self.table = table_or_skip()()
        self.epoll = select.epoll()
        self.addCleanup(self.epoll.close)
        self.wake_r, self.wake_w = os.pipe()
        self.addCleanup(os.close, self.wake_r)
        self.addCleanup(os.close, self.wake_w)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.listener = listener

    def pair(self) -> tuple[socket.socket, socket.socket]:
        client = socket.create_connection(self.listener.getsockname())
        server, _ = self.listener.accept()
        for s in (client, server):
            self.addCleanup(s.close)
        server.setblocking(False)
        client.settimeout(5)
        self.epoll.register(server.fileno(), select.EPOLLIN)
        return client, server

    def poll_once(self, timeout: float = 5.0):
        """Wake the table's wait with the pipe once the sockets' data is in."""
        time.sleep(0.05)  # loopback delivers at once; this only orders the pipe last
        os.write(self.wake_w, b"x")
        events, turns = self.table.poll(self.epoll.fileno(), 16, timeout)
        os.read(self.wake_r, 100)
        return events, turns

    def test_echoes_in_c_and_counts(self):
        """Plain reads are echoed in C; take/flush report the bytes once; other fds come back as events."""
        client, server = self.pair()
        session = Session()
        self.table.add(server.fileno(), session, b"STOP", b"")
        self.assertEqual(len(self.table), 1)
        client.sendall(b"hello\nworld")
        events, turns = self.poll_once()
        self.assertEqual((events, turns), ([(self.wake_r, select.EPOLLIN)], []))
        self.assertEqual(client.recv(100), b"hello\nworld")
        self.assertEqual(self.table.flush(), [(session, 11)])
        self.assertEqual(self.table.flush(), [])
        client.sendall(b"!" * 1000)
        self.poll_once()
        self.assertEqual(read_exactly(client, 1000), b"!" * 1000)
        self.assertEqual((self.table.take(server.fileno()), self.table.take(server.fileno())), (1000, 0))
        # The scanner's state after "world" (a line that cannot be the word) and 1000 "!".
        self.assertEqual(self.table.remove(server.fileno()), (session, 0, None))
        self.assertEqual((len(self.table), self.table.remove(server.fileno())), (0, None))

    def test_stop_line_goes_to_python(self):
        """A chunk with the stop line is not echoed: it comes back whole, the entry removed."""
        client, server = self.pair()
        session = Session()
        self.table.add(server.fileno(), session, b"STOP", b"")
        client.sendall(b"one\n")
        self.poll_once()
        client.sendall(b"two\n STOP \nthree")
        events, turns = self.poll_once()
        self.assertEqual(events, [(self.wake_r, select.EPOLLIN)])
        self.assertEqual(turns, [(server.fileno(), session, (2, 16, b"", b"two\n STOP \nthree", 4))])
        self.assertEqual(len(self.table), 0)
        self.assertEqual(client.recv(100), b"one\n")  # and nothing of the second chunk

    def test_piece_of_the_word_pending(self):
        """A chunk that ends in a piece of the word keeps it; the next chunk goes to Python."""
        client, server = self.pair()
        session = Session()
        self.table.add(server.fileno(), session, b"STOP", b"")
        client.sendall(b"ab\nST")
        self.poll_once()
        self.assertEqual(read_exactly(client, 5), b"ab\nST")
        client.sendall(b"OP\n")
        _, turns = self.poll_once()
        self.assertEqual(turns, [(server.fileno(), session, (2, 3, b"ST", b"OP\n", 5))])

    def test_without_a_stop_word(self):
        client, server = self.pair()
        self.table.add(server.fileno(), Session(), None, None)
        client.sendall(b"\nSTOP\n")
        _, turns = self.poll_once()
        self.assertEqual((turns, client.recv(100)), ([], b"\nSTOP\n"))

    def test_end_of_file_and_reset(self):
        """EOF is kind 3; a reset (recv fails) is kind 4 with errno; both remove the entry."""
        client, server = self.pair()
        session = Session()
        self.table.add(server.fileno(), session, None, None)
        client.shutdown(socket.SHUT_WR)
        _, turns = self.poll_once()
        self.assertEqual(turns, [(server.fileno(), session, (3, 0, None, None, 0))])
        client2, server2 = self.pair()
        self.table.add(server2.fileno(), session, None, None)
        client2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client2.sendall(b"x")  # unread by the server: the close below resets
        client2.close()
        events, turns = self.poll_once()
        # A reset reports EPOLLIN|EPOLLHUP|EPOLLERR: not a plain read, so an event for Python.
        self.assertIn(server2.fileno(), [fd for fd, _ in events])
        self.assertEqual(turns, [])
        self.table.remove(server2.fileno())
        self.assertEqual(len(self.table), 0)

    def test_recv_error_is_kind_4(self):
        """recv() failing (here: ENOTCONN on a socket that never connected) is kind 4 with errno."""
        lone = socket.socket()
        self.addCleanup(lone.close)
        lone.setblocking(False)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        # epoll reports a plain EPOLLIN for the pipe; the table's descriptor is the socket's
        # number only through dup2, so the readiness is the pipe's and the recv the socket's.
        os.write(w, b"x")
        self.epoll.register(r, select.EPOLLIN)
        keep = os.dup(r)  # keeps the pipe's file, and so its epoll registration, alive
        self.addCleanup(os.close, keep)
        session = Session()
        self.table.add(r, session, None, None)
        os.dup2(lone.fileno(), r)  # r now names the socket; epoll still watches the pipe's file
        events, turns = self.table.poll(self.epoll.fileno(), 16, 5.0)
        self.assertEqual(events, [])
        self.assertEqual(turns, [(r, session, (4, errno.ENOTCONN, None, None, 0))])

    def test_partial_send(self):
        """When send() takes part of a chunk, the rest comes back as kind 1, none of it lost."""
        client, server = self.pair()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        session = Session()
        self.table.add(server.fileno(), session, None, None)
        data = os.urandom(1 << 20)
        sent = 0
        turns = []
        for _ in range(100):  # never reading: the echo's send fills up
            if turns:
                break
            sent += client.send(data[sent:sent + 65536])
            _, turns = self.poll_once()
        self.assertEqual(len(turns), 1)
        fd, who, (kind, n, pending, left, unsynced) = turns[0]
        self.assertEqual((fd, who, kind, pending), (server.fileno(), session, 1, None))
        self.assertTrue(0 < len(left) <= n)
        echoed = unsynced + n - len(left)
        got = read_exactly(client, echoed)
        self.assertTrue(got + left == data[:echoed + len(left)])

    def test_timeout_and_nothing_ready(self):
        """With nothing ready the wait ends at the timeout (a table echo does not end it)."""
        client, server = self.pair()
        self.table.add(server.fileno(), Session(), None, None)
        started = time.monotonic()
        self.assertEqual(self.table.poll(self.epoll.fileno(), 16, 0.2), ([], []))
        waited = time.monotonic() - started
        self.assertGreaterEqual(waited, 0.19)
        self.assertLess(waited, 3.0)
        self.assertEqual(self.table.poll(self.epoll.fileno(), 16, 0), ([], []))

        def later():
            time.sleep(0.1)
            client.sendall(b"served in C while the wait goes on")

        t = threading.Thread(target=later)
        t.start()
        self.assertEqual(self.table.poll(self.epoll.fileno(), 16, 0.5), ([], []))
        t.join()
        self.assertEqual(client.recv(100), b"served in C while the wait goes on")

    def test_bad_arguments(self):
        self.assertRaises(ValueError, self.table.add, -1, Session(), None, None)
        self.assertRaises(ValueError, self.table.add, 5, Session(), "STOP", None)
        self.assertEqual((self.table.take(12345), self.table.remove(12345)), (0, None))


def read_line(s: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        chunk = s.recv(100)
        if not chunk:
            break
        out += chunk
    return out


def read_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


class ThreadedReactor:
    """A DirectEPollReactor serving echo services in a thread of its own."""

    def __init__(self, test: TestCase):
        self.reactor = netecho_reactor.DirectEPollReactor()
        self.test = test
        self.thread = threading.Thread(target=self.reactor.run, kwargs={"installSignalHandlers": False})
        self.services = []

    def serve(self, kind: str):
        service = start(kind, self.reactor)
        self.services.append(service)
        return service

    def __enter__(self):
        self.thread.start()
        return self

    def call(self, f, *args):
        """Run f in the reactor's thread; its result."""
        done = threading.Event()
        box = []

        def run():
            try:
                box.append((True, f(*args)))
            except BaseException as e:
                box.append((False, e))
            finally:
                done.set()

        self.reactor.callFromThread(run)
        if not done.wait(10):
            raise AssertionError("the reactor thread did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def __exit__(self, *exc):
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(20)
        self.test.assertFalse(self.thread.is_alive(), "the reactor thread did not stop")
        for service in self.services:
            if service.path is not None:
                shutil.rmtree(os.path.dirname(service.path), ignore_errors=True)


class TableEchoTests(TestCase):
    """Echo services on netecho's reactor, where the table serves them."""

    def setUp(self):
        table_or_skip()

    def test_ping_pong_served_by_the_table(self):
        """
        Many small exchanges: all echoed, counted exactly (live and after the
        close), and after the first turn Python's doRead is not called.
        """
        calls = []
        real = echo.Echo._doReadInC

        def counting(session):
            calls.append(session)
            return real(session)

        self.patch(echo.Echo, "_doReadInC", counting)
        with ThreadedReactor(self) as threaded:
            for kind in ("tcp", "unix"):
                service = threaded.serve(kind)
                with connect(service) as s:
                    for i in range(300):
                        message = b"message %d\n" % i
                        s.sendall(message)
                        self.assertEqual(read_exactly(s, len(message)), message)
                    total = sum(len(b"message %d\n" % i) for i in range(300))
                    self.assertEqual(threaded.call(lambda: service.stats.bytes_echoed), total)
                    sessions = threaded.call(lambda: list(threaded.reactor._echoes.flush()))
                    self.assertEqual(sessions, [])  # bytes_echoed brought every count in
                    s.sendall(b"one more\n")
                    self.assertEqual(read_exactly(s, 9), b"one more\n")
                self.assertLess(len(calls), 10)
                calls.clear()
                # The close: the session left the table, its counters whole.
                for _ in range(100):
                    if threaded.call(lambda: service.stats.closed_bytes.get(kind)):
                        break
                    time.sleep(0.05)
                self.assertEqual(threaded.call(lambda: service.stats.closed_bytes.get(kind)), total + 9)
                self.assertEqual(threaded.call(lambda: service.stats.bytes_echoed), total + 9)
                self.assertEqual(threaded.call(lambda: len(threaded.reactor._echoes)), 0)

    def test_big_stream_both_ways(self):
        """16 MiB both ways at once: partial sends leave the table and come back; byte for byte."""
        data = os.urandom(16 << 20).replace(b"\n", b"x")
        with ThreadedReactor(self) as threaded:
            for kind in ("tcp", "unix"):
                service = threaded.serve(kind)
                reply = send_and_collect(service, data)
                self.assertEqual(len(reply), len(data))
                self.assertTrue(reply == data)
                for _ in range(100):
                    if threaded.call(lambda: service.stats.closed_bytes.get(kind)):
                        break
                    time.sleep(0.05)
                self.assertEqual(threaded.call(lambda: service.stats.bytes_echoed), len(data))

    def test_stop_word_and_half_close(self):
        """The stop word mid-stream after many table turns; a half-close; both exact."""
        head = b"".join(b"line %d\n" % i for i in range(20000))
        data = head + b" STOP\r\n" + b"after\n" * 100
        with ThreadedReactor(self) as threaded:
            for kind in ("tcp", "unix"):
                service = threaded.serve(kind)
                with connect(service) as s:
                    for i in range(50):  # into the table first
                        s.sendall(b"x\n")
                        self.assertEqual(read_exactly(s, 2), b"x\n")
                    s.sendall(b"ST")  # a piece of the word, pending in the table
                    self.assertEqual(read_exactly(s, 2), b"ST")
                    s.sendall(b"OPPED\n")  # not the word after all
                    self.assertEqual(read_exactly(s, 6), b"OPPED\n")
                    s.sendall(data)
                    self.assertEqual(read_all(s), head + b" STOP\r\n")
                self.assertEqual(send_and_collect(service, b"half\nclosed"), b"half\nclosed")


    def test_closed_by_the_server(self):
        """
        The server closes echoes that are in the table (here: it drops them
        all, as a stop does): each leaves the table with its counts whole,
        and a later connection that gets the same descriptor is not echoed
        by C (they are random-number clients here).
        """
        with ThreadedReactor(self) as threaded:
            service = threaded.serve("tcp")
            randoms = threaded.serve("random")
            clients = [connect(service) for _ in range(3)]
            try:
                for round_ in range(20):
                    for s in clients:
                        s.sendall(b"%d\n" % round_)
                        self.assertEqual(read_exactly(s, len(b"%d\n" % round_)), b"%d\n" % round_)
                self.assertEqual(threaded.call(lambda: len(threaded.reactor._echoes)), 3)
                fds = threaded.call(lambda: {p.fileno() for p in threaded.reactor.getReaders()
                                             if isinstance(getattr(p, "protocol", None), echo.Echo)})
                # The clients to come, made now, so that their descriptors are
                # not among the ones about to be freed.
                spare = [socket.socket() for _ in range(6)]
                for r in spare:
                    self.addCleanup(r.close)
                threaded.call(service.stop)  # aborts them: the clients see a reset
                for s in clients:
                    self.assertRaises(ConnectionResetError, read_all, s)
            finally:
                for s in clients:
                    s.close()
            each = sum(len(b"%d\n" % r) for r in range(20))
            for _ in range(100):
                if threaded.call(lambda: service.stats.closed_bytes.get("tcp")) == 3 * each:
                    break
                time.sleep(0.05)
            self.assertEqual(threaded.call(lambda: service.stats.closed_bytes.get("tcp")), 3 * each)
            self.assertEqual(threaded.call(lambda: service.stats.bytes_echoed), 3 * each)
            self.assertEqual(threaded.call(lambda: len(threaded.reactor._echoes)), 0)
            # New random-number connections, one at a time, until one of their
            # server sides has an echo's old descriptor: the kernel hands out
            # the lowest free one, and only three of the six freed were
            # clients', so that comes by the fourth.
            others = []
            try:
                for r in spare:
                    r.settimeout(10)
                    r.connect((randoms.host, randoms.port))
                    others.append(r)
                    r.sendall(b"not an echo\n")
                    self.assertRegex(read_line(r), rb"^\d+\n$")
                    reused = threaded.call(lambda: {p.fileno() for p in threaded.reactor.getReaders()
                                                    if getattr(p, "protocol", None) is not None})
                    if reused & fds:
                        break
                for r in others:  # and they stay random-number clients
                    r.sendall(b"still not\n")
                    self.assertRegex(read_line(r), rb"^\d+\n$")
            finally:
                for r in others:
                    r.close()
            self.assertTrue(reused & fds, "the random clients got none of the echoes' descriptors")

    def test_daemon_stop_counts_everything(self):
        """Connections still open when the reactor stops are counted whole."""
        with ThreadedReactor(self) as threaded:
            service = threaded.serve("unix")
            s = connect(service)
            self.addCleanup(s.close)
            for i in range(50):
                s.sendall(b"abc\n")
                self.assertEqual(read_exactly(s, 4), b"abc\n")
            self.assertEqual(threaded.call(lambda: len(threaded.reactor._echoes)), 1)
        self.assertEqual(service.stats.closed_bytes.get("unix"), 200)
        self.assertEqual(service.stats.bytes_echoed, 200)
