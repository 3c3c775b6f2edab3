"""Listeners on the real reactor, on loopback, and their start-up errors."""

import os
import socket
import tempfile

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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

    def test_stale_socket_with_a_live_lock(self):
        """
        The lock names a live process (its PID reused, or PID 1 in a
        container) but nobody accepts on the socket: both are stale.
        """
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.path)
        s.close()
        os.symlink(str(os.getpid()), self.path + ".lock")
        reclaim_unix_path(self.path, "--unix x")
        self.assertFalse(os.path.lexists(self.path))
        self.assertFalse(os.path.lexists(self.path + ".lock"))

    def test_live_socket_and_lock_untouched(self):
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(self.path)
        s.listen(1)
        os.symlink(str(os.getpid()), self.path + ".lock")
        self.assertRaises(ListenerError, reclaim_unix_path, self.path, "--unix x")
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(os.readlink(self.path + ".lock"), str(os.getpid()))

    def test_regular_file_lock_kept(self):
        """Only Twisted's kind of lock (a symbolic link) is ever removed."""
        with open(self.path + ".lock", "w") as f:
            f.write("keep")
        reclaim_unix_path(self.path, "--unix x")
        self.assertTrue(os.path.exists(self.path + ".lock"))


class BacklogTests(SynchronousTestCase):
    def test_added_where_the_endpoint_takes_one(self):
        cases = {
            "tcp:1": "tcp:1:backlog=5",
            "tcp6:1:interface=\\:\\:": "tcp6:1:interface=\\:\\::backlog=5",
            "unix:/tmp/a\\:b:mode=600": "unix:/tmp/a\\:b:mode=600:backlog=5",
            "haproxy:tcp:1": "haproxy:tcp:1:backlog=5",
            # The user's own, and systemd's (already listening), are kept.
            "tcp:1:backlog=9": "tcp:1:backlog=9",
            "haproxy:tcp:1:backlog=9": "haproxy:tcp:1:backlog=9",
            "systemd:domain=INET:index=0": "systemd:domain=INET:index=0",
        }
        for description, expected in cases.items():
            self.assertEqual(listeners.with_backlog(description, 5), expected, description)
        self.assertEqual(listeners.with_backlog("tcp:1", None), "tcp:1")

    def test_listeners_take_it(self):
        self.assertEqual(stream_listener("tcp", "tcp:1", backlog=7).description, "tcp:1:backlog=7")
        self.assertEqual(unix_listener("/s", 0o600, backlog=7).description,
                         "unix:/s:mode=600:lockfile=1:backlog=7")

    def test_default_is_somaxconn(self):
        path = os.path.join(tempfile.mkdtemp(), "somaxconn")
        with open(path, "w") as f:
            f.write("1234\n")
        self.assertEqual(listeners.default_backlog(path), 1234)
        self.assertEqual(listeners.default_backlog(path + ".missing"), 4096)


class UnixModeTests(SynchronousTestCase):
    def test_mode_of_a_description(self):
        mode = listeners.unix_socket_mode
        self.assertEqual(mode("unix:/s:mode=600:lockfile=1"), 0o600)
        self.assertEqual(mode("unix:/s"), 0o666)
        self.assertEqual(mode("haproxy:unix:/s:mode=640"), 0o640)
        self.assertIsNone(mode("tcp:1"))
        self.assertIsNone(mode("systemd:domain=UNIX:index=0"))

    def test_umask_only_tightened(self):
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        with listeners.umask_at_most(0o660):
            inside = os.umask(0o022)
            os.umask(inside)
        self.assertEqual(inside, 0o022 | 0o117)
        self.assertEqual(os.umask(0o022), 0o022)

    def test_socket_never_more_open_than_its_mode(self):
        """Under umask 000 the socket is created 0600 (not 0777, chmodded later)."""
        path = os.path.join(tempfile.mkdtemp(), "s")
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        with listeners.umask_at_most(0o600):
            s = socket.socket(socket.AF_UNIX)
            self.addCleanup(s.close)
            s.bind(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)


class ReceiveBufferTests(SynchronousTestCase):
    def test_asks_and_reports(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        granted = listeners.set_receive_buffer(s, 65536)
        self.assertEqual(granted, s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        self.assertGreaterEqual(granted, 65536)

    def test_root_passes_rmem_max(self):
        if os.geteuid() != 0:
            raise SkipTest("SO_RCVBUFFORCE needs root")
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        try:
            granted = listeners.set_receive_buffer(s, rmem_max + 65536)
        except OSError as e:
            raise SkipTest(f"no CAP_NET_ADMIN here: {e}")
        self.assertGreater(granted, 2 * rmem_max)

    def test_only_raise_keeps_a_larger_buffer(self):
        """A socket systemd made with a larger ReceiveBuffer= keeps it."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 100000)
        before = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.assertEqual(listeners.set_receive_buffer(s, 4096, only_raise=True), before)
        self.assertLess(listeners.set_receive_buffer(s, 4096), before)


class InheritedWordingTests(SynchronousTestCase):
    def test_missing_systemd_stream_socket_is_a_listener_error(self):
        """--tcp systemd:...:name=wrong: the UDP wording, at start (exit 1), not a usage error."""
        from twisted.internet.testing import MemoryReactor

        service = StreamListenerService(
            MemoryReactor(), stream_listener("tcp", "systemd:domain=INET:name=wrong"), EchoFactory(), set())
        e = self.assertRaises(ListenerError, service.privilegedStartService)
        self.assertRegex(str(e), r"^cannot listen on --tcp systemd:domain=INET:name=wrong: "
                                 r"no inherited socket named 'wrong' \(inherited: .*\)$")
