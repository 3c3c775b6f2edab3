"""
The load generator (``netecho bench``) against the real daemon, socat, and
servers broken on purpose (no echo, short, corrupted, rate-limited, closing
after a few messages, one slow reply), and benchmarks/run.py producing its
table. No timing assertions beyond what a broken server makes certain:
only that things run, count the right error kinds and exit as documented.

The bench code is run from this checkout (it may be newer than the installed
package); the daemon is the installed one, as everywhere in tests/integration.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from netecho.testing import random_numbers, tcp_echo
from tests import peers
from tests.integration.harness import Daemon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = "import sys; from netecho.cli import main; raise SystemExit(main(['bench', *sys.argv[1:]]))"
#: The UDP limits stay on, far above what one test sends in a burst.
NO_THROTTLE = ("--udp-rate", "1000000000", "--udp-global-rate", "1000000000")


def bench(*args: str, timeout: float = 60, stderr=None) -> subprocess.CompletedProcess:
    """C{netecho bench ARGS} from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", BENCH, *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.PIPE, stderr=stderr if stderr is not None else subprocess.PIPE,
        text=True, timeout=timeout,
    )


def bench_json(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = bench(*args, "--json")
    assert out.stdout.strip(), f"no report; exit {out.returncode}; stderr:\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def peak_rss_kib(*args: str) -> tuple[int, subprocess.CompletedProcess]:
    """Run C{netecho bench ARGS}; its peak resident memory (KiB, from wait4) and its output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", BENCH, *args], cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=ROOT), stdout=out, stderr=err, text=True)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return usage.ru_maxrss, subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


class BrokenServer:
    """
    A TCP or UDP server on 127.0.0.1 that answers wrongly, in a thread.
    C{how}: C{corrupt} flips the last byte of each message; C{short} leaves
    it out (and, on TCP, keeps the connection open); C{silent} reads and
    never answers; C{bad-head} sends half a message with its first byte
    wrong and nothing more; C{close:N} echoes N messages, then closes;
    C{slow:S} holds its first reply for S seconds (what follows waits
    behind it, as on any stream), then echoes at once; C{rate:R} (UDP)
    answers at most R datagrams a second (a token bucket) and drops the rest.
    """

    def __init__(self, testcase: TestCase, kind: str, how: str, size: int) -> None:
        self.kind, self.how, self.size = kind, how, size
        self.what, _, arg = how.partition(":")
        self.arg = float(arg) if arg else 0.0
        sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        self.listener = socket.socket(socket.AF_INET, sock_type)
        self.listener.bind(("127.0.0.1", 0))
        if kind == "tcp":
            self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.stop)

    def answer(self, message: bytes, served: int) -> bytes | None:
        """What goes back for the C{served}-th message (None: close)."""
        if self.what == "corrupt":
            return message[:-1] + bytes([message[-1] ^ 0xFF])
        if self.what == "short":
            return message[:-1]
        if self.what == "silent":
            return b""
        if self.what == "bad-head":
            return bytes([message[0] ^ 0xFF]) + message[1:len(message) // 2] if served == 0 else b""
        if self.what == "close" and served >= self.arg:
            return None
        return message

    def serve(self) -> None:
        if self.kind == "udp":
            return self.serve_udp()
        conns: dict[socket.socket, list] = {}  # sock: [pending, out, served, hold_until]
        try:
            while not self.stopping:
                ready, _, _ = select.select([self.listener, *conns], [], [], 0.01)
                now = time.monotonic()
                for s in ready:
                    if s is self.listener:
                        conn, _ = s.accept()
                        conns[conn] = [bytearray(), bytearray(), 0, None]
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    state = conns[s]
                    if not data:
                        del conns[s]
                        s.close()
                        continue
                    state[0] += data
                    while len(state[0]) >= self.size:
                        message = bytes(state[0][: self.size])
                        del state[0][: self.size]
                        reply = self.answer(message, state[2])
                        if reply is None:
                            del conns[s]
                            s.close()
                            break
                        if self.what == "slow" and state[3] is None:
                            state[3] = now + self.arg
                        state[1] += reply
                        state[2] += 1
                for s, state in list(conns.items()):
                    if state[1] and (state[3] is None or now >= state[3]):
                        try:
                            s.sendall(state[1])
                        except OSError:
                            pass
                        state[1].clear()
        finally:
            for s in conns:
                s.close()

    def serve_udp(self) -> None:
        tokens, then = self.arg, time.monotonic()
        while not self.stopping:
            ready, _, _ = select.select([self.listener], [], [], 0.05)
            if not ready:
                continue
            data, peer = self.listener.recvfrom(65536)
            if data.startswith(b"netecho bench probe"):
                self.listener.sendto(data, peer)  # the reachability probe gets its echo
            elif self.what == "rate":
                now = time.monotonic()
                tokens, then = min(self.arg / 10, tokens + (now - then) * self.arg), now
                if tokens >= 1:
                    tokens -= 1
                    self.listener.sendto(data, peer)
            else:
                self.listener.sendto(self.answer(data, 0) or b"", peer)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.listener.close()


def check_clean(testcase: TestCase, report: dict, out: subprocess.CompletedProcess) -> None:
    """Round trips counted, none failed, percentiles in order, nothing on stderr."""
    testcase.assertEqual(out.returncode, 0, out.stderr)
    testcase.assertEqual(out.stderr, "")
    testcase.assertGreater(report["round_trips"], 0)
    testcase.assertGreater(report["round_trips_per_s"], 0)
    testcase.assertEqual(report["errors"], 0, report["error_kinds"])
    lat = report["latency_ms"]
    testcase.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["p99.99"] <= lat["max"], lat)


SHORT_RUN = ("--duration", "0.4", "--warmup", "0.1")


class BenchAgainstDaemonTests(TestCase):
    """Round trips counted, none failed, against the real daemon."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="netecho-bench-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "echo.sock")
        self.daemon = Daemon(self, "--tcp", "0", "--udp", "0", "--unix", self.path, "--pb", "0",
                             *NO_THROTTLE).start()
        self.tcp = f"127.0.0.1:{self.daemon.port('--tcp 0')}"

    def test_tcp(self) -> None:
        report, out = bench_json("tcp", self.tcp, "--connections", "4", "--size", "1K", *SHORT_RUN)
        check_clean(self, report, out)
        self.assertEqual((report["size"], report["connections"], report["pipeline"]), (1024, 4, 1))
        self.assertEqual(report["latency_from"], "send")
        self.assertNotIn("intervals", report)

    def test_tcp_processes_and_table(self) -> None:
        """Two worker processes; the plain table: a title, a header and a row of numbers."""
        out = bench("tcp", self.tcp, "--connections", "4", "--size", "16K", *SHORT_RUN, "--processes", "2")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(len(lines), 3, out.stdout)
        self.assertIn("2 processes", lines[0])
        header, row = lines[1].split(), lines[2].split()
        self.assertEqual(header, ["round-trips", "rt/s", "MB/s", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms",
                                  "p99.99_ms", "max_ms", "errors"])
        values = dict(zip(header, row))
        self.assertGreater(int(values["round-trips"]), 0)
        self.assertEqual(int(values["errors"]), 0)
        for key in header[1:-1]:
            float(values[key])
        # Not a terminal: no progress line.
        self.assertEqual(out.stderr, "")

    def test_udp(self) -> None:
        report, out = bench_json("udp", f"127.0.0.1:{self.daemon.port('--udp 0')}", "--connections", "4",
                                 "--size", "1K", *SHORT_RUN)
        check_clean(self, report, out)

    def test_unix_pipelined(self) -> None:
        """--pipeline: K messages in flight on each connection, every echo still checked."""
        report, out = bench_json("unix", self.path, "--connections", "2", "--size", "64", "--pipeline", "8",
                                 *SHORT_RUN)
        check_clean(self, report, out)
        self.assertEqual(report["pipeline"], 8)

    def test_udp_pipelined_two_processes(self) -> None:
        report, out = bench_json("udp", f"127.0.0.1:{self.daemon.port('--udp 0')}", "--connections", "4",
                                 "--size", "100", "--pipeline", "4", "--processes", "2", *SHORT_RUN)
        check_clean(self, report, out)

    def test_pb(self) -> None:
        report, out = bench_json("pb", f"127.0.0.1:{self.daemon.port('--pb 0')}", "--connections", "2",
                                 "--size", "64", "--pipeline", "2", *SHORT_RUN)
        check_clean(self, report, out)
        self.assertEqual(report["call"], "echo")

    def test_intervals(self) -> None:
        """--interval: one line per interval, and in --json a list of them, merged over processes."""
        report, out = bench_json("tcp", self.tcp, "--connections", "2", "--size", "64", "--duration", "0.6",
                                 "--warmup", "0", "--interval", "0.2", "--processes", "2")
        check_clean(self, report, out)
        intervals = report["intervals"]
        self.assertEqual([(i["start"], i["end"]) for i in intervals], [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6)])
        self.assertEqual(sum(i["round_trips"] for i in intervals), report["round_trips"])
        for i in intervals:
            self.assertEqual(set(i), {"start", "end", "round_trips", "round_trips_per_s", "mb_per_s", "p99_ms",
                                      "errors"})
            self.assertGreater(i["p99_ms"], 0)
        out = bench("tcp", self.tcp, "--connections", "2", "--size", "64", "--duration", "0.5", "--warmup", "0",
                    "--interval", "0.25")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(len(lines), 2 + 3, out.stdout)
        self.assertTrue(lines[0].startswith("[   0.0-   0.2 s]  rt/s"), lines[0])
        self.assertIn("errors 0", lines[1])

    def test_open_loop(self) -> None:
        """--rate: the achieved rate beside the target; latency from the scheduled time."""
        report, out = bench_json("tcp", self.tcp, "--connections", "2", "--size", "64", "--rate", "400",
                                 "--duration", "0.5", "--warmup", "0")
        check_clean(self, report, out)
        self.assertEqual(report["latency_from"], "scheduled send")
        rate = report["rate"]
        self.assertEqual(rate["target"], 400)
        # On schedule, give or take the replies still in flight at the end.
        self.assertGreater(report["round_trips"], 150)
        self.assertLessEqual(report["round_trips"], 201)
        self.assertGreater(rate["sent_per_s"], 300)

    def test_connect(self) -> None:
        """bench connect, TCP and Unix: connections a second and connect times."""
        for target in (self.tcp, self.path):
            report, out = bench_json("connect", target, "--connections", "2", *SHORT_RUN)
            check_clean(self, report, out)
            self.assertEqual(report["network"], "unix" if target == self.path else "tcp")
            self.assertEqual(report["size"], 64)
            self.assertEqual(report["connections_per_s"], report["round_trips_per_s"])
            self.assertTrue(0 < report["connect_ms"]["p50"] <= report["connect_ms"]["max"], report)

    def test_memory_constant(self) -> None:
        """
        The peak RSS of a long run equals a short one's within 5 MB (the
        histograms have a fixed size; no sample is kept). Shortened to
        1 s against 4 s here; the README's figure is 5 s against 60 s.
        """
        peaks = []
        for duration in ("1", "4"):
            peak, out = peak_rss_kib("tcp", self.tcp, "--connections", "4", "--size", "64", "--duration", duration,
                                     "--warmup", "0", "--json")
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertGreater(json.loads(out.stdout)["round_trips"], 1000 * float(duration))
            peaks.append(peak)
        self.assertLess(abs(peaks[1] - peaks[0]), 5 * 1024, peaks)


class BenchTLSTests(TestCase):
    """bench tcp --tls against the daemon's ssl: listener (Twisted's TLS on both sides)."""

    def setUp(self) -> None:
        from tests.certs import make_pki

        self.dir = tempfile.mkdtemp(prefix="netecho-bench-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pki = make_pki(self.dir)
        label = f"ssl:0:interface=127.0.0.1:privateKey={self.pki.server.key}:certKey={self.pki.server.cert}"
        self.daemon = Daemon(self, "--tcp", label, *NO_THROTTLE).start()
        self.target = f"127.0.0.1:{self.daemon.port(f'--tcp {label}')}"

    def test_round_trips_over_tls(self) -> None:
        report, out = bench_json("tcp", self.target, "--tls", "--ca", self.pki.ca.cert,
                                 "--connections", "3", "--size", "4K", *SHORT_RUN, "--processes", "2")
        check_clean(self, report, out)

    def test_verification_failure_is_one_line(self) -> None:
        out = bench("tcp", self.target, "--tls", *SHORT_RUN)  # the system's trust store knows no test CA
        self.assertEqual(out.returncode, 100, out.stderr)
        self.assertEqual(out.stderr.strip().splitlines()[-1],
                         f"tls {self.target}: certificate verify failed: unable to get local issuer certificate")
        self.assertNotIn("Traceback", out.stderr)

    def test_usage(self) -> None:
        for args in (("udp", self.target, "--tls"), ("tcp", self.target, "--ca", "x.pem"),
                     ("tcp", self.target, "--tls", "--rate", "100")):
            self.assertEqual(bench(*args).returncode, 2, args)


class BenchAgainstSocatTests(TestCase):
    """Another echo server: socat's TCP listener running cat for each connection."""

    def test_socat(self) -> None:
        socat = peers.require("socat", "socat")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.kill)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.fail("socat did not listen")
                time.sleep(0.05)
        report, out = bench_json("tcp", f"127.0.0.1:{port}", "--connections", "2", "--size", "100", *SHORT_RUN)
        check_clean(self, report, out)


class BenchErrorsTests(TestCase):
    """
    Wrong echoes are errors of the right kind, never round trips; a run with
    none completed or any failed exits 100 with one line on stderr.
    """

    def test_no_echo(self) -> None:
        """A server that never answers: no round trip, one line, exit 100 (not a table of zeros and 0)."""
        server = BrokenServer(self, "tcp", "silent", 64)
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "64",
                                 "--duration", "0.5", "--warmup", "0")
        self.assertEqual((report["round_trips"], report["errors"]), (0, 0))
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, f"bench tcp {server.address}: no round trip completed in 0.5 s\n")
        # With a timeout within the run, the waits are counted too.
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "64",
                                 "--duration", "0.5", "--warmup", "0", "--timeout", "0.1")
        self.assertGreater(report["error_kinds"].get("timeout", 0), 0)
        self.assertEqual(out.returncode, 100)
        self.assertTrue(out.stderr.startswith(f"bench tcp {server.address}: no round trip completed in 0.5 s: "),
                        out.stderr)

    def test_random_port_is_corrupted(self) -> None:
        """netecho's own --random service answers something else: corrupted at once, not at the timeout."""
        server = random_numbers(self)

        def check(result: tuple) -> None:
            report, out = result
            self.assertEqual(report["round_trips"], 0)
            self.assertGreater(report["error_kinds"].get("corrupted", 0), 2)
            self.assertEqual(set(report["error_kinds"]), {"corrupted"})
            self.assertEqual(out.returncode, 100)

        return threads.deferToThread(bench_json, "tcp", server.address, "--connections", "1", "--size", "64",
                                     "--duration", "0.4", "--warmup", "0").addCallback(check)

    def test_corrupted_at_first_wrong_byte(self) -> None:
        """Half a reply with a wrong first byte, and nothing more: corrupted at once, many times over."""
        server = BrokenServer(self, "tcp", "bad-head", 256)
        began = time.monotonic()
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "256",
                                 "--duration", "0.5", "--warmup", "0")
        self.assertLess(time.monotonic() - began, 4.5)  # not the 5 s timeout
        self.assertEqual(set(report["error_kinds"]), {"corrupted"})
        self.assertGreater(report["error_kinds"]["corrupted"], 2)
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)

    def test_tcp_corrupted_echo(self) -> None:
        server = BrokenServer(self, "tcp", "corrupt", 256)
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "256",
                                 "--duration", "0.4", "--warmup", "0")
        self.assertGreater(report["error_kinds"].get("corrupted", 0), 0)
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)
        self.assertTrue(out.stderr.startswith(f"bench tcp {server.address}: no round trip completed in 0.4 s: "),
                        out.stderr)
        self.assertIn(" corrupted", out.stderr)

    def test_tcp_short_echo(self) -> None:
        """Still short when the run ends: short (without waiting for the 5 s timeout)."""
        server = BrokenServer(self, "tcp", "short", 100)
        began = time.monotonic()
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "100",
                                 "--duration", "0.4", "--warmup", "0")
        self.assertLess(time.monotonic() - began, 4.5)
        self.assertEqual(report["error_kinds"], {"short": 2})
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)
        # At the timeout within the run: short again, and the connection is reopened.
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "100",
                                 "--duration", "0.5", "--warmup", "0", "--timeout", "0.1")
        self.assertGreater(report["error_kinds"].get("short", 0), 2)
        self.assertEqual(set(report["error_kinds"]), {"short"})
        self.assertEqual(out.returncode, 100)

    def test_closes_after_n_messages(self) -> None:
        """A server closing after a few messages: closed, reopened, the rest counted; exit 100."""
        server = BrokenServer(self, "tcp", "close:5", 128)
        report, out = bench_json("tcp", server.address, "--connections", "2", "--size", "128",
                                 "--duration", "0.4", "--warmup", "0")
        self.assertGreater(report["round_trips"], 0)
        self.assertGreater(report["error_kinds"].get("closed", 0), 0)
        self.assertEqual(set(report["error_kinds"]), {"closed"})
        # Each close follows exactly five round trips on its connection.
        closes = report["error_kinds"]["closed"]
        self.assertTrue(5 * closes <= report["round_trips"] <= 5 * closes + 10, report)
        self.assertEqual(out.returncode, 100)
        self.assertIn("round trips failed", out.stderr)

    def test_udp_short_datagram(self) -> None:
        server = BrokenServer(self, "udp", "short", 512)
        report, out = bench_json("udp", server.address, "--connections", "2", "--size", "512",
                                 "--duration", "0.4", "--warmup", "0")
        self.assertGreater(report["error_kinds"].get("short", 0), 0)
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)

    def test_udp_rate_limited(self) -> None:
        """Replies at a flat rate while requests go unanswered: lost, and the rate limit named."""
        server = BrokenServer(self, "udp", "rate:300", 256)
        report, out = bench_json("udp", server.address, "--connections", "20", "--size", "256", "--timeout", "0.05",
                                 "--duration", "2.1", "--warmup", "0")
        self.assertGreater(report["error_kinds"].get("lost", 0), 0)
        self.assertEqual(out.returncode, 100)
        self.assertIn("replies capped near 300/s: is the server rate-limiting?", out.stderr)
        self.assertEqual(len(out.stderr.splitlines()), 1)

    def test_daemon_udp_defaults(self) -> None:
        """The README's UDP example against the daemon on its defaults meets its --udp-rate 1000."""
        daemon = Daemon(self, "--udp", "0").start()
        report, out = bench_json("udp", f"127.0.0.1:{daemon.port('--udp 0')}", "--connections", "10",
                                 "--duration", "2.1", "--warmup", "0")
        self.assertEqual(out.returncode, 100)
        self.assertGreater(report["error_kinds"].get("lost", 0), 0)
        self.assertIn("replies capped near 1000/s: is the server rate-limiting?", report["warnings"])

    def test_refused(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nobody listens once closed
        for transport in ("tcp", "connect"):
            out = bench(transport, f"127.0.0.1:{port}", "--duration", "0.2")
            self.assertEqual(out.returncode, 100)
            self.assertEqual(out.stderr, f"dial tcp 127.0.0.1:{port}: connection refused\n")

    def test_connect_failures_by_kind(self) -> None:
        """bench connect against a server that closes at once, and one that never answers."""
        server = BrokenServer(self, "tcp", "close:0", 64)
        report, out = bench_json("connect", server.address, "--connections", "2", "--duration", "0.3",
                                 "--warmup", "0")
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(set(report["error_kinds"]), {"closed"})
        self.assertEqual(out.returncode, 100)
        self.assertTrue(out.stderr.startswith(f"bench connect {server.address}: no connection completed in 0.3 s: "),
                        out.stderr)
        server = BrokenServer(self, "tcp", "silent", 64)
        report, out = bench_json("connect", server.address, "--connections", "2", "--duration", "0.4",
                                 "--warmup", "0", "--timeout", "0.1")
        self.assertEqual(set(report["error_kinds"]), {"timeout"})
        self.assertEqual(out.returncode, 100)

    def test_usage(self) -> None:
        for args, words in [
            (("udp", "127.0.0.1:7", "--size", "70000"), "at most 65507"),
            (("tcp", "localhost", "--duration", "1"), "HOST:PORT"),
            (("tcp", "127.0.0.1:7", "--rate", "0"), "more than 0"),
            (("pb", "127.0.0.1:7", "--rate", "10"), "--rate: not for pb"),
            (("tcp", "127.0.0.1:7", "--rate", "10", "--pipeline", "2"), "closed loop only"),
            (("tcp", "127.0.0.1:7", "--pipeline", "0"), "out of range"),
            (("tcp", "127.0.0.1:7", "--interval", "x"), "not a number of seconds"),
        ]:
            out = bench(*args)
            self.assertEqual(out.returncode, 2, args)
            self.assertIn(words, out.stderr, args)


class OpenLoopLatencyTests(TestCase):
    """--rate: latency runs from the scheduled send time, so time spent waiting shows."""

    def test_delay_counted(self) -> None:
        """Against netecho.testing's echo with delay=50ms, every percentile includes the 50 ms."""
        server = tcp_echo(self, faults="delay=50ms")

        def check(result: tuple) -> None:
            report, out = result
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertGreaterEqual(report["latency_ms"]["p50"], 50)
            self.assertLess(report["latency_ms"]["p50"], 500)
            self.assertGreater(report["round_trips"], 20)
            self.assertGreater(report["rate"]["sent_per_s"], 60)

        return threads.deferToThread(bench_json, "tcp", server.address, "--connections", "2", "--size", "64",
                                     "--rate", "100", "--duration", "0.6", "--warmup", "0").addCallback(check)

    def test_wait_behind_a_slow_reply(self) -> None:
        """
        One reply held 300 ms: closed loop sees one slow sample (coordinated
        omission), open loop sees every request that queued behind it.
        """
        server = BrokenServer(self, "tcp", "slow:0.3", 64)
        closed, out = bench_json("tcp", server.address, "--connections", "1", "--size", "64",
                                 "--duration", "1", "--warmup", "0")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertGreaterEqual(closed["latency_ms"]["max"], 290)
        self.assertLess(closed["latency_ms"]["p90"], 100)
        server = BrokenServer(self, "tcp", "slow:0.3", 64)
        opened, out = bench_json("tcp", server.address, "--connections", "1", "--size", "64",
                                 "--rate", "200", "--duration", "1", "--warmup", "0")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertGreaterEqual(opened["latency_ms"]["p90"], 100)
        self.assertGreaterEqual(opened["latency_ms"]["max"], 290)


class ProgressTests(TestCase):
    """The progress line: on a terminal only, at most ten redraws a second."""

    def test_terminal(self) -> None:
        server = BrokenServer(self, "tcp", "slow:0", 64)
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        try:
            out = bench("tcp", server.address, "--connections", "1", "--size", "64", "--duration", "1",
                        "--warmup", "0", stderr=slave)
        finally:
            os.close(slave)
        self.assertEqual(out.returncode, 0)
        seen = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        draws = seen.count(b"\rmeasuring")
        self.assertGreater(draws, 3, seen)
        self.assertLessEqual(draws, 12, seen)
        self.assertIn(b"\r\x1b[K", seen)  # cleared before the report
        self.assertEqual(len(out.stdout.splitlines()), 3)


_LOAD_EXE: list[str] = []


def c_load(*args: str) -> tuple[dict | None, subprocess.CompletedProcess]:
    """benchmarks/servers/load.c (compiled once per test run) with ARGS: (report or None, process)."""
    if not _LOAD_EXE:
        cc = peers.require("cc", "gcc")
        where = tempfile.mkdtemp(prefix="netecho-load-")
        exe = os.path.join(where, "load")
        subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", exe, os.path.join(ROOT, "benchmarks", "servers", "load.c")],
                       check=True, capture_output=True, timeout=120)
        _LOAD_EXE.append(exe)
    out = subprocess.run([_LOAD_EXE[0], *args], capture_output=True, text=True, timeout=60)
    return (json.loads(out.stdout) if out.stdout.strip() else None), out


class CLoadGeneratorTests(TestCase):
    """
    benchmarks/servers/load.c, the C load generator run.py uses: round trips
    against the daemon, and wrong echoes counted as errors, never as round trips.
    """

    def test_against_daemon(self) -> None:
        where = tempfile.mkdtemp(prefix="netecho-bench-test-")
        self.addCleanup(shutil.rmtree, where, True)
        path = os.path.join(where, "echo.sock")
        daemon = Daemon(self, "--tcp", "0", "--udp", "0", "--unix", path, *NO_THROTTLE).start()
        targets = {
            "tcp": ["127.0.0.1", str(daemon.port("--tcp 0"))],
            "udp": ["127.0.0.1", str(daemon.port("--udp 0"))],
            "unix": [path],
        }
        for transport, target in targets.items():
            for size in ("1", "1024", "20000"):
                report, out = c_load(transport, *target, "--connections", "3", "--size", size,
                                     "--duration", "0.3", "--warmup", "0.05")
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(report["errors"], 0, (transport, size, report))
                self.assertGreater(report["round_trips"], 10, (transport, size))
                self.assertEqual(report["size"], int(size))
                latency = report["latency_ms"]
                self.assertTrue(0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], latency)

    def test_corrupt_and_short(self) -> None:
        server = BrokenServer(self, "tcp", "corrupt", 256)
        report, out = c_load("tcp", "127.0.0.1", str(server.port), "--connections", "2", "--size", "256",
                             "--duration", "0.4", "--warmup", "0")
        self.assertEqual(report["round_trips"], 0)
        self.assertGreater(report["error_kinds"].get("corrupt", 0), 0)
        server = BrokenServer(self, "tcp", "short", 100)
        report, out = c_load("tcp", "127.0.0.1", str(server.port), "--connections", "2", "--size", "100",
                             "--duration", "0.5", "--warmup", "0", "--timeout", "0.1")
        self.assertEqual(report["round_trips"], 0)
        self.assertGreater(report["error_kinds"].get("timeout", 0), 0)
        server = BrokenServer(self, "udp", "short", 512)
        report, out = c_load("udp", "127.0.0.1", str(server.port), "--connections", "2", "--size", "512",
                             "--duration", "0.4", "--warmup", "0")
        self.assertEqual(report["round_trips"], 0)
        self.assertGreater(report["error_kinds"].get("short", 0), 0)

    def test_unreachable(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        report, out = c_load("tcp", "127.0.0.1", str(port), "--duration", "0.2")
        self.assertIsNone(report)
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, f"dial tcp 127.0.0.1:{port}: connection refused\n")


HEADER = ["transport", "conns", "size", "server", "rt/s", "p99_ms", "cpu_us", "errors", "x_twisted", "x_asyncio"]


def number_or_dash(text: str) -> None:
    if text != "-":
        float(text)


class BenchmarkScriptTests(TestCase):
    """benchmarks/run.py --quick with a tiny duration prints a well-formed table."""

    def test_quick(self) -> None:
        servers = "netecho,twisted,asyncio,c"
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--duration", "0.2",
             "--repeat", "1", "--servers", servers, "--idle", "50"],
            cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        lines = out.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["transport"])
        self.assertEqual(lines[start].split(), HEADER)
        client = "c (servers/load.c)" if shutil.which("cc") else "python (netecho bench)"
        self.assertIn(f"load generator ({client})", lines[start - 1])
        rows = []
        for line in lines[start + 1:]:
            if not line.strip():
                break
            rows.append(line.split())
        expected_servers = [s for s in servers.split(",") if s != "c" or shutil.which("cc")]
        self.assertEqual(len(rows), 3 * len(expected_servers), out.stdout)
        for fields in rows:
            self.assertEqual(len(fields), len(HEADER), fields)
            transport, conns, size, server, *numbers = fields
            self.assertIn(transport, ("tcp", "udp", "unix"))
            self.assertEqual((int(conns), int(size)), (10, 1024))
            self.assertIn(server, expected_servers)
            for value in numbers:
                number_or_dash(value)
        twisted_rows = [f for f in rows if f[3] == "twisted" and f[4] != "0"]
        for fields in twisted_rows:
            self.assertEqual(fields[8], "1.00")
            self.assertGreater(float(fields[6]), 0)  # its CPU per round trip
        self.assertIn("idle memory", out.stdout)
        self.assertIn("netecho PB calls", out.stdout)
        self.assertIn("DNS lookups", out.stdout)
