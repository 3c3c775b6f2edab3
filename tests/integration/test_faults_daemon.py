"""--faults on the real daemon: the option, the idle timeout with stall, the PB call, the counts."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

from twisted.trial.unittest import TestCase

from tests.integration.clients import netecho
from tests.integration.harness import Daemon, twistd_command
from tests.integration.test_limits import scrape


def users_file() -> str:
    path = os.path.join(tempfile.mkdtemp(), "users")
    with open(path, "w") as f:
        f.write("admin:s3cret\n")
    os.chmod(path, 0o600)
    return path


def roundtrip(port: int, data: bytes = b"ping\n", timeout: float = 5) -> tuple[float, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        start = time.monotonic()
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        return time.monotonic() - start, got


class FaultsOptionTests(TestCase):
    def test_bad_spec_is_a_usage_error(self):
        out = subprocess.run([*twistd_command(), "-n", "--pidfile=", "netecho", "--tcp", "0", "--faults", "drop=1.5"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("--faults: drop=1.5: not a probability between 0 and 1", out.stdout + out.stderr)
        self.assertNotIn("Traceback", out.stdout + out.stderr)

    def test_faults_counted_and_summarised(self):
        daemon = Daemon(self, "--tcp", "0", "--udp", "0", "--metrics", "0", "--faults", "delay=100ms,drop=1").start()
        daemon.wait_for("faults on purpose")
        tcp, udp, metrics = daemon.port("--tcp 0"), daemon.port("--udp 0"), daemon.port("--metrics 0")
        took, got = roundtrip(tcp)
        self.assertEqual(got, b"ping\n")
        self.assertGreaterEqual(took, 0.1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(b"x", ("127.0.0.1", udp))
            with self.assertRaises(TimeoutError):
                s.recv(10)
        got = scrape(metrics)
        self.assertEqual(got[("netecho_faults_total", (("fault", "delay"),))], 1)
        self.assertEqual(got[("netecho_faults_total", (("fault", "drop"),))], 1)
        daemon.stop()
        self.assertIn("faults: delay=1 drop=1", daemon.wait_for("faults: "))

    def test_stall_still_cut_by_the_idle_timeout(self):
        daemon = Daemon(self, "--tcp", "0", "--faults", "stall", "--idle-timeout", "1").start()
        port = daemon.port("--tcp 0")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"anyone?\n")
            start = time.monotonic()
            try:
                got = s.recv(100)  # no answer, then the abort
            except ConnectionResetError:  # (what it sent was never read: the kernel resets)
                got = b""
            self.assertEqual(got, b"")
            self.assertGreater(time.monotonic() - start, 0.9)
            self.assertLess(time.monotonic() - start, 4)
        daemon.wait_for("idle timeout")

    def test_changed_over_pb_by_an_admin_only(self):
        users = users_file()
        daemon = Daemon(self, "--tcp", "0", "--pb", "0", "--pb-users", users).start()
        tcp, pb = daemon.port("--tcp 0"), daemon.port("--pb 0")
        target = f"127.0.0.1:{pb}"
        anonymous = netecho("rpc", target, "faults", "delay=200ms")
        self.assertEqual(anonymous.returncode, 100)
        self.assertIn(b"not authorized", anonymous.stderr)
        saved = dict(os.environ)
        os.environ["NETECHO_PASSWORD"] = "s3cret"
        try:
            out = netecho("rpc", target, "--user", "admin", "faults", "delay=200ms")
            self.assertEqual((out.returncode, out.stdout), (0, b"faults: delay=200ms\n"), out.stderr)
            self.assertGreaterEqual(roundtrip(tcp)[0], 0.2)
            bad = netecho("rpc", target, "--user", "admin", "faults", "delay=soon")
            self.assertEqual(bad.returncode, 100)
            self.assertIn(b"delay=soon", bad.stderr)
            out = netecho("rpc", target, "--user", "admin", "faults", "")
            self.assertEqual((out.returncode, out.stdout), (0, b"faults: none\n"), out.stderr)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.assertLess(roundtrip(tcp)[0], 0.2)
