"""
The load generator (``netecho bench``) against the real daemon and against
echo servers broken on purpose, and benchmarks/run.py producing its table.
No timing assertions: only that things run, count and report correctly.

The bench code is run from this checkout (it may be newer than the installed
package); the daemon is the installed one, as everywhere in tests/integration.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from twisted.trial.unittest import TestCase

from tests import peers
from tests.integration.harness import Daemon

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = "import sys; from netecho.cli import main; raise SystemExit(main(['bench', *sys.argv[1:]]))"
#: The UDP limits stay on, far above what one test sends in a burst.
NO_THROTTLE = ("--udp-rate", "1000000000", "--udp-global-rate", "1000000000")


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """C{netecho bench ARGS} from this checkout."""
    return subprocess.run(
        [sys.executable, "-c", BENCH, *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True, text=True, timeout=timeout,
    )


def bench_json(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = bench(*args, "--json")
    assert out.stdout.strip(), f"no report; exit {out.returncode}; stderr:\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1]), out


class BrokenServer:
    """
    A TCP or UDP server on 127.0.0.1 that answers wrongly, in a thread:
    C{corrupt} flips the last byte of each message, C{short} leaves it out
    (and, on TCP, keeps the connection open: the client must time out).
    """

    def __init__(self, testcase: TestCase, kind: str, how: str, size: int) -> None:
        self.kind, self.how, self.size = kind, how, size
        sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        self.listener = socket.socket(socket.AF_INET, sock_type)
        self.listener.bind(("127.0.0.1", 0))
        if kind == "tcp":
            self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.stop)

    def wrong(self, message: bytes) -> bytes:
        if self.how == "corrupt":
            return message[:-1] + bytes([message[-1] ^ 0xFF])
        return message[:-1]

    def serve(self) -> None:
        conns: dict[socket.socket, bytearray] = {}
        try:
            while not self.stopping:
                ready, _, _ = select.select([self.listener, *conns], [], [], 0.05)
                for s in ready:
                    if self.kind == "udp":
                        data, peer = s.recvfrom(65536)
                        if data.startswith(b"netecho bench probe"):
                            s.sendto(data, peer)  # the reachability probe gets its echo
                        else:
                            s.sendto(self.wrong(data), peer)
                    elif s is self.listener:
                        conn, _ = s.accept()
                        conns[conn] = bytearray()
                    else:
                        try:
                            data = s.recv(65536)
                        except OSError:
                            data = b""
                        if not data:
                            del conns[s]
                            s.close()
                            continue
                        pending = conns[s]
                        pending += data
                        while len(pending) >= self.size:
                            message = bytes(pending[: self.size])
                            del pending[: self.size]
                            try:
                                s.sendall(self.wrong(message))
                            except OSError:
                                break
        finally:
            for s in conns:
                s.close()

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.listener.close()


class BenchAgainstDaemonTests(TestCase):
    """Round trips counted, none failed, against the real daemon."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="netecho-bench-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "echo.sock")
        self.daemon = Daemon(self, "--tcp", "0", "--udp", "0", "--unix", self.path, *NO_THROTTLE).start()

    def check(self, report: dict, out: subprocess.CompletedProcess) -> None:
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertGreater(report["round_trips"], 0)
        self.assertGreater(report["round_trips_per_s"], 0)
        self.assertEqual(report["errors"], 0, report["error_kinds"])
        latency = report["latency_ms"]
        self.assertTrue(0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"], latency)

    def test_tcp(self) -> None:
        port = self.daemon.port("--tcp 0")
        report, out = bench_json("tcp", f"127.0.0.1:{port}", "--connections", "4", "--size", "1K",
                                 "--duration", "0.5", "--warmup", "0.1")
        self.check(report, out)
        self.assertEqual(report["size"], 1024)
        self.assertEqual(report["connections"], 4)

    def test_tcp_processes_and_table(self) -> None:
        """Two worker processes; the plain table: a title, a header and a row of numbers."""
        port = self.daemon.port("--tcp 0")
        out = bench("tcp", f"127.0.0.1:{port}", "--connections", "4", "--size", "16K",
                    "--duration", "0.5", "--warmup", "0.1", "--processes", "2")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertEqual(len(lines), 3, out.stdout)
        self.assertIn("2 processes", lines[0])
        header, row = lines[1].split(), lines[2].split()
        self.assertEqual(header, ["round-trips", "rt/s", "MB/s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors"])
        values = dict(zip(header, row))
        self.assertGreater(int(values["round-trips"]), 0)
        self.assertEqual(int(values["errors"]), 0)
        for key in header[1:-1]:
            float(values[key])
        # Not a terminal: no progress line.
        self.assertEqual(out.stderr, "")

    def test_udp(self) -> None:
        port = self.daemon.port("--udp 0")
        report, out = bench_json("udp", f"127.0.0.1:{port}", "--connections", "4", "--size", "1K",
                                 "--duration", "0.5", "--warmup", "0.1")
        self.check(report, out)

    def test_unix(self) -> None:
        report, out = bench_json("unix", self.path, "--connections", "4", "--size", "64",
                                 "--duration", "0.5", "--warmup", "0.1")
        self.check(report, out)


class BenchErrorsTests(TestCase):
    """Wrong echoes are errors, never round trips; unreachable targets are one line."""

    def test_tcp_corrupted_echo(self) -> None:
        server = BrokenServer(self, "tcp", "corrupt", 256)
        report, out = bench_json("tcp", f"127.0.0.1:{server.port}", "--connections", "2", "--size", "256",
                                 "--duration", "0.5", "--warmup", "0")
        self.assertGreater(report["errors"], 0)
        self.assertGreater(report["error_kinds"].get("corrupt", 0), 0)
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)
        self.assertIn("round trips failed", out.stderr)

    def test_tcp_short_echo(self) -> None:
        server = BrokenServer(self, "tcp", "short", 100)
        report, out = bench_json("tcp", f"127.0.0.1:{server.port}", "--connections", "2", "--size", "100",
                                 "--duration", "0.6", "--warmup", "0", "--timeout", "0.1")
        self.assertGreater(report["error_kinds"].get("timeout", 0), 0)
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)

    def test_udp_short_datagram(self) -> None:
        server = BrokenServer(self, "udp", "short", 512)
        report, out = bench_json("udp", f"127.0.0.1:{server.port}", "--connections", "2", "--size", "512",
                                 "--duration", "0.5", "--warmup", "0")
        self.assertGreater(report["error_kinds"].get("short", 0), 0)
        self.assertEqual(report["round_trips"], 0)
        self.assertEqual(out.returncode, 100)

    def test_refused(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nobody listens once closed
        out = bench("tcp", f"127.0.0.1:{port}", "--duration", "0.2")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, f"dial tcp 127.0.0.1:{port}: connection refused\n")

    def test_usage(self) -> None:
        out = bench("udp", "127.0.0.1:7", "--size", "70000")
        self.assertEqual(out.returncode, 2)
        self.assertIn("at most 65507", out.stderr)
        out = bench("tcp", "localhost", "--duration", "1")
        self.assertEqual(out.returncode, 2)


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
