"""
netecho's transports and ports (netecho/transports.py) on real loopback and
Unix sockets, on whatever reactor trial runs: eager writes, recv() on Unix
streams, descriptors, half-close, TLS on top, and the UDP port's reads with
and without recvmmsg() batches (compared with recvfrom() datagram for
datagram).
"""

from __future__ import annotations

import array
import os
import random
import socket
import tempfile
import threading
import time

from twisted.internet import defer, interfaces, protocol, reactor, threads
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from netecho import transports
from netecho.address import ipv6_available
from netecho.datagram import MAX_DATAGRAM, DatagramGuard
from netecho.echo import DatagramEcho, EchoFactory
from netecho.policies import Served, ServedDatagrams
from netecho.stats import Stats
from netecho.testing import RunningService, track_connections
from netecho.transports import DatagramPort, TCPPort, TCPServer, UNIXPort, UNIXServer

from tests import peers


def serve(testcase, kind: str, factory=None) -> RunningService:
    """A stream service on netecho's own port classes; stopped by cleanup."""
    stats = Stats()
    if factory is None:
        factory = Served(EchoFactory(), stats, "echo", stop_word=b"STOP")
    drop_all = track_connections(factory)
    if kind == "unix":
        path = os.path.join(tempfile.mkdtemp(), "s")
        port = UNIXPort(path, factory, 50, 0o600, reactor, 0)
        host = number = None
    else:
        path = None
        port = TCPPort(0, factory, 50, "127.0.0.1", reactor)
    port.startListening()
    if kind != "unix":
        host, number = "127.0.0.1", port.getHost().port

    def stop():
        return defer.gatherResults([defer.maybeDeferred(port.stopListening), drop_all()])

    testcase.addCleanup(stop)
    return RunningService(kind, host, number, path, stats, stop)


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


def exchange(service, data: bytes) -> bytes:
    with connect(service) as s:
        s.sendall(data)
        reply = b""
        while len(reply) < len(data):
            reply += s.recv(65536)
        return reply


class Watching(protocol.Protocol):
    """Echoes, and notes whether its transport still holds bytes after each write."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)
        # Private on purpose: what Twisted's write() buffers until the next iteration.
        self.factory.buffered.append(self.transport._tempDataLen + len(self.transport.dataBuffer))
        self.factory.transports.append(self.transport)
        if isinstance(self.transport, TCPServer):
            self.factory.nodelay.append(self.transport.getTcpNoDelay())


class WatchingFactory(protocol.Factory):
    protocol = Watching

    def __init__(self):
        self.buffered, self.transports, self.nodelay = [], [], []


class StreamTransportTests(TestCase):
    async def test_transport_classes(self):
        """Each connection is netecho's transport; TCP ones have Nagle off."""
        for kind, expected in (("tcp", TCPServer), ("unix", UNIXServer)):
            factory = WatchingFactory()
            service = serve(self, kind, factory)
            await threads.deferToThread(exchange, service, b"x")
            (transport,) = set(factory.transports)
            self.assertIsInstance(transport, expected)
            self.assertEqual(set(factory.nodelay), {True} if kind == "tcp" else set())

    async def test_writes_go_out_at_once(self):
        """
        A write with nothing buffered is sent in write() itself (Twisted's
        own transport keeps it for the next reactor iteration, issue 5303).
        """
        for kind in ("tcp", "unix"):
            factory = WatchingFactory()
            service = serve(self, kind, factory)
            reply = await threads.deferToThread(exchange, service, b"ping\n" * 10)
            self.assertEqual(reply, b"ping\n" * 10)
            self.assertTrue(factory.buffered)
            self.assertEqual(set(factory.buffered), {0}, kind)

    async def test_big_stream_in_order(self):
        """16 MiB of random bytes both ways at once, byte for byte: partial sends are buffered in order."""
        data = os.urandom(16 << 20).replace(b"\n", b"x")  # no line at all, so no stop word
        for kind in ("tcp", "unix"):
            service = serve(self, kind)
            reply = await threads.deferToThread(send_and_collect, service, data)
            self.assertEqual(len(reply), len(data))
            self.assertTrue(reply == data)
            self.assertEqual(service.stats.bytes_echoed, len(data))

    async def test_stop_word_mid_stream(self):
        """Everything up to the stop line comes back, nothing after it, then the close."""
        head = os.urandom(300_000).replace(b"STOP", b"stop")
        data = head + b"\n \tSTOP\r\n" + b"after the stop word\n" * 1000
        for kind in ("tcp", "unix"):
            service = serve(self, kind)
            reply = await threads.deferToThread(send_and_collect, service, data, False)
            self.assertTrue(reply == head + b"\n \tSTOP\r\n", (len(reply), len(head)))

    async def test_passed_descriptors_are_not_kept(self):
        """
        A Unix client that passes file descriptors to an echo (which takes
        none: the transport reads with recv()) gets its bytes echoed; the
        descriptors never become open files of the server's process.
        """
        service = serve(self, "unix")

        def pass_fds() -> tuple[bytes, int, int]:
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

        reply, before, after = await threads.deferToThread(pass_fds)
        self.assertEqual(reply, b"with fds\nmore\n")
        # (The server's side of the connection may still be closing: at most that one.)
        self.assertLessEqual(after, before + 1)
        self.assertEqual(service.stats.unix, 1)

    async def test_protocol_that_takes_descriptors_gets_them(self):
        """A protocol providing IFileDescriptorReceiver still reads with recvmsg() and gets them."""
        got = []

        @implementer(interfaces.IFileDescriptorReceiver)
        class Taker(protocol.Protocol):
            def fileDescriptorReceived(self, fd):
                got.append(os.fstat(fd).st_ino)
                os.close(fd)

            def dataReceived(self, data):
                self.transport.write(data)

        service = serve(self, "unix", protocol.Factory.forProtocol(Taker))
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)

        def pass_fd() -> bytes:
            with connect(service) as s:
                s.sendmsg([b"fd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
                return s.recv(100)

        self.assertEqual(await threads.deferToThread(pass_fd), b"fd")
        self.assertEqual(got, [os.fstat(r).st_ino])

    async def test_unix_peer_named_by_its_credentials(self):
        """Unix peers are logged as their process and user (SO_PEERCRED), not unix:@peer."""
        service = serve(self, "unix")
        factory_sessions = []

        def talk() -> bytes:
            with connect(service) as s:
                s.sendall(b"who\n")
                return s.recv(10)

        original = Served.buildProtocol

        def keep(factory, addr):
            session = original(factory, addr)
            factory_sessions.append(session)
            return session

        self.patch(Served, "buildProtocol", keep)
        self.assertEqual(await threads.deferToThread(talk), b"who\n")
        self.assertEqual([s.peer for s in factory_sessions], [f"unix:pid={os.getpid()},uid={os.getuid()}"])

    async def test_half_close(self):
        """The client shuts down its sending side: all of it comes back, then EOF."""
        data = b"line one\nline two, no newline at the end"
        for kind in ("tcp", "unix"):
            service = serve(self, kind)
            reply = await threads.deferToThread(send_and_collect, service, data)
            self.assertEqual(reply, data)

    async def test_tls_on_top(self):
        """TLS (Twisted's TLSMemoryBIOFactory) over netecho's TCP transport: 1 MiB byte for byte."""
        from twisted.internet import ssl as twisted_ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from tests.integration.test_daemon import self_signed, tls_echo

        key, cert = self_signed(tempfile.mkdtemp())
        served = Served(EchoFactory(), Stats(), "echo", stop_word=b"STOP")
        factory = TLSMemoryBIOFactory(twisted_ssl.DefaultOpenSSLContextFactory(key, cert), False, served)
        port = TCPPort(0, factory, 50, "127.0.0.1", reactor)
        port.startListening()
        drop_all = track_connections(served)
        self.addCleanup(lambda: defer.gatherResults([defer.maybeDeferred(port.stopListening), drop_all()]))
        data = os.urandom(1 << 20)

        self.assertTrue(await threads.deferToThread(tls_echo, port.getHost().port, data) == data)
        self.assertEqual(served.stats.bytes_echoed, len(data))


class StartTLSTests(TestCase):
    async def test_writes_after_starttls_are_encrypted(self):
        """After startTLS(), eager writes must not bypass the TLS layer (no plaintext on the wire)."""
        import ssl

        from twisted.internet import ssl as twisted_ssl

        from tests.integration.test_daemon import self_signed

        key, cert = self_signed(tempfile.mkdtemp())
        context = twisted_ssl.DefaultOpenSSLContextFactory(key, cert)

        class Upgrading(protocol.Protocol):
            def dataReceived(self, data):
                if data == b"STARTTLS\n":
                    self.transport.startTLS(context)
                    self.transport.write(b"secret\n")

        service = serve(self, "tcp", protocol.Factory.forProtocol(Upgrading))

        def talk() -> tuple[bytes, bytes]:
            with connect(service) as raw:
                raw.settimeout(0.5)
                raw.sendall(b"STARTTLS\n")
                try:
                    early = raw.recv(100)  # before the handshake nothing may come
                except TimeoutError:
                    early = b""
                client = ssl.create_default_context()
                client.check_hostname = False
                client.verify_mode = ssl.CERT_NONE
                raw.settimeout(10)
                with client.wrap_socket(raw) as tls:
                    return early, tls.recv(100)

        early, secret = await threads.deferToThread(talk)
        self.assertEqual((early, secret), (b"", b"secret\n"))


def udp_family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class DatagramPortTests(TestCase):
    """The UDP port with the daemon's echo, for IPv4, IPv6 and dual-stack listeners."""

    def listen(self, interface: str) -> tuple[DatagramPort, Stats]:
        if ":" in interface and not ipv6_available():
            raise SkipTest("this host has no IPv6")
        stats = Stats()
        own_ports: set[int] = set()
        served = ServedDatagrams(DatagramEcho(), stats, guard=DatagramGuard(stats, own_ports))
        port = DatagramPort(0, served, interface, MAX_DATAGRAM, reactor)
        port.startListening()
        own_ports.add(port.getHost().port)
        self.addCleanup(port.stopListening)
        return port, stats

    async def check_bursts(self, interface: str, client_host: str) -> None:
        """
        Bursts from several sockets (read several to a turn), an empty and a
        65,507-byte datagram, and a sender that vanished before its echo
        (the ICMP error that follows must not close the port).
        """
        port, stats = self.listen(interface)
        address = (client_host, port.getHost().port)
        family = udp_family(client_host)

        def talk() -> list:
            gone = socket.socket(family, socket.SOCK_DGRAM)
            gone.sendto(b"nobody will read this", address)
            gone.close()  # its echo meets a closed port: ICMP unreachable
            results = []
            socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(5)]
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

        results = await threads.deferToThread(talk)
        for i in range(5):
            self.assertEqual(results[i], sorted(b"%d:%d" % (i, r) for r in range(20)))
        self.assertEqual(results[5:], [True, True])
        self.assertEqual(stats.datagrams_echoed, 1 + 100 + 2)
        self.assertEqual(stats.dropped, {})

    async def test_ipv4(self):
        await self.check_bursts("127.0.0.1", "127.0.0.1")

    async def test_ipv6(self):
        await self.check_bursts("::1", "::1")

    async def test_dual_stack(self):
        """The default listener (--udp PORT: '::' with IPv4 peers too), answering an IPv4 client."""
        await self.check_bursts("::", "127.0.0.1")

    async def test_dual_stack_without_batches(self):
        """The same through recvfrom() per datagram (no netecho._speedups)."""
        self.patch(transports, "recv_datagrams", None)
        await self.check_bursts("::", "127.0.0.1")

    async def test_dual_stack_replies_one_by_one(self):
        """Batched reads, but each reply by its own sendto() (no send_datagrams)."""
        self.patch(transports, "send_datagrams", None)
        await self.check_bursts("::", "127.0.0.1")

    async def test_ipv4_without_batches(self):
        self.patch(transports, "recv_datagrams", None)
        await self.check_bursts("127.0.0.1", "127.0.0.1")

    def test_replies_that_cannot_be_sent(self):
        """
        A reply the kernel refuses: raised by write() when sent at once,
        reported to datagramNotSent() when sent after the batch; the other
        replies go out either way.
        """
        from netecho.reactor import DirectEPollReactor

        for later in (True, False):
            if later and transports.send_datagrams is None:
                continue
            failures, sent = [], []

            class Replier(protocol.DatagramProtocol):
                def datagramReceived(self, data, addr):
                    try:
                        self.transport.write(b"x" * 70000 if data == b"big" else data, addr)
                    except Exception as e:
                        failures.append(("raised", type(e).__name__))

            if later:
                Replier.datagramNotSent = lambda self, data, addr, e: failures.append(("later", type(e).__name__))
            port = DatagramPort(0, Replier(), "127.0.0.1", MAX_DATAGRAM, DirectEPollReactor())
            port.startListening()
            self.addCleanup(port.connectionLost)
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(client.close)
            client.bind(("127.0.0.1", 0))
            client.settimeout(5)
            # A full batch (16 datagrams) is answered by one sendmmsg(); a short one at once.
            sent_datagrams = [b"%d" % i for i in range(15)] if later else [b"one", b"two"]
            sent_datagrams.insert(1, b"big")
            for data in sent_datagrams:
                client.sendto(data, ("127.0.0.1", port.getHost().port))
            time.sleep(0.05)  # (all queued before the read)
            port.doRead()
            expected = [d for d in sent_datagrams if d != b"big"]
            sent = [client.recv(100) for _ in expected]
            self.assertEqual(sent, expected)
            self.assertEqual(failures, [("later" if later else "raised", "MessageLengthError")])

    def check_kernel_drops(self) -> None:
        """A full receive buffer: what the kernel dropped is counted (udp_kernel_dropped) at the next read."""
        from netecho.reactor import DirectEPollReactor

        stats = Stats()
        served = ServedDatagrams(DatagramEcho(), stats, guard=DatagramGuard(stats, set()))
        port = DatagramPort(0, served, "127.0.0.1", MAX_DATAGRAM, DirectEPollReactor())  # never run: read by hand
        port.startListening()
        self.addCleanup(port.connectionLost)
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind(("127.0.0.1", 0))
        client.setblocking(False)
        for _ in range(200):
            client.sendto(b"x" * 1000, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertNotIn("udp_kernel_dropped", stats.dropped)
        # The next datagram carries the count of those lost meanwhile.
        client.sendto(b"x" * 1000, ("127.0.0.1", port.getHost().port))
        port.doRead()
        self.assertEqual(stats.dropped["udp_kernel_dropped"] + stats.datagrams_echoed, 201)
        self.assertGreater(stats.datagrams_echoed, 1)

    def test_kernel_drops(self):
        self.check_kernel_drops()

    def test_kernel_drops_without_batches(self):
        self.patch(transports, "recv_datagrams", None)
        self.check_kernel_drops()


class RecvDatagramsTests(TestCase):
    """netecho._speedups.recv_datagrams against socket.recvfrom(), on the same datagrams."""

    def setUp(self):
        if transports.recv_datagrams is None:
            peers.missing("netecho._speedups is not built (needs gcc and Python's headers; scripts/test builds it)")

    def pair(self, server_host: str, client_host: str):
        if ":" in server_host and not ipv6_available():
            raise SkipTest("this host has no IPv6")
        server = socket.socket(udp_family(server_host), socket.SOCK_DGRAM)
        self.addCleanup(server.close)
        server.bind((server_host, 0))
        server.setblocking(False)
        clients = []
        for _ in range(3):
            c = socket.socket(udp_family(client_host), socket.SOCK_DGRAM)
            self.addCleanup(c.close)
            c.bind((client_host, 0))
            clients.append(c)
        return server, clients

    def check(self, server_host: str, client_host: str) -> None:
        """40 datagrams from 3 senders, in rounds of 10 (the receive buffer holds a round)."""
        got = {}
        for way in ("c", "python"):
            rng = random.Random(5)  # the same datagrams both ways
            server, clients = self.pair(server_host, client_host)
            target = (client_host, server.getsockname()[1])
            names = {c.getsockname()[1]: i for i, c in enumerate(clients)}
            received = []
            for round_ in range(4):
                for i in range(10):
                    size = rng.choice((0, 1, 100, 1500, 9000, 65507))
                    clients[i % 3].sendto(rng.randbytes(size), target)
                while True:
                    if way == "c":
                        batch, _ = transports.recv_datagrams(server.fileno(), transports.BATCH)
                        self.assertLessEqual(len(batch), transports.BATCH)
                    else:
                        try:
                            data, addr = server.recvfrom(MAX_DATAGRAM)
                        except BlockingIOError:
                            batch = []
                        else:
                            batch = [(data, addr[:2])]
                    if not batch:
                        break
                    for data, (host, port) in batch:
                        received.append((data, host, names[port]))
            got[way] = received
        self.assertEqual(len(got["c"]), 40)
        self.assertEqual(got["c"], got["python"])

    def test_ipv4(self):
        self.check("127.0.0.1", "127.0.0.1")

    def test_ipv6(self):
        self.check("::1", "::1")

    def test_dual_stack(self):
        self.check("::", "127.0.0.1")

    def test_count_and_empty(self):
        """At most the count asked, in order, then []."""
        server, (client, *_) = self.pair("127.0.0.1", "127.0.0.1")
        for i in range(20):
            client.sendto(b"%d" % i * (i + 1), server.getsockname())
        first, dropped = transports.recv_datagrams(server.fileno(), 16)
        self.assertEqual(dropped, -1)  # SO_RXQ_OVFL is off on this socket
        rest, _ = transports.recv_datagrams(server.fileno(), 16)
        self.assertEqual([d for d, _ in first + rest], [b"%d" % i * (i + 1) for i in range(20)])
        self.assertEqual((len(first), len(rest)), (16, 4))
        self.assertEqual({a for _, a in first + rest}, {client.getsockname()})
        self.assertEqual(transports.recv_datagrams(server.fileno(), 16), ([], -1))

    def test_send_datagrams(self):
        """sendmmsg() of a list: in order, failures by index with their errno, nothing resolved."""
        import errno

        server, (client, other, _) = self.pair("127.0.0.1", "127.0.0.1")
        client.settimeout(5)
        other.settimeout(5)
        a, b = client.getsockname(), other.getsockname()
        queue = [(b"1", a), (b"x" * 70000, a), (b"2", b), (b"3", ("localhost", a[1])), (b"4", a)] * 20
        failed = transports.send_datagrams(server.fileno(), socket.AF_INET, queue)
        self.assertEqual(failed, [(i * 5 + k, e) for i in range(20) for k, e in ((1, errno.EMSGSIZE), (3, errno.EINVAL))])
        self.assertEqual([client.recv(10) for _ in range(40)], [b"1", b"4"] * 20)
        self.assertEqual([other.recv(10) for _ in range(20)], [b"2"] * 20)

    def test_send_datagrams_dual_stack(self):
        """On an IPv6 socket, IPv4 hosts go to their ::ffff: form."""
        server, (client, *_) = self.pair("::", "127.0.0.1")
        client.settimeout(5)
        self.assertEqual(transports.send_datagrams(server.fileno(), socket.AF_INET6, [(b"v4", client.getsockname())]), [])
        self.assertEqual(client.recv(10), b"v4")

    def test_kernel_drop_count(self):
        """With SO_RXQ_OVFL on, each batch carries the kernel's drop count, as recvmsg() shows it."""
        server, (client, *_) = self.pair("127.0.0.1", "127.0.0.1")
        server.setsockopt(socket.SOL_SOCKET, transports.SO_RXQ_OVFL, 1)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(200):
            client.sendto(b"x" * 1000, server.getsockname())
        # The count a datagram carries is the one when it was queued: the
        # ones queued before the buffer filled carry none.
        while True:
            batch, dropped = transports.recv_datagrams(server.fileno(), 16)
            self.assertEqual(dropped, -1)
            if not batch:
                break
        client.sendto(b"y", server.getsockname())
        client.sendto(b"z", server.getsockname())
        batch, dropped = transports.recv_datagrams(server.fileno(), 1)
        self.assertEqual([d for d, _ in batch], [b"y"])
        self.assertGreater(dropped, 100)
        data, ancillary, _, _ = server.recvmsg(100, socket.CMSG_SPACE(4))
        self.assertEqual(data, b"z")
        self.assertEqual(transports._dropped(ancillary), dropped)
