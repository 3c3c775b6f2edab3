"""
netecho.ping and netecho.cli.ping in process: the probe format, the
statistics, the output, and runs against netecho.testing's services and
deliberately odd servers (drops, answers twice, late, out of order,
corrupted, closes after N probes).
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho.cli import build_parser
from netecho.cli import ping as cli_ping
from netecho.cli.tls import ClientTLS
from netecho.errors import UserError
from netecho.ping import Pinger, Statistics, payload, ping, summarize
from netecho.testing import tcp_echo, udp_echo, unix_echo

FAST = dict(interval=0.02, timeout=0.5)


class PayloadTests(SynchronousTestCase):
    def test_size_and_newline(self):
        for size in (16, 64, 1000, 65507):
            data = payload(7, b"abcdef", size)
            self.assertEqual(len(data), size)
            self.assertTrue(data.startswith(b"7 abcdef "))
            self.assertEqual(data.count(b"\n"), 1)
            self.assertTrue(data.endswith(b"\n"))

    def test_too_small_for_the_number(self):
        self.assertRaises(ValueError, payload, 10**12, b"abcdef", 16)

    def test_never_a_stop_line(self):
        self.assertNotEqual(payload(1, b"abcdef", 16).strip(), b"STOP")


class StatisticsTests(SynchronousTestCase):
    def test_mdev_as_ping(self):
        s = summarize([0.118, 0.143])
        self.assertAlmostEqual(s["avg"], 0.1305)
        self.assertAlmostEqual(s["mdev"], 0.0125)
        self.assertEqual(s["p50"], 0.118)
        self.assertEqual(s["p99"], 0.143)
        self.assertIsNone(summarize([]))

    def test_exit_status(self):
        self.assertEqual(Statistics("tcp", "t", 64, sent=3, received=3).exit_status(), 0)
        self.assertEqual(Statistics("tcp", "t", 64, sent=3, received=2, lost=1).exit_status(), 1)
        self.assertEqual(Statistics("tcp", "t", 64, sent=3, errors=3).exit_status(), 100)
        self.assertEqual(Statistics("tcp", "t", 64).exit_status(), 100)

    def test_loss_counts_errors(self):
        stats = Statistics("udp", "t", 64, sent=4, received=2, lost=1, errors=1)
        self.assertEqual(stats.loss_pct, 50.0)


def _args(*argv):
    return build_parser().parse_args(["ping", *argv])


class OutputTests(SynchronousTestCase):
    def output(self, *argv):
        out = io.StringIO()
        return cli_ping.Output(_args(*argv), out), out

    def test_as_the_issue_shows(self):
        output, out = self.output("tcp", "127.0.0.1:1234")
        pinger = type("P", (), {"target": "127.0.0.1:1234"})()
        output.header("127.0.0.1:1234")
        from netecho.ping import Event

        output.event(pinger, Event("reply", 1, 64, 0.143))
        output.event(pinger, Event("reply", 2, 64, 0.118))
        output.event(pinger, Event("timeout", 3, reason="1 s"))
        stats = Statistics("tcp", "127.0.0.1:1234", 64, sent=3, received=2, lost=1,
                           elapsed_ms=2003.2, rtts_ms=[0.143, 0.118])
        output.summary(stats)
        self.assertEqual(out.getvalue(), (
            "PING tcp 127.0.0.1:1234: 64 bytes\n"
            "64 bytes from 127.0.0.1:1234: seq=1 time=0.143 ms\n"
            "64 bytes from 127.0.0.1:1234: seq=2 time=0.118 ms\n"
            "seq=3 timeout (1 s)\n"
            "--- 127.0.0.1:1234 ping statistics ---\n"
            "3 probes sent, 2 replies, 33.3% loss, 0 errors, time 2003 ms\n"
            "rtt min/avg/max/mdev = 0.118/0.131/0.143/0.012 ms\n"
        ))

    def test_connect_and_json(self):
        output, out = self.output("tcp", "127.0.0.1:1234", "--connect", "--json")
        stats = Statistics("tcp", "127.0.0.1:1234", 64, sent=1, received=1, rtts_ms=[0.2], connects_ms=[0.1])
        output.header("127.0.0.1:1234")
        output.summary(stats)
        data = json.loads(out.getvalue())
        self.assertEqual(out.getvalue().count("\n"), 1)
        for key in ("transport", "target", "size", "sent", "received", "lost", "errors",
                    "duplicates", "loss_pct"):
            self.assertIn(key, data)
        self.assertEqual(set(data["rtt_ms"]), {"min", "avg", "max", "mdev", "p50", "p90", "p99"})
        self.assertEqual(data["connect_ms"]["min"], 0.1)

    def test_no_rtt_line_without_replies(self):
        output, out = self.output("udp", "127.0.0.1:1234", "-q")
        output.summary(Statistics("udp", "127.0.0.1:1234", 64, sent=2, lost=2))
        self.assertNotIn("rtt", out.getvalue())
        self.assertIn("2 probes sent, 0 replies, 100.0% loss, 0 errors", out.getvalue())


class UsageTests(SynchronousTestCase):
    def problem(self, *argv):
        args = _args(*argv)
        return cli_ping.usage_problem(args)

    def test_defaults(self):
        args = _args("udp", "127.0.0.1:7")
        self.assertEqual((args.count, args.interval, args.size, args.timeout, args.connect),
                         (5, 1.0, 64, 1.0, False))

    def test_problems(self):
        self.assertIn("65507", self.problem("udp", "127.0.0.1:7", "-s", "65508"))
        self.assertIsNone(self.problem("udp", "127.0.0.1:7", "-s", "65507"))
        self.assertIn("16", self.problem("tcp", "127.0.0.1:7", "-s", "15"))
        self.assertIn("--connect", self.problem("udp", "127.0.0.1:7", "--connect"))
        self.assertIn("--tls", self.problem("tcp", "127.0.0.1:7", "--ca", "x"))
        self.assertIsNone(self.problem("tls", "127.0.0.1:7", "--ca", "x"))
        self.assertIn("--key", self.problem("tls", "127.0.0.1:7", "--cert", "x"))

    def test_usage_exit_2(self):
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(cli_ping.run(_args("tcp", "nonsense")), 2)
        self.assertEqual(cli_ping.run(_args("udp", "127.0.0.1:7", "--connect")), 2)
        with self.assertRaises(SystemExit) as e:
            build_parser().parse_args(["ping", "sctp", "127.0.0.1:7"])
        self.assertEqual(e.exception.code, 2)


# -- deliberately odd servers


class OddUDP(protocol.DatagramProtocol):
    """
    An echo that misbehaves by C{mode}: C{drop-even} (every other datagram),
    C{twice}, C{late} (the 2nd reply after C{delay}), C{swap} (the 2nd reply
    after the 3rd), C{corrupt} (one byte of the 3rd reply changed).
    """

    def __init__(self, mode: str, delay: float = 0.0) -> None:
        self.mode = mode
        self.delay = delay
        self.seen = 0
        self.held = None
        self.calls = []

    def datagramReceived(self, data, addr):
        self.seen += 1
        n = self.seen
        send = lambda d=data: self.transport.write(d, addr)  # noqa: E731
        if self.mode == "drop-even" and n % 2 == 0:
            return
        if self.mode == "twice":
            send()
        if self.mode == "late" and n == 2:
            self.calls.append(reactor.callLater(self.delay, send))
            return
        if self.mode == "swap" and n == 2:
            self.held = data
            return
        if self.mode == "corrupt" and n == 3:
            data = data[:20] + bytes([data[20] ^ 0x20]) + data[21:]
        send(data)
        if self.mode == "swap" and n == 3:
            send(self.held)

    def stop(self):
        for call in self.calls:
            if call.active():
                call.cancel()


def odd_udp(testcase, mode, **kw):
    server = OddUDP(mode, **kw)
    port = reactor.listenUDP(0, server, interface="127.0.0.1")
    testcase.addCleanup(lambda: (server.stop(), port.stopListening())[1])
    return ("127.0.0.1", port.getHost().port)


class OddLines(protocol.Protocol):
    """A line echo that misbehaves by the factory's C{mode}: C{twice},
    C{corrupt} (the 2nd line), C{close-after} (closes after C{n} lines)."""

    def connectionMade(self):
        self.factory.live[self] = defer.Deferred()
        self.buffer = b""
        self.lines = 0

    def dataReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            line += b"\n"
            self.lines += 1
            mode = self.factory.mode
            if mode == "corrupt" and self.lines == 2:
                line = line[:-5] + b"?" + line[-4:]
            self.transport.write(line)
            if mode == "twice":
                self.transport.write(line)
            if mode == "close-after" and self.lines >= self.factory.n:
                self.transport.loseConnection()
                return

    def connectionLost(self, reason=None):
        self.factory.live.pop(self).callback(None)


def odd_tcp(testcase, mode, n=0, once=False):
    factory = protocol.Factory.forProtocol(OddLines)
    factory.mode, factory.n, factory.live = mode, n, {}
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    if once:
        # Only one connection: a reconnection is refused.
        made = factory.buildProtocol

        def build(addr):
            port.stopListening()
            return made(addr)

        factory.buildProtocol = build

    def stop():
        waiting = list(factory.live.values())
        for conn in list(factory.live):
            conn.transport.abortConnection()
        return defer.gatherResults([defer.maybeDeferred(port.stopListening), *waiting])

    testcase.addCleanup(stop)
    return ("127.0.0.1", port.getHost().port)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def kinds(self):
        return [(e.kind, e.seq) for e in self.events]


class BadServerNameTests(SynchronousTestCase):
    def test_one_line_not_a_traceback(self):
        for name, insecure in (("a..b", False), ("a..b", True), ("xn--zz", False)):
            with self.assertRaises(UserError) as caught:
                ClientTLS("127.0.0.1", sni=name, insecure=insecure)
            self.assertIn(f"tls: {name!r} is not a valid host name", str(caught.exception))


class StopWhileDialingTests(TestCase):
    async def test_nothing_left_behind(self):
        """
        stop() while a connection is still in its TLS handshake (a server
        that never answers): run() returns with no connection or timer left
        (trial would call the reactor dirty).
        """
        server = tcp_echo(self, faults="stall")
        tls = ClientTLS("127.0.0.1", insecure=True)
        pinger = Pinger(reactor, "tls", (server.host, server.port), count=0, interval=0.05, timeout=5,
                        connect=True, tls=tls)
        reactor.callLater(0.3, pinger.stop)
        stats = await pinger.run()
        self.assertEqual(stats.received, 0)


class ShortIntervalTests(TestCase):
    async def test_fast_probes_keep_the_reactor_turning_and_memory_flat(self):
        """
        -i 0.001 with probes already due: replies, timeouts and stop() still
        run between probes, and only the last probes are remembered.
        """
        from netecho.ping import KEPT_PROBES

        server = udp_echo(self)
        pinger = Pinger(reactor, "udp", (server.host, server.port), count=0, interval=0.001, timeout=1)
        seen = []
        reactor.callLater(0.8, lambda: (seen.append(len(pinger.probes)), pinger.stop()))
        stats = await pinger.run()
        self.assertGreater(stats.received, KEPT_PROBES)
        self.assertLessEqual(seen[0], KEPT_PROBES + 1)
        self.assertEqual(stats.errors, 0)

    def test_interval_floor(self):
        args = build_parser().parse_args(["ping", "udp", "127.0.0.1:7", "-i", "0.0000001"])
        self.assertIn("--interval 1e-07: at least 0.001 s", cli_ping.usage_problem(args))


class PingAgainstServicesTests(TestCase):
    """The API (netecho.ping.ping) against netecho.testing's services."""

    async def test_tcp(self):
        server = tcp_echo(self)
        events = Recorder()
        stats = await ping(reactor, "tcp", (server.host, server.port), count=4, report=events, **FAST)
        self.assertEqual((stats.sent, stats.received, stats.lost, stats.errors), (4, 4, 0, 0))
        self.assertEqual(events.kinds(), [("reply", n) for n in range(1, 5)])
        self.assertEqual(len(stats.rtts_ms), 4)
        self.assertEqual(stats.exit_status(), 0)

    async def test_tcp_connect_each(self):
        server = tcp_echo(self)
        stats = await ping(reactor, "tcp", (server.host, server.port), count=3, connect=True, **FAST)
        self.assertEqual((stats.sent, stats.received), (3, 3))
        self.assertEqual(len(stats.connects_ms), 3)
        self.assertEqual(server.stats.tcp, 3)

    async def test_unix_large(self):
        server = unix_echo(self)
        stats = await ping(reactor, "unix", server.path, count=3, size=200_000, **FAST)
        self.assertEqual((stats.sent, stats.received), (3, 3))

    async def test_udp_largest(self):
        server = udp_echo(self)
        stats = await ping(reactor, "udp", (server.host, server.port), count=2, size=65507, **FAST)
        self.assertEqual((stats.sent, stats.received), (2, 2))

    async def test_udp_with_drops(self):
        server = udp_echo(self, faults="drop=0.5,seed=1")
        stats = await ping(reactor, "udp", (server.host, server.port), count=10, interval=0.01, timeout=0.2)
        self.assertEqual(stats.sent, 10)
        self.assertEqual(stats.lost, server.stats.faults["drop"])
        self.assertEqual(stats.received + stats.lost, 10)
        self.assertEqual(stats.exit_status(), 1)

    async def test_tcp_delay_is_measured(self):
        server = tcp_echo(self, faults="delay=50ms")
        stats = await ping(reactor, "tcp", (server.host, server.port), count=2, **FAST)
        self.assertEqual(stats.received, 2)
        self.assertGreaterEqual(min(stats.rtts_ms), 45)

    async def test_tcp_all_corrupted(self):
        server = tcp_echo(self, faults="corrupt=1,seed=2")
        stats = await ping(reactor, "tcp", (server.host, server.port), count=3, **FAST)
        self.assertEqual((stats.received, stats.errors), (0, 3))
        self.assertEqual(stats.exit_status(), 100)

    async def test_no_drift(self):
        """Probe k leaves at start + k*interval, however long the replies took."""
        server = tcp_echo(self, faults="delay=30ms")
        sent = []
        pinger = Pinger(reactor, "tcp", (server.host, server.port), count=5, interval=0.02, timeout=1)
        original = pinger._send
        pinger._send = lambda seq: (sent.append(pinger.clock()), original(seq))
        await pinger.run()
        for k, at in enumerate(sent):
            self.assertLess(abs(at - sent[0] - k * 0.02), 0.015, sent)

    async def test_refused_is_user_error(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for transport in ("tcp", "udp"):
            with self.assertRaises(UserError) as e:
                await ping(reactor, transport, ("127.0.0.1", port), count=2, **FAST)
            self.assertIn(f"127.0.0.1:{port}: connection refused", str(e.exception))
        with self.assertRaises(UserError) as e:
            await ping(reactor, "tcp", ("127.0.0.1", port), count=2, connect=True, **FAST)
        self.assertEqual(str(e.exception), f"dial tcp 127.0.0.1:{port}: connection refused")

    async def test_missing_unix_socket(self):
        path = os.path.join(tempfile.mkdtemp(), "nothing.sock")
        with self.assertRaises(UserError) as e:
            await ping(reactor, "unix", path, count=1, **FAST)
        self.assertEqual(str(e.exception), f"dial unix {path}: connect: no such file or directory")

    async def test_stop_early(self):
        server = udp_echo(self)
        pinger = Pinger(reactor, "udp", (server.host, server.port), count=0, interval=0.02, timeout=0.5)
        reactor.callLater(0.11, pinger.stop)
        stats = await pinger.run()
        self.assertGreaterEqual(stats.sent, 3)
        self.assertLessEqual(stats.sent, 8)
        self.assertEqual(stats.received + stats.lost, stats.sent)


class OddServerTests(TestCase):
    async def test_udp_drops_every_other(self):
        stats = await ping(reactor, "udp", odd_udp(self, "drop-even"), count=6, interval=0.02, timeout=0.2)
        self.assertEqual((stats.sent, stats.received, stats.lost, stats.errors), (6, 3, 3, 0))
        self.assertEqual(stats.loss_pct, 50.0)
        self.assertEqual(stats.exit_status(), 1)

    async def test_udp_answers_twice(self):
        events = Recorder()
        stats = await ping(reactor, "udp", odd_udp(self, "twice"), count=4, report=events, **FAST)
        self.assertEqual((stats.received, stats.duplicates, stats.errors), (4, 4, 0))
        self.assertEqual([k for k in events.kinds() if k[0] == "duplicate"], [("duplicate", n) for n in range(1, 5)])
        self.assertEqual(stats.exit_status(), 0)

    async def test_udp_answers_late(self):
        events = Recorder()
        stats = await ping(reactor, "udp", odd_udp(self, "late", delay=0.25), count=10,
                           interval=0.05, timeout=0.1, report=events)
        self.assertEqual((stats.sent, stats.received, stats.lost, stats.late, stats.errors), (10, 9, 1, 1, 0))
        self.assertIn(("timeout", 2), events.kinds())
        self.assertIn(("late", 2), events.kinds())
        self.assertEqual(stats.exit_status(), 1)

    async def test_udp_reordered(self):
        stats = await ping(reactor, "udp", odd_udp(self, "swap"), count=4, **FAST)
        self.assertEqual((stats.received, stats.reordered, stats.lost, stats.errors), (4, 1, 0, 0))
        self.assertEqual(stats.exit_status(), 0)

    async def test_udp_corrupted(self):
        events = Recorder()
        stats = await ping(reactor, "udp", odd_udp(self, "corrupt"), count=4, report=events, **FAST)
        self.assertEqual((stats.received, stats.errors, stats.lost), (3, 1, 0))
        (error,) = [e for e in events.events if e.kind == "error"]
        self.assertEqual((error.seq, error.reason), (3, "corrupted reply (byte 20 differs)"))
        self.assertEqual(stats.exit_status(), 1)

    async def test_tcp_answers_twice(self):
        stats = await ping(reactor, "tcp", odd_tcp(self, "twice"), count=3, interval=0.05, timeout=0.5)
        self.assertEqual((stats.received, stats.duplicates, stats.errors), (3, 3, 0))

    async def test_tcp_corrupted(self):
        stats = await ping(reactor, "tcp", odd_tcp(self, "corrupt"), count=3, **FAST)
        self.assertEqual((stats.received, stats.errors), (2, 1))
        self.assertEqual(stats.exit_status(), 1)

    async def test_tcp_closes_after_two(self):
        events = Recorder()
        stats = await ping(reactor, "tcp", odd_tcp(self, "close-after", n=2, once=True), count=4,
                           interval=0.05, timeout=0.5, report=events)
        self.assertEqual((stats.sent, stats.received, stats.errors, stats.lost), (4, 2, 2, 0))
        errors = [e.reason for e in events.events if e.kind == "error"]
        self.assertTrue(all("connection refused" in r for r in errors), errors)
        self.assertEqual(stats.exit_status(), 1)

    async def test_tcp_closes_and_comes_back(self):
        """A new connection is opened when the server closed the last one."""
        stats = await ping(reactor, "tcp", odd_tcp(self, "close-after", n=1), count=3, interval=0.05, timeout=0.5)
        self.assertEqual((stats.sent, stats.received, stats.errors), (3, 3, 0))


class CommandInProcessTests(TestCase):
    async def test_quiet_prints_summary_only(self):
        server = udp_echo(self)
        out = io.StringIO()
        status = await cli_ping.main(reactor, _args("udp", server.address, "-c", "2", "-i", "0.02", "-q"), out)
        self.assertEqual(status, 0)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], f"--- {server.address} ping statistics ---")
        self.assertTrue(lines[1].startswith("2 probes sent, 2 replies, 0.0% loss, 0 errors, time "))
        self.assertEqual(len(lines), 3)


class TLSOptionTests(SynchronousTestCase):
    def test_unreadable_ca(self):
        with self.assertRaises(UserError) as e:
            ClientTLS("localhost", ca="/nonexistent/ca.pem")
        self.assertEqual(str(e.exception), "tls: cannot read --ca /nonexistent/ca.pem: no such file or directory")

    def test_ca_without_certificate(self):
        path = os.path.join(tempfile.mkdtemp(), "empty.pem")
        open(path, "w").close()
        self.assertRaises(UserError, ClientTLS, "localhost", ca=path)



