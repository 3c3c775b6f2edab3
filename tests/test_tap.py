import signal

from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.spread.pb import PBServerFactory
from twisted.trial.unittest import SynchronousTestCase

from netecho.address import ipv6_available
from netecho.limits import IdleSweeper
from netecho.listeners import DatagramListenerService, Listener, StreamListenerService, default_backlog
from netecho.datagram import DatagramGuard
from netecho.echo import DatagramEcho, EchoFactory
from netecho.policies import Served, ServedDatagrams
from netecho.randomnum import RandomNumberFactory
from netecho.faults import FaultSpec
from netecho.tap import Options, makeService

BARE = "tcp6:{}:interface=\\:\\:" if ipv6_available() else "tcp:{}"
BACKLOG = default_backlog()


def parse(*args):
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_defaults(self):
        options = parse()
        self.assertEqual(
            dict(options),
            {
                "tcp": ["1234"],
                "udp": ["1234"],
                "unix": [],
                "random": [],
                "pb": ["8787"],
                "metrics": [],
                "pb-users": None,
                "users": None,
                "idle-timeout": 300.0,
                "max-connections": 10000,
                "max-per-ip": 1000,
                "udp-rate": 1000.0,
                "udp-global-rate": 100000.0,
                "unix-mode": 0o660,
                "stop-word": "STOP",
                "stop-signal": None,
                "log-format": "text",
                "twistd-log": None,
                "backlog": BACKLOG,
                "udp-rcvbuf": 4 << 20,
                "faults": FaultSpec(),
                "exit-on-stop": 0,
                "log-data": 0,
                "listeners": [
                    Listener("tcp", "1234", BARE.format(1234) + f":backlog={BACKLOG}"),
                    Listener("udp", "1234", "1234"),
                    Listener("pb", "8787", f"tcp:8787:interface=127.0.0.1:backlog={BACKLOG}"),
                ],
            },
        )

    def test_everything(self):
        options = parse(
            "--tcp", "7", "--tcp", "tcp:7000:interface=127.0.0.1", "--udp", "[::1]:7",
            "--unix", "/run/e.sock", "--unix", "unix:/tmp/x.sock", "--random", "0",
            "--unix-mode", "0600", "--stop-word", " QUIT ", "--stop-signal", "usr1",
            "--exit-on-stop", "--log-data", "--pb", "tcp6:8787", "--metrics", "9101",
            "--idle-timeout", "2.5", "--max-connections", "10", "--max-per-ip", "3",
            "--udp-rate", "0", "--udp-global-rate", "5", "--log-format", "json",
            "--backlog", "100", "--udp-rcvbuf", "0", "--tcp", "tcp:7001:backlog=9",
            "--random", "haproxy:tcp:7002", "--faults", "delay=50ms,drop=0.1",
        )
        self.assertEqual(
            dict(options),
            {
                "tcp": ["7", "tcp:7000:interface=127.0.0.1", "tcp:7001:backlog=9"],
                "udp": ["[::1]:7"],
                "unix": ["/run/e.sock", "unix:/tmp/x.sock"],
                "random": ["0", "haproxy:tcp:7002"],
                "pb": ["tcp6:8787"],
                "metrics": ["9101"],
                "pb-users": None,
                "users": None,
                "idle-timeout": 2.5,
                "max-connections": 10,
                "max-per-ip": 3,
                "udp-rate": 0.0,
                "udp-global-rate": 5.0,
                "unix-mode": 0o600,
                "stop-word": "QUIT",
                "stop-signal": signal.SIGUSR1,
                "log-format": "json",
                "twistd-log": None,
                "backlog": 100,
                "udp-rcvbuf": 0,
                "faults": FaultSpec(delay=0.05, drop=0.1),
                "exit-on-stop": 1,
                "log-data": 1,
                "listeners": [
                    Listener("tcp", "7", BARE.format(7) + ":backlog=100"),
                    Listener("tcp", "tcp:7000:interface=127.0.0.1", "tcp:7000:interface=127.0.0.1:backlog=100"),
                    Listener("tcp", "tcp:7001:backlog=9", "tcp:7001:backlog=9"),
                    Listener("udp", "[::1]:7", "[::1]:7"),
                    Listener("unix", "/run/e.sock", "unix:/run/e.sock:mode=600:lockfile=1:backlog=100"),
                    Listener("unix", "unix:/tmp/x.sock", "unix:/tmp/x.sock:mode=600:backlog=100"),
                    Listener("random", "0", BARE.format(0) + ":backlog=100"),
                    Listener("random", "haproxy:tcp:7002", "haproxy:tcp:7002:backlog=100"),
                    Listener("pb", "tcp6:8787", "tcp6:8787:backlog=100"),
                    Listener("metrics", "9101", "tcp:9101:interface=127.0.0.1:backlog=100"),
                ],
            },
        )

    def test_one_listener_replaces_defaults(self):
        self.assertEqual([l.label for l in parse("--unix", "s")["listeners"]], ["--unix s"])

    def test_unix_path_with_colon_is_escaped(self):
        (listener,) = parse("--unix", "/tmp/a:b")["listeners"]
        self.assertEqual(listener.description, f"unix:/tmp/a\\:b:mode=660:lockfile=1:backlog={BACKLOG}")

    def test_errors(self):
        cases = {
            ("--tcp", "70000"): "--tcp 70000: port out of range (0-65535)",
            ("--tcp", "-1"): "--tcp -1: port out of range (0-65535)",
            ("--udp", "70000"): "--udp 70000: port out of range (0-65535)",
            ("--tcp", "tcp:foo"): "--tcp tcp:foo: not a port or a server endpoint description: 'foo' is not a number",
            ("--tcp", "bogus:1"): "--tcp bogus:1: not a port or a server endpoint description",
            ("--udp", "x"): "--udp x: 'x' is not HOST:PORT",
            ("--udp", "1.2.3.4:99999"): "--udp 1.2.3.4:99999: port out of range (0-65535)",
            ("--udp", "systemd:"): "--udp systemd:: systemd: needs the socket's name",
            ("--unix-mode", "8"): "--unix-mode: '8' is not an octal file mode",
            ("--unix-mode", "1777"): "--unix-mode: '1777' is not an octal file mode",
            ("--log-format", "xml"): "--log-format: 'xml' is not text or json",
            ("--stop-signal", "NOPE"): "--stop-signal: unknown signal 'NOPE'",
            ("--stop-signal", "STOP"): "--stop-signal: SIGSTOP cannot be caught",
            ("--random", "ssl:1234:privateKey=/nonexistent.pem"): "--random ssl:1234",
            ("--idle-timeout", "-1"): "--idle-timeout: must be 0 or more, got -1",
            ("--max-per-ip", "x"): "--max-per-ip: 'x' is not a whole number",
            ("--pb-users", "/nonexistent/users"): "--pb-users /nonexistent/users: no such file or directory",
            ("--stop-word", "GO\nAWAY"): "--stop-word must be one line",
            ("--backlog", "0"): "--backlog: must be from 1 to 2147483647, got 0",
            ("--backlog", "many"): "--backlog: 'many' is not a whole number",
            ("--udp-rcvbuf", "-1"): "--udp-rcvbuf: must be from 0 to 1073741824, got -1",
            ("--udp-rcvbuf", "4M"): "--udp-rcvbuf: '4M' is not a whole number",
            ("--faults", "drop=1.5"): "--faults: drop=1.5: not a probability between 0 and 1",
        }
        for args, message in cases.items():
            e = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(message, str(e), args)
            self.assertNotIn("invalid literal", str(e))


class MakeServiceTests(SynchronousTestCase):
    def test_tree(self):
        reactor = MemoryReactor()
        top = makeService(
            parse("--tcp", "1", "--udp", "2", "--unix", "/tmp/s", "--random", "3", "--pb", "4"), reactor
        )
        sweeper, *children = list(top)
        self.assertIsInstance(sweeper, IdleSweeper)
        self.assertEqual(sweeper.timeout, 300.0)
        self.assertEqual(
            [(type(c), c.name) for c in children],
            [
                (StreamListenerService, "--tcp 1"),
                (DatagramListenerService, "--udp 2"),
                (StreamListenerService, "--unix /tmp/s"),
                (StreamListenerService, "--random 3"),
                (StreamListenerService, "--pb 4"),
            ],
        )
        tcp, udp, unix, rnd, pb = children
        self.assertEqual(pb.endpoint._interface, "127.0.0.1")
        # Every stream service inside the same policies (netecho.policies).
        self.assertIsInstance(pb.factory, Served)
        self.assertIsInstance(pb.factory.wrappedFactory, PBServerFactory)
        self.assertEqual(pb.factory.service, "pb")
        self.assertIs(tcp.factory, unix.factory)
        self.assertIsInstance(tcp.factory.wrappedFactory, EchoFactory)
        self.assertIsInstance(rnd.factory.wrappedFactory, RandomNumberFactory)
        self.assertIs(pb.factory.guard, tcp.factory.guard)
        self.assertIs(rnd.factory.guard, tcp.factory.guard)
        self.assertIsInstance(udp.protocol, ServedDatagrams)
        self.assertIsInstance(udp.protocol.wrapped, DatagramEcho)
        self.assertIsInstance(udp.protocol.guard, DatagramGuard)
        self.assertIsInstance(unix.endpoint, endpoints.UNIXServerEndpoint)
        self.assertEqual(unix.endpoint._mode, 0o660)
        self.assertEqual(tcp.factory.service, "echo")
        self.assertEqual(rnd.factory.service, "random")
        self.assertIs(tcp.factory.stats, top.stats)
        self.assertIsNone(tcp.factory.on_stop_word)

    def test_listening_in_memory(self):
        """Starting the tree listens on each endpoint (here a MemoryReactor)."""
        reactor = MemoryReactor()
        top = makeService(parse("--tcp", "tcp:1:interface=127.0.0.1", "--unix", "/nonexistent/s"), reactor)
        top.privilegedStartService()
        self.assertEqual([(p[0], p[3]) for p in reactor.tcpServers], [(1, "127.0.0.1")])
        self.assertEqual([(p[0], p[3]) for p in reactor.unixServers], [("/nonexistent/s", 0o660)])

    def test_exit_on_stop_wires_the_stop(self):
        top = makeService(parse("--tcp", "1", "--exit-on-stop"), MemoryReactor())
        _, tcp = top
        self.assertEqual(tcp.factory.on_stop_word, top.stop_word_heard)
        self.assertEqual(tcp.factory.stop_word, b"STOP")

    def test_backlog_and_receive_buffer(self):
        """--backlog reaches every stream listen(); --udp-rcvbuf every UDP listener."""
        reactor = MemoryReactor()
        top = makeService(parse("--tcp", "tcp:1:interface=127.0.0.1", "--unix", "/nonexistent/s",
                                "--udp", "2", "--backlog", "77", "--udp-rcvbuf", "1000"), reactor)
        _, tcp, udp, unix = top
        self.assertEqual(udp.rcvbuf, 1000)
        tcp.privilegedStartService()
        unix.privilegedStartService()
        self.assertEqual([p[2] for p in reactor.tcpServers], [77])
        self.assertEqual([p[2] for p in reactor.unixServers], [77])


class TwistdLogOptionTests(SynchronousTestCase):
    """Under twistd (a parent ServerOptions), netecho writes twistd's log."""

    def setUp(self):
        from netecho import daemon

        self.patch(daemon, "_twistd_log", None)

    def parse_under(self, twistd, *args):
        options = Options()
        options.parent = twistd
        options.parseOptions(list(args))
        return options

    def test_netecho_writes_the_log(self):
        from netecho.daemon import TwistdLog

        twistd = {"logger": None, "syslog": False, "logfile": None, "nodaemon": True}
        options = self.parse_under(twistd, "--log-format", "json")
        self.assertIsInstance(options["twistd-log"], TwistdLog)
        self.assertEqual(options["twistd-log"].log_format, "json")
        self.assertEqual(twistd["logger"], "netecho.daemon.twistd_observer")
        self.assertIs(makeService(options, MemoryReactor()).twistd_log, options["twistd-log"])

    def test_json_needs_netecho_to_write_the_log(self):
        twistd = {"logger": None, "syslog": True}
        e = self.assertRaises(usage.UsageError, self.parse_under, twistd, "--log-format", "json")
        self.assertEqual(str(e), "--log-format json: cannot be json with twistd's --syslog, "
                                 "which picks the log's format")
        self.assertIsNone(self.parse_under(twistd)["twistd-log"])
