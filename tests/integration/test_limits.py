"""Limits and metrics on the real daemon, on loopback."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from tests.integration.harness import Daemon


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes (or resets) C{sock} within C{timeout}."""
    sock.settimeout(timeout)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def echo_ok(port: int, source: str = "127.0.0.1") -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as c:
        c.sendall(b"ping\n")
        try:
            return c.recv(10) == b"ping\n"
        except ConnectionResetError:
            return False


class LimitTests(TestCase):
    def test_idle_timeout(self):
        daemon = Daemon(self, "--tcp", "0", "--idle-timeout", "1").start()
        port = daemon.port("--tcp 0")
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as idle:
            self.assertTrue(closed_by_server(idle, 5))
        self.assertLess(time.monotonic() - start, 4)
        daemon.wait_for("idle timeout")
        self.assertTrue(echo_ok(port))

    def test_max_connections(self):
        daemon = Daemon(self, "--tcp", "0", "--metrics", "0", "--max-connections", "3").start()
        port, metrics = daemon.port("--tcp 0"), daemon.port("--metrics 0")
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            for c in held:  # all three really served
                c.sendall(b"x\n")
                self.assertEqual(c.recv(10), b"x\n")
            with socket.create_connection(("127.0.0.1", port)) as extra:
                self.assertTrue(closed_by_server(extra, 5))
        finally:
            for c in held:
                c.close()
        got = scrape(metrics)
        self.assertEqual(got[("netecho_refused_total", (("reason", "max_connections"),))], 1)
        self.assertEqual(got[("netecho_connections_total", (("service", "tcp"),))], 3)
        time.sleep(0.3)
        self.assertTrue(echo_ok(port))

    def test_max_per_ip(self):
        daemon = Daemon(self, "--tcp", "0", "--max-per-ip", "2").start()
        port = daemon.port("--tcp 0")
        held = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.1", 0))
                for _ in range(2)]
        try:
            for c in held:
                c.sendall(b"x\n")
                self.assertEqual(c.recv(10), b"x\n")
            with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.1", 0)) as third:
                self.assertTrue(closed_by_server(third, 5))
            self.assertTrue(echo_ok(port, source="127.0.0.2"))  # another address is served
        finally:
            for c in held:
                c.close()
        daemon.wait_for("max per ip")


class MetricsAndUDPRateTests(TestCase):
    def test_counters_match_traffic(self):
        daemon = Daemon(self, "--tcp", "0", "--udp", "127.0.0.1:0", "--metrics", "0",
                        "--udp-rate", "5").start()
        tcp, udp = daemon.port("--tcp 0"), daemon.port("--udp 127.0.0.1:0")
        metrics = daemon.port("--metrics 0")
        self.assertEqual(daemon.address("--metrics 0")[0], "127.0.0.1")  # loopback only
        for size in (10, 20):
            with socket.create_connection(("127.0.0.1", tcp), timeout=5) as c:
                c.sendall(b"y" * size)
                received = b""
                while len(received) < size:
                    received += c.recv(100)
        replies = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for _ in range(20):
                s.sendto(b"d" * 100, ("127.0.0.1", udp))
            try:
                while True:
                    s.recv(200)
                    replies += 1
            except TimeoutError:
                pass
        self.assertEqual(replies, 5)  # the burst: 5 a second from one /24
        time.sleep(0.3)
        got = scrape(metrics)
        self.assertEqual(got[("netecho_connections_total", (("service", "tcp"),))], 2)
        self.assertEqual(got[("netecho_bytes_echoed_total", (("service", "tcp"),))], 30)
        self.assertEqual(got[("netecho_bytes_echoed_total", (("service", "udp"),))], 500)
        self.assertEqual(got[("netecho_datagrams_total", (("outcome", "echoed"),))], 5)
        self.assertEqual(got[("netecho_datagrams_total", (("outcome", "rate_limited"),))], 15)
        with self.assertRaises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/other", timeout=5)
