"""Limits and metrics on the real daemon, on loopback."""

from __future__ import annotations

import socket
import threading
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
            for c in held:  # all three really served, and busy enough never to be evicted
                c.sendall(b"x" * 65536)
                got = 0
                while got < 65536:
                    got += len(c.recv(65536))
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


    def test_trickling_connections_do_not_hold_every_slot(self):
        """
        Slowloris: 40 connections from four addresses, each trickling a byte
        now and then (and reconnecting when cut off), fill --max-connections
        40; a new client still gets its echo (before: 0 of 20).
        """
        daemon = Daemon(self, "--tcp", "0", "--max-connections", "40", "--max-per-ip", "10").start()
        port = daemon.port("--tcp 0")
        stop = threading.Event()
        socks: list = []

        def attacker(source: str) -> None:
            mine = []
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                while len(mine) < 10 and not stop.is_set():
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
                        s.sendall(b"x")
                        mine.append(s)
                        socks.append(s)
                    except OSError:
                        time.sleep(0.05)
                        break
                time.sleep(0.3)
                for s in list(mine):
                    try:
                        s.sendall(b"x")
                    except OSError:
                        mine.remove(s)
                        s.close()

        threads = [threading.Thread(target=attacker, args=(f"127.0.0.{i}",), daemon=True) for i in range(2, 6)]
        for t in threads:
            t.start()
        self.addCleanup(lambda: [s.close() for s in socks])
        self.addCleanup(stop.set)
        time.sleep(2.5)  # every slot taken, every trickler older than a second
        served = 0
        for _ in range(20):
            try:
                served += echo_ok(port, source="127.0.0.9")
            except OSError:
                pass
        stop.set()
        for t in threads:
            t.join(10)
        self.assertGreaterEqual(served, 19)
        daemon.wait_for("evicted")

    def test_quick_connect_close_cycles_are_not_refused(self):
        """
        2,000 connect/close cycles, never more than one open at a time, with
        --max-per-ip 5: connections whose peer already closed stop counting
        (before: 1,884 refused).
        """
        daemon = Daemon(self, "--tcp", "0", "--metrics", "0", "--max-per-ip", "5").start()
        port, metrics = daemon.port("--tcp 0"), daemon.port("--metrics 0")
        for _ in range(2000):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        time.sleep(0.5)
        got = scrape(metrics)
        refused = got.get(("netecho_refused_total", (("reason", "max_per_ip"),)), 0)
        accepted = got[("netecho_connections_total", (("service", "tcp"),))]
        self.assertLess(refused, 20)
        self.assertGreater(accepted, 1980)


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
        for path in ("/other", "/metrics/anything"):
            with self.assertRaises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(f"http://127.0.0.1:{metrics}{path}", timeout=5)
            self.assertEqual(caught.exception.code, 404)
        self.assertGreater(got[("process_resident_memory_bytes", ())], 1 << 20)

    def test_kernel_drops_counted(self):
        """
        Datagrams the kernel drops because the daemon's receive buffer is
        full (here: the daemon stopped with SIGSTOP while 20,000 arrive) are
        counted as kernel_dropped: echoed + dropped = sent (before: none counted).
        """
        import signal

        daemon = Daemon(self, "--udp", "0", "--metrics", "0", "--udp-rate", "0", "--udp-global-rate", "0").start()
        udp, metrics = daemon.port("--udp 0"), daemon.port("--metrics 0")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            daemon.signal(signal.SIGSTOP)
            try:
                for _ in range(20000):
                    s.sendto(b"d" * 1000, ("127.0.0.1", udp))
            finally:
                daemon.signal(signal.SIGCONT)
            time.sleep(1)
            s.sendto(b"last", ("127.0.0.1", udp))  # carries the count of what was dropped before it
            time.sleep(0.5)
        got = scrape(metrics)
        echoed = got[("netecho_datagrams_total", (("outcome", "echoed"),))]
        dropped = got.get(("netecho_datagrams_total", (("outcome", "kernel_dropped"),)), 0)
        self.assertGreater(dropped, 0)
        self.assertEqual(echoed + dropped, 20001)
