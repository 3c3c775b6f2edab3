"""
The stream echo's read path (Echo._doRead) on real loopback and Unix
sockets, in process: backlog and ordering, the stop word mid-stream, passed
file descriptors, half-close.
"""

from __future__ import annotations

import array
import os
import socket
import threading

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from netecho import datagram

from netecho.testing import tcp_echo, unix_echo


def connect(service) -> socket.socket:
    if service.path is not None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(service.path)
    else:
        s = socket.create_connection((service.host, service.port))
    s.settimeout(10)
    return s


def read_all(s: socket.socket, limit: int = 64 << 20) -> bytes:
    chunks, total = [], 0
    while total < limit:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def send_and_collect(service, data: bytes, shut: bool = True) -> bytes:
    """Send C{data} from one thread while reading in another; the whole reply."""
    with connect(service) as s:
        def sender() -> None:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=sender)
        t.start()
        try:
            return read_all(s)
        finally:
            t.join(10)


class StreamReadPathTests(TestCase):
    async def test_big_stream_in_order(self):
        """16 MiB of random bytes both ways at once, byte for byte, over TCP and Unix."""
        data = os.urandom(16 << 20).replace(b"\n", b"x")  # no line at all, so no stop word
        for service in (tcp_echo(self), unix_echo(self)):
            reply = await threads.deferToThread(send_and_collect, service, data)
            self.assertEqual(len(reply), len(data))
            self.assertTrue(reply == data)

    async def test_stop_word_mid_stream(self):
        """Everything up to the stop line comes back, nothing after it, then the close."""
        head = os.urandom(300_000).replace(b"STOP", b"stop")
        data = head + b"\n \tSTOP\r\n" + b"after the stop word\n" * 1000
        for service in (tcp_echo(self), unix_echo(self)):
            reply = await threads.deferToThread(send_and_collect, service, data, False)
            self.assertTrue(reply == head + b"\n \tSTOP\r\n", (len(reply), len(head)))

    async def test_passed_descriptors_are_not_kept(self):
        """
        A Unix client that passes file descriptors gets its bytes echoed; the
        descriptors never become open files of the server's process.
        """
        service = unix_echo(self)

        def exchange() -> tuple[bytes, int, int]:
            before = len(os.listdir("/proc/self/fd"))
            r, w = os.pipe()
            with connect(service) as s:
                s.sendmsg([b"with fds\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]))])
                reply = b""
                while len(reply) < 9:
                    reply += s.recv(100)
                os.close(r)
                os.close(w)
                s.sendall(b"more\n")
                reply += s.recv(100)
            return reply, before, len(os.listdir("/proc/self/fd"))

        reply, before, after = await threads.deferToThread(exchange)
        self.assertEqual(reply, b"with fds\nmore\n")
        # (The server's side of the connection may still be closing: at most that one.)
        self.assertLessEqual(after, before + 1)
        self.assertEqual(service.stats.unix, 1)

    async def test_half_close(self):
        """The client shuts down its sending side: all of it comes back, then EOF."""
        data = b"line one\nline two, no newline at the end"
        for service in (tcp_echo(self), unix_echo(self)):
            reply = await threads.deferToThread(send_and_collect, service, data)
            self.assertEqual(reply, data)


class DatagramReadPathTests(TestCase):
    """DatagramEcho._doRead, the UDP port's read loop, on a real socket."""

    async def test_bursts_sizes_and_an_unreachable_sender(self):
        """
        Bursts from several sockets (read several to a turn), an empty and a
        65,507-byte datagram, and a sender that vanished before its echo
        (the ICMP error that follows must not close the port); with
        netecho._speedups's recvmmsg() batches where it is built.
        """
        await self.check_bursts()

    async def test_without_batches(self):
        """The same through the pure-Python read loop (recvfrom per datagram)."""
        self.patch(datagram, "recv_datagrams", None)
        await self.check_bursts()

    def test_recv_datagrams(self):
        """netecho._speedups.recv_datagrams: at most the count asked, in order, then []."""
        if datagram.recv_datagrams is None:
            raise SkipTest("netecho._speedups is not built (tests/test_stopword.py says whether that is allowed)")
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        self.addCleanup(client.close)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        for i in range(20):
            client.sendto(b"%d" % i * (i + 1), server.getsockname())
        first = datagram.recv_datagrams(server.fileno(), 16)
        rest = datagram.recv_datagrams(server.fileno(), 16)
        self.assertEqual([d for d, _ in first + rest], [b"%d" % i * (i + 1) for i in range(20)])
        self.assertEqual((len(first), len(rest)), (16, 4))
        self.assertEqual({a for _, a in first + rest}, {client.getsockname()})
        self.assertEqual(datagram.recv_datagrams(server.fileno(), 16), [])

    async def check_bursts(self):
        from netecho.testing import udp_echo

        service = udp_echo(self)
        address = (service.host, service.port)

        def exchange() -> list:
            gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            gone.sendto(b"nobody will read this", address)
            gone.close()  # its echo meets a closed port: ICMP unreachable
            results = []
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
            try:
                for s in socks:
                    s.settimeout(5)
                for round_ in range(20):
                    for i, s in enumerate(socks):
                        s.sendto(b"%d:%d" % (i, round_), address)
                for i, s in enumerate(socks):
                    results.append(sorted(s.recv(100) for _ in range(20)))
                for payload in (b"", b"z" * 65507):
                    socks[0].sendto(payload, address)
                    results.append(socks[0].recv(65536) == payload)
            finally:
                for s in socks:
                    s.close()
            return results

        results = await threads.deferToThread(exchange)
        for i in range(5):
            self.assertEqual(results[i], sorted(b"%d:%d" % (i, r) for r in range(20)))
        self.assertEqual(results[5:], [True, True])
        self.assertEqual(service.stats.datagrams_echoed, 1 + 100 + 2)


class StreamReadPathWithoutCTests(StreamReadPathTests):
    """The same through the Python read path (no netecho._speedups.echo_stream)."""

    def setUp(self):
        from netecho import echo

        self.patch(echo, "echo_stream", None)


class StreamReadPathInCTests(TestCase):
    async def test_c_path_in_use(self):
        """Where netecho._speedups is built, a plain TCP or Unix echo reads through it."""
        from netecho import echo

        if echo.echo_stream is None:
            raise SkipTest("netecho._speedups is not built (tests/test_stopword.py says whether that is allowed)")
        calls = []

        def counting(*args):
            calls.append(args[1:])
            return real(*args)

        real = echo.echo_stream
        self.patch(echo, "echo_stream", counting)
        for service in (tcp_echo(self), unix_echo(self)):
            reply = await threads.deferToThread(send_and_collect, service, b"one\ntwo\n")
            self.assertEqual(reply, b"one\ntwo\n")
        self.assertTrue(calls)
        self.assertEqual({word for word, _ in calls}, {b"STOP"})
