"""
The liveness probe a server makes before reclaiming a Unix socket path
(L{netecho.listeners}), and how a served Unix socket tells it from a client
(L{netecho.policies.Session}).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile

from twisted.internet import address, interfaces
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, Logger
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import directlyProvides

from netecho import listeners, policies, transports
from netecho.echo import EchoFactory
from netecho.stats import Stats

PROBE = b"\0netecho-liveness-probe:4242:0a1b2c3d"


class ProbeTests(TestCase):
    def setUp(self):
        if not sys.platform.startswith("linux"):
            raise SkipTest("the probe names itself in Linux's abstract namespace")
        self.dir = tempfile.mkdtemp(prefix="netecho-probe-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "live.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(self.server.close)
        self.server.bind(self.path)
        self.server.listen(5)

    def test_probe_names_itself_and_sends_nothing(self):
        """What a live server sees of the probe: its name, its process, and an end with no byte."""
        self.assertTrue(listeners._accepting(self.path, "--unix x"))
        self.server.settimeout(5)
        conn, peer = self.server.accept()
        self.addCleanup(conn.close)
        self.assertTrue(transports.is_liveness_probe(peer), peer)
        self.assertTrue(peer.startswith(transports.LIVENESS_PROBE + f":{os.getpid()}:".encode()), peer)
        conn.settimeout(5)
        self.assertEqual(conn.recv(100), b"")

    def test_two_probes_at_once(self):
        """Each probe has a name of its own (an abstract name is taken once)."""
        first = listeners._probe_socket()
        self.addCleanup(first.close)
        second = listeners._probe_socket()
        self.addCleanup(second.close)
        self.assertNotEqual(first.getsockname(), second.getsockname())
        self.assertTrue(all(transports.is_liveness_probe(s.getsockname()) for s in (first, second)))

    def test_stale_socket_still_reclaimed(self):
        self.server.close()
        self.assertFalse(listeners._accepting(self.path, "--unix x"))

    def test_other_names_are_clients(self):
        for name in (None, b"", b"\0netecho-liveness-probe", b"\0other", "/run/x.sock",
                     b"/tmp/netecho-liveness-probe:1:2"):
            self.assertFalse(transports.is_liveness_probe(name), name)


class SessionTests(TestCase):
    """A served Unix connection, by who its peer is and what it sends."""

    def setUp(self):
        self.stats = Stats()
        self.events: list[dict] = []
        self.patch(policies, "log", Logger(observer=self.events.append))
        self.factory = policies.Served(EchoFactory(), self.stats, "echo")

    def connect(self, peer: bytes | None) -> tuple[policies.Session, StringTransport]:
        transport = StringTransport(peerAddress=address.UNIXAddress(peer))
        directlyProvides(transport, interfaces.IUNIXTransport)
        session = self.factory.buildProtocol(transport.getPeer())
        session.makeConnection(transport)
        return session, transport

    def logged(self, level: LogLevel) -> list[str]:
        return [e["log_format"] for e in self.events if e["log_level"] is level]

    def test_probe_is_not_a_client(self):
        """Active while open (the gauge and the caps agree), never a client served."""
        session, _ = self.connect(PROBE)
        self.assertEqual((self.stats.opened.get("unix", 0), self.stats.active["unix"]), (0, 1))
        session.connectionLost(None)
        self.assertEqual((self.stats.opened.get("unix", 0), self.stats.active.get("unix", 0)), (0, 0))
        self.assertEqual(self.logged(LogLevel.info), [])
        (debug,) = self.logged(LogLevel.debug)
        self.assertIn("a liveness probe (another server checking whether this socket is in use)", debug)
        self.assertEqual(self.stats.summary().split()[1:4], ["clients_served=0", "tcp=0", "unix=0"])

    def test_probe_that_sends_is_a_client(self):
        """The name is taken at its word only while nothing is sent."""
        session, transport = self.connect(PROBE)
        session.dataReceived(b"ping\n")
        self.assertEqual(transport.value(), b"ping\n")
        self.assertEqual((self.stats.opened["unix"], self.stats.active["unix"]), (1, 1))
        session.connectionLost(None)
        self.assertEqual(self.stats.active["unix"], 0)
        (closed,) = self.logged(LogLevel.info)
        self.assertIn("closed after", closed)
        self.assertEqual(self.logged(LogLevel.debug), [])

    def test_silent_probe_past_the_grace_is_a_client(self):
        """A connection named as a probe that stays silent past PROBE_GRACE is a client all the same."""
        clock = Clock()
        self.factory.clock = clock.seconds
        session, _ = self.connect(PROBE)
        clock.advance(policies.PROBE_GRACE + 0.5)
        session.connectionLost(None)
        self.assertEqual((self.stats.opened["unix"], self.stats.active["unix"]), (1, 0))
        (closed,) = self.logged(LogLevel.info)
        self.assertIn("closed after", closed)
        self.assertEqual([e["duration"] for e in self.events if "duration" in e], [2.5])
        self.assertEqual(self.logged(LogLevel.debug), [])

    def test_empty_client_is_a_client(self):
        """A client that connects and closes without a byte, not named a probe, is counted and logged."""
        for peer in (None, b"/tmp/client.sock", b"\0netecho-liveness-probe"):
            session, _ = self.connect(peer)
            session.connectionLost(None)
        self.assertEqual((self.stats.opened["unix"], self.stats.active["unix"]), (3, 0))
        self.assertEqual(len(self.logged(LogLevel.info)), 3)
        self.assertEqual(self.logged(LogLevel.debug), [])

    def test_only_unix_peers(self):
        """(A TCP peer has no such name; its address is never taken for one.)"""
        transport = StringTransport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 5))
        session = self.factory.buildProtocol(transport.getPeer())
        session.makeConnection(transport)
        session.connectionLost(None)
        self.assertEqual(self.stats.opened, {"tcp": 1})
