"""
The real daemon (``twistd -n netecho``) as an operator runs it: listen
backlogs, log files and logrotate, signals, JSON logs, the descriptor
limit, Unix socket files and locks, UDP receive buffers. All on loopback.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import select
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request

from twisted.trial.unittest import TestCase

from tests import peers
from tests.integration.harness import Daemon, twistd_command


class OpsDaemon(Daemon):
    """
    L{Daemon} with twistd options of our own (C{--logfile ...}) and an
    optional C{sh -c} prelude run just before twistd (C{ulimit -n 64},
    C{umask 000}).
    """

    def __init__(self, testcase, *args: str, twistd_args=(), shell: str = "", **kwargs):
        super().__init__(testcase, *args, **kwargs)
        self.twistd_args = list(twistd_args)
        self.shell = shell

    def command(self) -> list[str]:
        cmd = [*twistd_command(), "--nodaemon", "--pidfile=", *self.twistd_args, "netecho", *self.args]
        if self.shell:
            return ["sh", "-c", self.shell + ' && exec "$@"', "sh", *cmd]
        return cmd

    def stop(self, timeout: float = 15) -> int:
        self.signal(signal.SIGCONT)  # in case a test left it stopped
        return super().stop(timeout)

    def wait(self, timeout: float = 15) -> int:
        if "--logfile" not in self.twistd_args:
            return super().wait(timeout)
        # The log is in a file: no last stdout line to wait for.
        code = self.proc.wait(timeout)
        self._stderr_thread.join(5)
        return code


def wait_until(predicate, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def read(path: str) -> str:
    try:
        with open(path, errors="backslashreplace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def echo(address, data: bytes = b"ping\n", timeout: float = 10) -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received


def ss(*args: str) -> list[str]:
    out = subprocess.run([peers.require("ss", "iproute2"), "-H", *args],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return out.splitlines()


def summary_drops(daemon: Daemon) -> dict[str, int]:
    line = daemon.wait_for("dropped: ")
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split("dropped: ", 1)[1].split())}


class BacklogTests(TestCase):
    def test_burst_while_not_accepting(self):
        """
        300 connections arrive while the daemon is not accepting (stopped
        with SIGSTOP): the kernel completes every handshake and queues them
        (with Twisted's backlog of 50, all but 51 of their SYNs were
        dropped), and each is echoed once the daemon runs again.
        """
        daemon = OpsDaemon(self, "--tcp", "tcp:0:interface=127.0.0.1").start()
        port = daemon.port("--tcp tcp:0:interface=127.0.0.1")
        daemon.signal(signal.SIGSTOP)
        self.addCleanup(daemon.signal, signal.SIGCONT)
        clients = []
        for _ in range(300):
            s = socket.socket()
            self.addCleanup(s.close)
            s.setblocking(False)
            self.assertIn(s.connect_ex(("127.0.0.1", port)), (0, errno.EINPROGRESS))
            clients.append(s)
        pending = set(clients)
        deadline = time.monotonic() + 5
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], 0.2)
            pending -= set(writable)
        connected = [s for s in clients if s not in pending
                     and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        self.assertEqual(len(connected), 300)
        daemon.signal(signal.SIGCONT)
        for s in clients:
            s.setblocking(True)
            s.settimeout(10)
            s.sendall(b"queued\n")
        for s in clients:
            self.assertEqual(s.recv(100), b"queued\n")

    def test_option_reaches_every_stream_listener(self):
        """--backlog N on TCP and Unix listeners; an endpoint's own backlog= wins."""
        path = os.path.join(tempfile.mkdtemp(prefix="netecho-backlog-"), "echo.sock")
        daemon = OpsDaemon(self, "--backlog", "123", "--tcp", "tcp:0:interface=127.0.0.1",
                           "--unix", path, "--random", "tcp:0:interface=127.0.0.1:backlog=7").start()
        tcp = daemon.port("--tcp tcp:0:interface=127.0.0.1")
        rnd = daemon.port("--random tcp:0:interface=127.0.0.1:backlog=7")
        self.assertEqual(ss("-ltn", f"sport = :{tcp}")[0].split()[2], "123")
        self.assertEqual(ss("-ltn", f"sport = :{rnd}")[0].split()[2], "7")
        self.assertEqual(ss("-lx", f"src = {path}")[0].split()[3], "123")

    def test_default_is_somaxconn(self):
        with open("/proc/sys/net/core/somaxconn") as f:
            somaxconn = f.read().strip()
        daemon = OpsDaemon(self, "--tcp", "tcp:0:interface=127.0.0.1").start()
        tcp = daemon.port("--tcp tcp:0:interface=127.0.0.1")
        self.assertEqual(ss("-ltn", f"sport = :{tcp}")[0].split()[2], somaxconn)


class LogFileTests(TestCase):
    """twistd --logfile LOG: what logrotate and twistd's own rotation do to it."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-logs-")
        self.log = os.path.join(self.dir, "netecho.log")
        self.daemon = OpsDaemon(self, "--tcp", "tcp:0:interface=127.0.0.1",
                                twistd_args=["--logfile", self.log]).start(wait_ready=False)
        wait_until(lambda: "netecho ready" in read(self.log), 15, "netecho ready in the log file")
        self.port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", read(self.log)).group(1))

    def test_logrotate_move_then_sighup(self):
        """mv LOG LOG.1; kill -HUP: a new LOG at its path, and lines go there."""
        os.rename(self.log, self.log + ".1")
        self.daemon.signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: log file" in read(self.log), 10, "SIGHUP line in a new log file")
        self.assertEqual(echo(("127.0.0.1", self.port)), b"ping\n")
        self.assertEqual(self.daemon.stop(), -signal.SIGTERM)
        self.assertIn("summary: ", read(self.log))
        self.assertNotIn("summary: ", read(self.log + ".1"))
        self.assertIn("netecho ready", read(self.log + ".1"))

    def test_plain_sighups_make_no_files(self):
        for i in range(1, 4):
            self.daemon.signal(signal.SIGHUP)
            wait_until(lambda: read(self.log).count("SIGHUP: log file") == i, 10, f"SIGHUP line {i}")
        self.assertEqual(os.listdir(self.dir), ["netecho.log"])
        self.assertIsNone(self.daemon.proc.poll())

    def test_rotation_keeps_ten_old_files(self):
        """SIGUSR1 rotates (as in twistd), keeping LOG.1 ... LOG.10, never more."""
        for i in range(13):
            before = os.stat(self.log).st_ino
            self.daemon.signal(signal.SIGUSR1)
            wait_until(lambda: os.path.exists(self.log) and os.stat(self.log).st_ino != before
                       and "rotated" in read(self.log), 10, f"rotation {i + 1}")
        self.assertEqual(sorted(os.listdir(self.dir)),
                         sorted(["netecho.log"] + [f"netecho.log.{i}" for i in range(1, 11)]))
        self.assertEqual(echo(("127.0.0.1", self.port)), b"ping\n")


class SignalTests(TestCase):
    def test_sigusr1_with_logfile_stdout(self):
        """--logfile=- (every shipped unit): SIGUSR1 is logged and ignored, not fatal (was status 138)."""
        daemon = OpsDaemon(self, "--tcp", "tcp:0:interface=127.0.0.1", twistd_args=["--logfile=-"]).start()
        port = daemon.port("--tcp tcp:0:interface=127.0.0.1")
        for i in range(1, 4):
            daemon.signal(signal.SIGUSR1)
            wait_until(lambda: daemon.log_text().count("SIGUSR1 ignored") == i, 10, f"SIGUSR1 line {i}")
        self.assertEqual(echo(("127.0.0.1", port)), b"ping\n")
        self.assertIsNone(daemon.proc.poll())
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        self.assertEqual(daemon.log_text().count("SIGUSR1"), 3)


class JSONLogTests(TestCase):
    def test_ndjson_from_the_first_line(self):
        """--log-format json: every line, twistd's own first ones too, is one JSON object."""
        path = os.path.join(tempfile.mkdtemp(prefix="netecho-json-"), "echo.sock")
        daemon = OpsDaemon(self, "--tcp", "tcp:0:interface=127.0.0.1", "--unix", path,
                           "--log-format", "json").start()
        self.assertEqual(echo(path), b"ping\n")
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        self.assertEqual(daemon.stderr, "")
        lines = daemon.lines
        self.assertGreater(len(lines), 5)
        records = []
        for line in lines:
            self.assertFalse(line.startswith("\x1e"), line)
            record = json.loads(line)
            self.assertIsInstance(record, dict)
            self.assertEqual(list(record)[:4], ["time", "level", "logger", "msg"], line)
            self.assertIn(record["level"], ("debug", "info", "warn", "error", "critical"))
            when = datetime.datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
            self.assertEqual(when.utcoffset(), datetime.timedelta(0))
            records.append(record)
        self.assertIn("twistd", records[0]["msg"])
        self.assertIn("starting up", records[0]["msg"])
        listening = [r for r in records if r.get("label") == f"--unix {path}"]
        self.assertEqual(listening[0]["msg"], f"--unix {path}: listening on unix:{path}")
        self.assertEqual(listening[0]["logger"], "netecho.listeners")
        self.assertTrue(any(r["msg"].startswith("summary: ") for r in records))


class DescriptorLimitTests(TestCase):
    def test_emfile_one_line_and_counted(self):
        """
        ulimit -n 64 and 200 clients at once: the connections refused for
        want of descriptors are counted (dropped: fd_limit=N, the metrics'
        refused counter) and logged at most once per 10 s, instead of
        Twisted's lines for every refusal.
        """
        started = time.monotonic()
        daemon = OpsDaemon(self, "--tcp", "tcp:0:interface=127.0.0.1", "--metrics", "0",
                           shell="ulimit -n 64").start()
        port = daemon.port("--tcp tcp:0:interface=127.0.0.1")
        metrics = daemon.port("--metrics 0")
        clients = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.addCleanup(s.close)
            clients.append(s)
        daemon.wait_for("out of file descriptors")
        for s in clients:
            s.close()

        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            m = re.search(r'^netecho_refused_total\{reason="fd_limit"\} (\d+)', text, re.M)
            return m and int(float(m.group(1)))

        refused = wait_until(scrape, 15, "fd_limit in the metrics")
        self.assertEqual(echo(("127.0.0.1", port)), b"ping\n")
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        self.assertGreaterEqual(summary_drops(daemon)["fd_limit"], refused)
        self.assertGreater(refused, 0)
        text = daemon.log_text()
        self.assertNotIn("EMFILE", text)
        self.assertNotIn("Traceback", text)
        allowed = 1 + int((time.monotonic() - started) // 10)
        self.assertLessEqual(text.count("out of file descriptors"), allowed)


#: Run in the daemon (as sitecustomize): note the mode of every socket file
#: at the moment something chmods it.
CHMOD_WATCH = """
import os, stat, sys

def _watch(event, args):
    if event == "os.chmod" and isinstance(args[0], (str, bytes)):
        try:
            st = os.stat(args[0])
        except OSError:
            return
        if stat.S_ISSOCK(st.st_mode):
            with open(os.environ["NETECHO_CHMOD_LOG"], "a") as f:
                f.write("%o\\n" % stat.S_IMODE(st.st_mode))

sys.addaudithook(_watch)
"""


class UnixSocketFileTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-unix-")
        self.path = os.path.join(self.dir, "echo.sock")

    def test_never_more_open_than_its_mode(self):
        """
        Started under umask 000 with --unix-mode 0600, the socket is created
        0600 (before: 0777 until Twisted's chmod): seen by an audit hook in
        the daemon at the moment of that chmod.
        """
        hook = tempfile.mkdtemp(prefix="netecho-hook-")
        with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
            f.write(CHMOD_WATCH)
        seen = os.path.join(hook, "modes")
        env = {"PYTHONPATH": hook, "NETECHO_CHMOD_LOG": seen}
        OpsDaemon(self, "--unix", self.path, "--unix-mode", "0600", shell="umask 000", env=env).start()
        self.assertEqual(read(seen).split(), ["600"])
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_restart_after_sigkill_with_reused_pid(self):
        """
        SIGKILL leaves the socket and PATH.lock; the lock's PID now belongs
        to a live unrelated process (here: this test's). Nobody accepts on
        the socket, so both are stale and the restart works (before: "in use
        by a live server", with the socket already deleted).
        """
        first = OpsDaemon(self, "--unix", self.path).start()
        first.proc.kill()
        first.proc.wait()
        lock = self.path + ".lock"
        os.unlink(lock)
        os.symlink(str(os.getpid()), lock)
        again = OpsDaemon(self, "--unix", self.path).start()
        again.wait_for("removed stale lock")
        self.assertEqual(echo(self.path), b"ping\n")
        self.assertEqual(os.readlink(lock), str(again.pid))
        self.assertEqual(again.stop(), -signal.SIGTERM)

    def test_live_server_keeps_socket_and_lock(self):
        """A second daemon on a live daemon's path fails and deletes nothing."""
        first = OpsDaemon(self, "--unix", self.path).start()
        second = OpsDaemon(self, "--unix", self.path).start(wait_ready=False)
        self.assertEqual(second.wait(), 1)
        self.assertEqual(second.stderr, f"netecho: cannot listen on --unix {self.path}: in use by a live server\n")
        self.assertEqual(os.readlink(self.path + ".lock"), str(first.pid))
        self.assertEqual(echo(self.path), b"ping\n")


class ReceiveBufferTests(TestCase):
    def rb(self, port: int) -> int:
        (_, skmem) = ss("-ulnm", f"sport = :{port}")
        return int(re.search(r"\brb(\d+)", skmem).group(1))

    def test_udp_rcvbuf(self):
        """--udp-rcvbuf reaches the socket (as ss shows it) and the log says what was granted."""
        daemon = OpsDaemon(self, "--udp", "127.0.0.1:0", "--udp-rcvbuf", "1048576").start()
        port = daemon.port("--udp 127.0.0.1:0")
        line = daemon.wait_for("receive buffer")
        granted = int(re.search(r"receive buffer (\d+) bytes \(asked for 1048576", line).group(1))
        self.assertEqual(self.rb(port), granted)
        with open("/proc/sys/net/core/rmem_max") as f:
            rmem_max = int(f.read())
        if os.geteuid() == 0 or rmem_max >= 1048576:
            self.assertEqual(granted, 2 * 1048576)
        else:
            self.assertEqual(granted, 2 * rmem_max)
            self.assertIn("net.core.rmem_max caps it", line)

    def test_default_and_zero(self):
        default = OpsDaemon(self, "--udp", "127.0.0.1:0").start()
        self.assertIn("(asked for 4194304", default.wait_for("receive buffer"))
        kernel = OpsDaemon(self, "--udp", "127.0.0.1:0", "--udp-rcvbuf", "0").start()
        with open("/proc/sys/net/core/rmem_default") as f:
            self.assertEqual(self.rb(kernel.port("--udp 127.0.0.1:0")), int(f.read()))
        self.assertNotIn("receive buffer", kernel.log_text())
