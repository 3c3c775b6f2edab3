"""
``netecho tcp|udp|unix`` as a user runs them: against the netecho daemon and
against echo servers written independently (socat + cat, small misbehaving
servers), through pipes and a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import TestCase

from tests import peers
from tests.integration.clients import Socat, free_port, netecho
from tests.integration.harness import Daemon


class OddServer:
    """
    A TCP echo server that answers byte by byte (split) or holds two lines
    and sends them in one write (merged): RFC 862 allows both.
    """

    def __init__(self, testcase, mode: str):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        threading.Thread(target=self._serve, daemon=True).start()
        testcase.addCleanup(self.sock.close)

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            pending = b""
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    conn.sendall(pending)
                    return
                if self.mode == "split":
                    for b in data:
                        conn.sendall(bytes([b]))
                        time.sleep(0.001)
                else:
                    pending += data
                    if pending.count(b"\n") >= 2 or pending.strip() == b"STOP":
                        conn.sendall(pending)
                        pending = b""


class TCPClientTests(TestCase):
    def setUp(self):
        peers.require_openbsd_nc()

    def test_message_against_netecho(self):
        daemon = Daemon(self, "--tcp", "0").start()
        for host in ("127.0.0.1", "[::1]", "localhost"):
            out = netecho("tcp", f"{host}:{daemon.port('--tcp 0')}", "--message", "héllo")
            self.assertEqual((out.returncode, out.stdout, out.stderr), (0, "->: héllo\n".encode(), b""))

    def test_pipe_against_socat(self):
        server = Socat(self, "tcp")
        out = netecho("tcp", server.address, input=b"one\ntwo\n\nthree")
        self.assertEqual(out.stdout, b"->: one\n->: two\n->: \n->: three\n")
        self.assertEqual(out.returncode, 0)

    def test_stop_word_ends_session(self):
        server = Socat(self, "tcp")
        out = netecho("tcp", server.address, input=b"a\n STOP \nnever sent\n")
        self.assertEqual(out.stdout, b"->: a\n->:  STOP \nTCP client exiting...\n")
        self.assertEqual(out.returncode, 0)

    def test_split_replies(self):
        server = OddServer(self, "split")
        out = netecho("tcp", f"127.0.0.1:{server.port}", input=b"abc\ndef\n")
        self.assertEqual(out.stdout, b"->: abc\n->: def\n")

    def test_merged_replies(self):
        """The client sends a line, then waits; the server answers two lines at once."""
        server = OddServer(self, "merged")
        out = netecho("tcp", f"127.0.0.1:{server.port}", "--timeout", "1", input=b"abc\ndef\n")
        # The first reply never comes alone: the client times out waiting.
        self.assertEqual(out.returncode, 100)
        self.assertIn(b"no reply within 1s", out.stderr)

    def test_refused(self):
        port = free_port()
        out = netecho("tcp", f"127.0.0.1:{port}", "--message", "x")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(), f"dial tcp 127.0.0.1:{port}: connection refused\n")

    def test_no_such_host(self):
        out = netecho("tcp", "no-such-host.invalid:7", "--message", "x")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, b"dial tcp: lookup no-such-host.invalid: no such host\n")

    def test_silent_server(self):
        """A server that accepts and never answers: bounded by --timeout."""
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        start = time.monotonic()
        out = netecho("tcp", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.5", "-m", "x")
        self.assertLess(time.monotonic() - start, 10)
        self.assertEqual(out.returncode, 100)
        self.assertIn(b": no reply within 0.5s", out.stderr)

    def test_server_closes(self):
        closer = socket.socket()
        self.addCleanup(closer.close)
        closer.bind(("127.0.0.1", 0))
        closer.listen(1)
        port = closer.getsockname()[1]
        threading.Thread(target=lambda: closer.accept()[0].close(), daemon=True).start()
        out = netecho("tcp", f"127.0.0.1:{port}", "-m", "x")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(), f"read tcp 127.0.0.1:{port}: connection closed by the server\n")

    def test_usage_errors(self):
        for args in (["tcp"], ["tcp", "nohostport"], ["tcp", "h:99999"], ["tcp", "h:1", "--timeout", "0"],
                     ["nonsense"], ["udp", "h:1", "--retries", "-1"]):
            out = netecho(*args)
            self.assertEqual(out.returncode, 2, args)
            self.assertIn(b"usage: netecho", out.stderr)
            self.assertNotIn(b"Traceback", out.stderr)


class InteractiveTests(TestCase):
    """The tcp client on a pseudo-terminal, as a person types at it."""

    def spawn(self, *args):
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(tempfile.gettempdir())
            os.execv(sys.executable, [sys.executable, "-m", "netecho", *args])
        self.addCleanup(self._reap, pid, fd)
        return pid, fd

    def _reap(self, pid, fd):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(fd)

    def read_until(self, fd, text: bytes, timeout=10) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while text not in out:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.fail(f"no {text!r} on the terminal; got {out!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        return out

    def exit_status(self, pid) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        self.fail("client did not exit")

    def test_prompt_reply_and_stop(self):
        server = Socat(self, "tcp")
        pid, fd = self.spawn("tcp", server.address)
        self.read_until(fd, b">> ")
        os.write(fd, b"hello\n")
        self.assertIn(b"->: hello\r\n>> ", self.read_until(fd, b"->: hello\r\n>> "))
        os.write(fd, b"STOP\n")
        self.read_until(fd, b"TCP client exiting...")
        self.assertEqual(self.exit_status(pid), 0)

    def test_ctrl_c(self):
        server = Socat(self, "tcp")
        pid, fd = self.spawn("tcp", server.address)
        self.read_until(fd, b">> ")
        os.write(fd, b"\x03")
        self.assertEqual(self.exit_status(pid), 130)
        rest = b""
        try:
            while select.select([fd], [], [], 0.2)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                rest += chunk
        except OSError:
            pass
        self.assertNotIn(b"Traceback", rest)

    def test_ctrl_d(self):
        server = Socat(self, "tcp")
        pid, fd = self.spawn("tcp", server.address)
        self.read_until(fd, b">> ")
        os.write(fd, b"\x04")
        self.assertEqual(self.exit_status(pid), 0)


class UnixClientTests(TestCase):
    def test_message_and_pipe_against_socat(self):
        server = Socat(self, "unix")
        out = netecho("unix", server.path, "--message", "hi")
        self.assertEqual((out.returncode, out.stdout), (0, b"->: hi\n"))
        out = netecho("unix", server.path, input=b"x\ny\nSTOP\nz\n")
        self.assertEqual(out.stdout, b"->: x\n->: y\n->: STOP\nUnix client exiting...\n")

    def test_repeat(self):
        daemon = Daemon(self, "--unix", os.path.join(tempfile.mkdtemp(), "s")).start()
        path = daemon.address(f"--unix {daemon.args[1]}")
        start = time.monotonic()
        out = netecho("unix", path, "--repeat", "tick", "--interval", "0.2", "--count", "3")
        self.assertGreaterEqual(time.monotonic() - start, 0.4)
        self.assertEqual((out.returncode, out.stdout), (0, b"->: tick\n" * 3))

    def test_missing_path(self):
        path = os.path.join(tempfile.mkdtemp(), "nothing")
        out = netecho("unix", path, "-m", "x")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(), f"dial unix {path}: connect: no such file or directory\n")

    def test_refused(self):
        path = os.path.join(tempfile.mkdtemp(), "stale")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        out = netecho("unix", path, "-m", "x")
        self.assertEqual(out.stderr.decode(), f"dial unix {path}: connect: connection refused\n")
        self.assertEqual(out.returncode, 100)

    def test_permission_denied(self):
        """
        A socket whose mode shuts us out. Root is never denied a Unix socket
        by its mode: as root, the client runs as uid 65534 (setpriv).
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "closed")
        s = socket.socket(socket.AF_UNIX)
        self.addCleanup(s.close)
        s.bind(path)
        s.listen(1)
        os.chmod(path, 0)
        if os.geteuid() == 0:
            from tests.integration.test_deploy import python_for

            unprivileged = [peers.require("setpriv", "util-linux"), "--reuid=65534", "--regid=65534",
                            "--clear-groups"]
            python = python_for(self, unprivileged, "uid 65534")
            out = subprocess.run([*unprivileged, python, "-m", "netecho", "unix", path, "-m", "x"],
                                 capture_output=True, timeout=60, cwd="/")
        else:
            out = netecho("unix", path, "-m", "x")
        self.assertEqual(out.stderr.decode(), f"dial unix {path}: connect: permission denied\n")
        self.assertEqual(out.returncode, 100)


class UDPClientTests(TestCase):
    def test_default_message_against_netecho(self):
        daemon = Daemon(self, "--udp", "0").start()
        port = daemon.port("--udp 0")
        for host, shown in (("127.0.0.1", "127.0.0.1"), ("[::1]", "[::1]")):
            out = netecho("udp", f"{host}:{port}")
            self.assertEqual(
                out.stdout.decode(),
                f"The UDP server is {shown}:{port}\nReply: Hello UDP Echo server!\n",
            )
            self.assertEqual(out.returncode, 0)

    def test_against_socat(self):
        server = Socat(self, "udp")
        out = netecho("udp", server.address, "--message", "via socat")
        self.assertEqual(out.stdout.decode().splitlines()[-1], "Reply: via socat")

    def test_largest_datagram(self):
        daemon = Daemon(self, "--udp", "127.0.0.1:0").start()
        port = daemon.port("--udp 127.0.0.1:0")
        text = "x" * 65506  # plus the newline: 65,507 bytes
        out = netecho("udp", f"127.0.0.1:{port}", "--message", text)
        self.assertEqual(out.stdout.decode().splitlines()[-1], "Reply: " + text)
        out = netecho("udp", f"127.0.0.1:{port}", "--message", text + "y")
        self.assertEqual(out.returncode, 100)
        self.assertIn(b"message too long", out.stderr)

    def test_silent_server(self):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        start = time.monotonic()
        out = netecho("udp", f"127.0.0.1:{port}", "--timeout", "0.3", "--retries", "2")
        elapsed = time.monotonic() - start
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(), f"no reply from 127.0.0.1:{port} after 3 tries\n")
        self.assertGreaterEqual(elapsed, 0.9)
        silent.settimeout(1)
        self.assertEqual([silent.recv(100) for _ in range(3)], [b"Hello UDP Echo server!\n"] * 3)

    def test_refused_at_once(self):
        port = free_port(socket.SOCK_DGRAM)
        start = time.monotonic()
        out = netecho("udp", f"127.0.0.1:{port}", "--timeout", "5")
        self.assertLess(time.monotonic() - start, 4)
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(), f"read udp 127.0.0.1:{port}: connection refused\n")
