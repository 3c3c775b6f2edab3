"""
A second daemon on a live daemon's Unix socket path: it probes the socket,
fails with its one line, and the first daemon neither logs nor counts the
probe as a client it served.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import urllib.request

from twisted.trial.unittest import TestCase

from tests.integration.harness import Daemon


def scrape(port: int) -> dict[str, float]:
    """The connection counters of the metrics page: {'netecho_connections_total{service="unix"}': 0.0, ...}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^(netecho_(?:active_)?connections(?:_total)?\{service="\w+"\}) (\S+)$', text, re.M)
    }


def echo(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    return got


class SecondInstanceTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-probe-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "echo.sock")

    def test_probe_is_not_a_served_client(self):
        first = Daemon(self, "--unix", self.path, "--metrics", "0").start()
        metrics = first.port("--metrics 0")
        second = Daemon(self, "--unix", self.path).start(wait_ready=False)
        self.assertEqual(second.wait(), 1)
        self.assertEqual(second.stderr, f"netecho: cannot listen on --unix {self.path}: in use by a live server\n")

        # The first saw the probe (the second's process, by SO_PEERCRED) and said what it was.
        line = first.wait_for("liveness probe")
        self.assertIn(f"[netecho.policies#debug] echo unix unix:pid={second.pid},uid={os.getuid()}: "
                      "a liveness probe (another server checking whether this socket is in use), "
                      "not counted as a client", line)
        self.assertNotIn("closed after", first.log_text())
        counters = scrape(metrics)
        self.assertEqual(counters['netecho_connections_total{service="unix"}'], 0)
        self.assertEqual(counters['netecho_active_connections{service="unix"}'], 0)

        # A real client afterwards is counted and logged as before.
        self.assertEqual(echo(self.path, b"ping\n"), b"ping\n")
        first.wait_for("echo unix unix:pid=")
        self.assertEqual(scrape(metrics)['netecho_connections_total{service="unix"}'], 1)
        self.assertEqual(first.stop(), -signal.SIGTERM)
        summary = first.wait_for("summary: ")
        self.assertIn(" clients_served=1 tcp=0 unix=1 ", summary)
