"""netecho.testing, used as another project would use it in trial."""

import os
import socket

from twisted.internet import defer, endpoints, protocol, reactor, threads
from twisted.trial.unittest import TestCase

from netecho import testing


class Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.got = defer.Deferred()

    def dataReceived(self, data):
        self.data += data
        if self.data.endswith(b"\n") and not self.got.called:
            self.got.callback(self.data)


class TestingTests(TestCase):
    async def test_tcp_echo_left_open(self):
        """A connection the test leaves open is closed by the cleanup: no dirty reactor."""
        server = testing.tcp_echo(self)
        self.assertEqual(server.host, "127.0.0.1")
        self.assertEqual(server.address, f"127.0.0.1:{server.port}")
        proto = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, server.host, server.port), Collect()
        )
        proto.transport.write(b"hello\n")
        self.assertEqual(await proto.got, b"hello\n")
        self.assertEqual(server.stats.tcp, 1)

    async def test_unix_echo(self):
        server = testing.unix_echo(self)
        self.assertEqual(os.stat(server.path).st_mode & 0o777, 0o600)
        proto = await endpoints.connectProtocol(
            endpoints.UNIXClientEndpoint(reactor, server.path), Collect()
        )
        proto.transport.write(b"over unix\n")
        self.assertEqual(await proto.got, b"over unix\n")
        proto.transport.loseConnection()

    async def test_udp_echo_with_a_blocking_client(self):
        server = testing.udp_echo(self)

        def roundtrip():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(b"dgram", (server.host, server.port))
                return s.recv(100)

        self.assertEqual(await threads.deferToThread(roundtrip), b"dgram")

    async def test_random(self):
        server = testing.random_numbers(self)
        proto = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, server.host, server.port), Collect()
        )
        proto.transport.write(b"x\n")
        self.assertTrue(0 <= int(await proto.got) < 2**31)

    def test_unknown_kind(self):
        self.assertRaises(ValueError, testing.start, "gopher")

    async def test_cleanup_removes_unix_directory(self):
        server = testing.start("unix")
        self.assertTrue(os.path.exists(server.path))
        await server.stop()
        self.assertFalse(os.path.exists(os.path.dirname(server.path)))
