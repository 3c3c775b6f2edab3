"""``--workers N`` on the real daemon: one set of listeners, N processes serving them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import TestCase

from tests.integration.clients import netecho
from tests.integration.harness import Daemon
from tests.integration.test_daemon import self_signed, summary_fields, tls_echo
from tests.integration.test_daemon_ops import OpsDaemon, summary_drops, wait_until

WORKER_PID = re.compile(r"worker (\d+) serving \(pid (\d+)\)")


def alive(pid: int) -> bool:
    """Whether C{pid} is a process that has not ended (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout: float = 5) -> list[int]:
    """Wait until none of C{pids} is alive; return those still alive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def echo_tcp(port: int, data: bytes = b"hello\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        return s.recv(65536)


def connections_per_worker(daemon: Daemon, total: int) -> list[float]:
    """
    netecho_worker_connections_total of each worker, from the daemon's
    --metrics 0 page, once the workers' reports add up to C{total}.
    """
    url = f"http://127.0.0.1:{daemon.port('--metrics 0')}/metrics"

    def per_worker():
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        counts = [float(v) for v in re.findall(r'netecho_worker_connections_total\{worker="\d"\} (\S+)', page)]
        return counts if sum(counts) == total else None

    return wait_until(per_worker, 10, "every connection in the workers' reports")


def worker_pids(daemon: Daemon) -> dict[int, int]:
    """The latest pid of each worker that said it serves."""
    pids = {}
    for line in daemon.log_text().splitlines():
        m = WORKER_PID.search(line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    return pids


class WorkersTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-workers-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, *args, env=None) -> Daemon:
        daemon = Daemon(self, "--workers", "2", *args, env=env).start()
        pids = worker_pids(daemon)
        self.assertEqual(sorted(pids), [1, 2])
        # Whatever happens in the test, no worker outlives it.
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in worker_pids(daemon).values() if alive(p)])
        return daemon

    def test_every_service_summed(self):
        """TCP, UDP, Unix, random, PB and metrics with 2 workers: one summary, one page, summed."""
        path = os.path.join(self.dir, "echo.sock")
        notify_path = os.path.join(self.dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(notify_path)
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--unix", path,
                       "--random", "tcp:0:interface=127.0.0.1", "--pb", "0", "--metrics", "0",
                       env={"NOTIFY_SOCKET": notify_path})
        notify.settimeout(5)
        self.assertIn("READY=1", notify.recv(4096).decode().split("\n"))
        log = d.log_text()
        # READY=1 and "netecho ready" once every worker serves.
        self.assertLess(log.index("worker 2 serving"), log.index("netecho ready"))
        self.assertLess(log.index("worker 1 serving"), log.index("netecho ready"))
        self.assertEqual(oct(os.stat(path).st_mode & 0o777), oct(0o660))
        tcp = d.port("--tcp tcp:0:interface=127.0.0.1")
        for i in range(20):
            self.assertEqual(echo_tcp(tcp, b"x" * 100), b"x" * 100)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            for i in range(5):
                u.sendto(b"dgram", ("127.0.0.1", d.port("--udp 127.0.0.1:0")))
                self.assertEqual(u.recv(100), b"dgram")
        with socket.socket(socket.AF_UNIX) as x:
            x.settimeout(5)
            x.connect(path)
            x.sendall(b"unix\n")
            self.assertEqual(x.recv(100), b"unix\n")
        random_port = d.port("--random tcp:0:interface=127.0.0.1")
        self.assertTrue(echo_tcp(random_port, b"n\n").strip().isdigit())
        pb = f"127.0.0.1:{d.port('--pb 0')}"
        time.sleep(0.8)  # workers report their counters twice a second
        stats = json.loads(netecho("rpc", pb, "stats").stdout)
        self.assertEqual((stats["tcp"], stats["unix"], stats["random"]), (20, 1, 1))
        self.assertEqual(stats["datagrams_echoed"], 5)
        url = f"http://127.0.0.1:{d.port('--metrics 0')}/metrics"
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        self.assertIn('netecho_connections_total{service="tcp"} 20.0', page)
        self.assertIn('netecho_datagrams_total{outcome="echoed"} 5.0', page)
        per_worker = [float(v) for v in re.findall(r'netecho_worker_connections_total\{worker="\d"\} (\S+)', page)]
        self.assertEqual((len(per_worker), sum(per_worker)), (2, 22))
        pids = list(worker_pids(d).values())
        self.assertEqual(d.stop(), -signal.SIGTERM)
        self.assertEqual(wait_gone(pids), [])
        fields = summary_fields(d)
        self.assertEqual(
            (fields["tcp"], fields["unix"], fields["random"], fields["datagrams_echoed"], fields["pb"]),
            (20, 1, 1, 5, 1),
        )
        self.assertEqual(fields["bytes_echoed"], 20 * 100 + 5 * 5 + 5)
        self.assertEqual(d.log_text().count("summary: "), 1)
        self.assertFalse(os.path.exists(path))  # the parent removed its socket file

    def test_port_in_use_starts_nothing(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            d = Daemon(self, "--workers", "2", "--tcp", f"tcp:{port}:interface=127.0.0.1", "--pb", "0")
            d.start(wait_ready=False)
            self.assertEqual(d.wait(), 1)
        self.assertEqual(d.stderr.strip().count("\n"), 0, d.stderr)
        self.assertIn("address already in use", d.stderr)
        self.assertNotIn("starting 2 workers", d.log_text())
        self.assertNotIn("worker 1", d.log_text())

    def test_dead_worker_restarted_and_parent_death_kills_workers(self):
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--pb", "0")
        tcp = d.port("--tcp tcp:0:interface=127.0.0.1")
        first = worker_pids(d)
        os.kill(first[1], signal.SIGKILL)
        d.wait_for("worker 1 (pid %d) died (killed by SIGKILL): restarting" % first[1])
        d.wait_for("worker 1 serving (pid ", timeout=10)
        deadline = time.monotonic() + 10
        while worker_pids(d)[1] == first[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        now = worker_pids(d)
        self.assertNotEqual(now[1], first[1])
        self.assertEqual(now[2], first[2])
        for i in range(10):
            self.assertEqual(echo_tcp(tcp), b"hello\n")
        # SIGKILL of the parent: its workers die with it.
        os.kill(d.pid, signal.SIGKILL)
        self.assertEqual(wait_gone(list(now.values())), [])
        with self.assertRaises(OSError):
            echo_tcp(tcp)

    def test_ready_page_follows_the_workers(self):
        """/ready: 200 once every worker serves, 503 while a killed one starts again, then 200."""
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--metrics", "0")
        url = f"http://127.0.0.1:{d.port('--metrics 0')}/ready"

        def status() -> int:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    return reply.status
            except urllib.error.HTTPError as e:
                return e.code

        self.assertEqual(status(), 200)
        first = worker_pids(d)
        os.kill(first[2], signal.SIGKILL)
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (503 in seen and seen[-1] == 200):
            seen.append(status())
            time.sleep(0.02)
        self.assertIn(503, seen, "/ready never said 'not ready' while worker 2 was restarting")
        self.assertEqual(seen[-1], 200, seen[-20:])
        self.assertIn("worker 2 serving (pid ", d.log_text())

    def test_workers_that_keep_dying_stop_the_daemon(self):
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--pb", "0")
        killed = set()
        deadline = time.monotonic() + 30
        while d.proc.poll() is None and time.monotonic() < deadline:
            for pid in worker_pids(d).values():
                if pid not in killed and alive(pid):
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        self.assertEqual(d.wait(), 1)
        log = d.log_text()
        self.assertIn("restarts within a minute: stopping the daemon", log)
        # A clean stop all the same: the summary, then twistd's own last line.
        self.assertLess(log.index("summary: "), log.index("Server Shut Down."))
        self.assertNotIn("Traceback", log + d.stderr)
        self.assertEqual(wait_gone(worker_pids(d).values()), [])

    def test_exit_on_stop_stops_every_process(self):
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--pb", "0", "--exit-on-stop")
        pids = list(worker_pids(d).values())
        self.assertEqual(echo_tcp(d.port("--tcp tcp:0:interface=127.0.0.1"), b"STOP\n"), b"STOP\n")
        self.assertEqual(d.wait(), 0)
        self.assertIn("stop word received with --exit-on-stop", d.log_text())
        self.assertEqual(wait_gone(pids), [])
        self.assertEqual(summary_fields(d)["tcp"], 1)

    def test_pb_quit_stops_every_process(self):
        users = os.path.join(self.dir, "users")
        with open(users, "w") as f:
            f.write("admin:s3cret\n")
        os.chmod(users, 0o600)
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--pb", "0", "--pb-users", users)
        pids = list(worker_pids(d).values())
        saved = dict(os.environ)
        os.environ.update(NETECHO_USER="admin", NETECHO_PASSWORD="s3cret")
        try:
            out = netecho("rpc", f"127.0.0.1:{d.port('--pb 0')}", "quit")
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(d.wait(), 0)
        self.assertEqual(wait_gone(pids), [])

    def test_burst_of_connects_spread(self):
        """
        A burst of 200 TCP connects (each sends once it is connected, as
        netecho bench does) lands within +/-25% of an even share on each of
        2 workers: each worker accepts on its own socket of one SO_REUSEPORT
        group, so the spread does not depend on which worker is awake.
        """
        d = self.start("--tcp", "tcp:0:interface=127.0.0.1", "--metrics", "0")
        port = d.port("--tcp tcp:0:interface=127.0.0.1")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
        self.addCleanup(lambda: [c.close() for c in clients])
        for c in clients:
            c.sendall(b"x" * 1024)
        for c in clients:
            got = b""
            while len(got) < 1024:
                chunk = c.recv(4096)
                self.assertTrue(chunk, "connection closed before its echo")
                got += chunk
        counts = connections_per_worker(d, 200)
        self.assertEqual(len(counts), 2)
        for n in counts:
            self.assertTrue(75 <= n <= 125, counts)
        self.assertIn("--tcp tcp:0:interface=127.0.0.1: a listening socket for each worker", d.log_text())

    def test_out_of_descriptors_counted_and_throttled(self):
        """
        ulimit -n 64 and 200 clients at once with 2 workers: the workers'
        refusals for want of descriptors go through the daemon's rule (one
        line per 10 s a worker, counted: dropped: fd_limit=N and the
        metrics), never Twisted's lines for every refusal.
        """
        started = time.monotonic()
        d = OpsDaemon(self, "--workers", "2", "--tcp", "tcp:0:interface=127.0.0.1", "--metrics", "0",
                      shell="ulimit -n 64").start()
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in worker_pids(d).values() if alive(p)])
        port = d.port("--tcp tcp:0:interface=127.0.0.1")
        clients = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.addCleanup(s.close)
            clients.append(s)
        d.wait_for("out of file descriptors", timeout=15)
        for s in clients:
            s.close()
        url = f"http://127.0.0.1:{d.port('--metrics 0')}/metrics"

        def scrape():
            try:
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                return None
            m = re.search(r'^netecho_refused_total\{reason="fd_limit"\} (\d+)', text, re.M)
            return m and int(float(m.group(1)))

        refused = wait_until(scrape, 15, "fd_limit in the metrics")
        self.assertEqual(echo_tcp(port), b"hello\n")
        self.assertEqual(d.stop(), -signal.SIGTERM)
        self.assertGreaterEqual(summary_drops(d)["fd_limit"], refused)
        text = d.log_text()
        self.assertNotIn("EMFILE", text)
        self.assertNotIn("Traceback", text)
        lines = [line for line in text.splitlines() if "out of file descriptors" in line]
        self.assertTrue(all(re.search(r"worker [12]: out of file descriptors", line) for line in lines), lines)
        allowed = 1 + int((time.monotonic() - started) // 10)
        for number in (1, 2):
            self.assertLessEqual(sum(f"worker {number}: " in line for line in lines), allowed, lines)

    def test_tls_endpoint_spread(self):
        """--tcp ssl:... with 2 workers: each worker's socket of the group speaks TLS; both serve."""
        key, cert = self_signed(self.dir)
        label = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        d = self.start("--tcp", label, "--metrics", "0")
        port = d.port(f"--tcp {label}")
        for i in range(30):
            data = os.urandom(1000 + i)
            self.assertEqual(tls_echo(port, data), data)
        self.assertIn(f"--tcp {label}: a listening socket for each worker", d.log_text())
        counts = connections_per_worker(d, 30)
        self.assertTrue(all(n > 0 for n in counts), counts)  # 30 connections: both, but for 1 in 500 million
