"""Listeners on the real reactor, on loopback, and their start-up errors."""

import os
import socket
import tempfile

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho import listeners
from netecho.daemon import NetechoService
from netecho.echo import DatagramEcho
from netecho.echo import EchoFactory
from netecho.listeners import (
    DatagramListenerService,
    ListenerError,
    StreamListenerService,
    reclaim_unix_path,
    stream_listener,
    udp_listener,
    unix_listener,
)
from netecho.stats import Stats
from twisted.internet import error


class ReasonTests(SynchronousTestCase):
    def test_reasons(self):
        self.assertEqual(
            listeners._reason(error.CannotListenError("", 80, OSError(13, "Permission denied"))),
            "permission denied",
        )
        self.assertEqual(
            listeners._reason(error.CannotListenError("", "/s", "Cannot acquire lock")),
            "in use by a live server (its lock file is held)",
        )
        self.assertEqual(listeners._reason(OSError(98, "Address already in use")), "address already in use")


class RealListenerTests(TestCase):
    def setUp(self):
        self.stats = Stats()
        self.own_ports = set()
        self.top = NetechoService(reactor, self.stats)

    def add(self, child):
        child.setServiceParent(self.top)
        return child

    @defer.inlineCallbacks
    def test_start_and_stop(self):
        path = os.path.join(tempfile.mkdtemp(), "s")
        echo = EchoFactory()
        tcp = self.add(StreamListenerService(
            reactor, stream_listener("tcp", "tcp:0:interface=127.0.0.1"), echo, self.own_ports))
        self.add(StreamListenerService(reactor, unix_listener(path, 0o600), echo, self.own_ports))
        udp = self.add(DatagramListenerService(
            reactor, udp_listener("127.0.0.1:0"), DatagramEcho(), self.own_ports))
        self.top.privilegedStartService()
        tcp_port = tcp.port  # TCP listens synchronously
        self.assertEqual(
            self.own_ports, {tcp_port.getHost().port, udp.port.getHost().port}
        )
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(udp.port.maxPacketSize, 65536)
        yield self.top.stopService()
        self.assertFalse(os.path.exists(path))

    def test_port_in_use_names_the_listener(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        value = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        service = StreamListenerService(reactor, stream_listener("tcp", value), EchoFactory(), set())
        e = self.assertRaises(ListenerError, service.privilegedStartService)
        self.assertEqual(str(e), f"cannot listen on --tcp {value}: address already in use")

    def test_udp_in_use(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        value = f"127.0.0.1:{busy.getsockname()[1]}"
        service = DatagramListenerService(reactor, udp_listener(value), DatagramEcho(), set())
        e = self.assertRaises(ListenerError, service.privilegedStartService)
        self.assertEqual(str(e), f"cannot listen on --udp {value}: address already in use")

    def test_systemd_name_missing(self):
        service = DatagramListenerService(
            reactor, udp_listener("systemd:nope"), DatagramEcho(), set())
        e = self.assertRaises(ListenerError, service.privilegedStartService)
        self.assertIn("no inherited socket named 'nope'", str(e))

    def test_top_service_exits_on_failure(self):
        """The daemon's top service turns a ListenerError into exit status 1."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.patch(os, "write", lambda fd, data: len(data))  # keep the test's stderr clean
        value = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        self.add(StreamListenerService(reactor, stream_listener("tcp", value), EchoFactory(), set()))
        e = self.assertRaises(SystemExit, self.top.privilegedStartService)
        self.assertEqual(e.code, 1)


class ReclaimTests(SynchronousTestCase):
    def setUp(self):
        # Not self.mktemp(): under pytest it lands in the checkout.
        self.path = os.path.join(tempfile.mkdtemp(), "s")

    def test_missing_path_is_fine(self):
        reclaim_unix_path(self.path, "--unix x")

    def test_stale_socket_removed(self):
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.path)
        s.close()
        reclaim_unix_path(self.path, "--unix x")
        self.assertFalse(os.path.exists(self.path))

    def test_live_socket_refused(self):
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(self.path)
        s.listen(1)
        e = self.assertRaises(ListenerError, reclaim_unix_path, self.path, "--unix x")
        self.assertEqual(str(e), "cannot listen on --unix x: in use by a live server")
        self.assertTrue(os.path.exists(self.path))

    def test_regular_file_kept(self):
        with open(self.path, "w") as f:
            f.write("keep")
        e = self.assertRaises(ListenerError, reclaim_unix_path, self.path, "--unix x")
        self.assertIn("exists and is not a socket", str(e))
        with open(self.path) as f:
            self.assertEqual(f.read(), "keep")
