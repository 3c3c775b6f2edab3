"""PB on the real daemon, through the real ``netecho rpc`` client."""

from __future__ import annotations

import json
import os
import socket
import tempfile

from twisted.trial.unittest import TestCase

from tests.integration.clients import free_port, netecho
from tests.integration.harness import Daemon
from tests.integration.test_daemon import summary_fields
from tests.test_rpc import NEVER_FINISHED


def users_file(mode=0o600) -> str:
    path = os.path.join(tempfile.mkdtemp(), "users")
    with open(path, "w") as f:
        f.write("admin:s3cret\n")
    os.chmod(path, mode)
    return path


class RPCDaemonTests(TestCase):
    def setUp(self):
        self.users = users_file()
        self.daemon = Daemon(self, "--pb", "0", "--tcp", "0", "--pb-users", self.users).start()
        host, port = self.daemon.address("--pb 0")
        self.assertEqual(host, "127.0.0.1")  # a bare port is loopback only
        self.target = f"127.0.0.1:{port}"

    def rpc(self, *args, env=None):
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            return netecho("rpc", self.target, *args)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def test_classic_demo(self):
        out = self.rpc()
        self.assertEqual(out.stdout, b"Reply (Add): 1\nReply (Subtract): -35\n")
        self.assertEqual(out.returncode, 0)

    def test_calls(self):
        self.assertEqual(self.rpc("add", "17", "-18").stdout, b"-1\n")
        self.assertEqual(self.rpc("subtract", "-17", "18").stdout, b"-35\n")
        self.assertEqual(self.rpc("echo", "hello world").stdout, b"hello world\n")
        stats = self.rpc("stats")
        self.assertEqual(stats.returncode, 0)
        counters = json.loads(stats.stdout)
        self.assertEqual(counters["rpc_calls"], 4)  # the stats call counts itself
        self.assertEqual(
            counters["rpc_calls_by_method"], {"add": 1, "subtract": 1, "echo": 1, "stats": 1}
        )
        self.assertEqual(counters["pb"], 4)

    def test_lookup_on_the_server(self):
        """lookup() resolves on the server: 'localhost' from its hosts file."""
        out = self.rpc("lookup", "localhost", "A")
        self.assertEqual((out.returncode, out.stdout, out.stderr), (0, b"127.0.0.1\n", b""))
        out = self.rpc("lookup", "bad..name")
        self.assertEqual(out.returncode, 100)
        self.assertTrue(out.stderr.startswith(b"rpc lookup: lookup bad..name: "), out.stderr)
        counters = json.loads(self.rpc("stats").stdout)
        self.assertEqual(counters["lookups"], {"ok": 1, "error": 1})

    def test_anonymous_quit_refused(self):
        out = self.rpc("quit")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, b"rpc quit: not authorized (log in with a --pb-users account)\n")
        self.assertEqual(self.rpc("add", "1", "1").stdout, b"2\n")

    def test_wrong_password(self):
        out = self.rpc("--user", "admin", "quit", env={"NETECHO_PASSWORD": "nope"})
        self.assertEqual(out.returncode, 100)
        self.assertIn(b"not authorized", out.stderr)
        self.assertIsNone(self.daemon.proc.poll())

    def test_no_password_without_terminal(self):
        out = self.rpc("--user", "admin", "quit")
        self.assertEqual(out.returncode, 100)
        self.assertIn(b"no password for admin", out.stderr)

    def test_quit_stops_the_daemon(self):
        self.rpc("add", "1", "2")
        out = self.rpc("quit", env={"NETECHO_USER": "admin", "NETECHO_PASSWORD": "s3cret"})
        self.assertEqual((out.returncode, out.stdout), (0, b"server stopping\n"))
        self.assertEqual(self.daemon.wait(), 0)
        fields = summary_fields(self.daemon)
        self.assertEqual((fields["pb"], fields["rpc_calls"]), (2, 2))

    def test_password_file(self):
        pw = os.path.join(tempfile.mkdtemp(), "pw")
        with open(pw, "w") as f:
            f.write("s3cret\n")
        out = self.rpc("--user", "admin", "--password-file", pw, "quit")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.daemon.wait(), 0)

    def test_never_finished_message_leaves_others_served(self):
        """Megabytes of one unfinished message: that peer is cut off, memory stays put."""
        before = self.daemon.rss_kib()
        host, port = self.target.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            sent = 0
            try:
                for _ in range(8):  # up to 12 MiB
                    s.sendall(NEVER_FINISHED)
                    sent += len(NEVER_FINISHED)
            except OSError:
                pass  # the server closed on us: what we want
            s.settimeout(10)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
        self.assertLess(sent, 12 << 20)
        self.assertLess(self.daemon.rss_kib() - before, 16 * 1024)
        tcp = self.daemon.port("--tcp 0")
        with socket.create_connection(("127.0.0.1", tcp), timeout=5) as c:
            c.sendall(b"still\n")
            self.assertEqual(c.recv(10), b"still\n")
        self.daemon.wait_for("too many bytes before login")
        self.assertNotIn("Traceback", self.daemon.log_text())


class RPCStartupTests(TestCase):
    def test_users_file_readable_by_others_warns(self):
        daemon = Daemon(self, "--pb", "0", "--pb-users", users_file(0o644)).start()
        daemon.wait_for("is readable by others: chmod 600 it")

    def test_malformed_users_file(self):
        path = users_file()
        with open(path, "a") as f:
            f.write("nocolon\n")
        daemon = Daemon(self, "--pb", "0", "--pb-users", path).start(wait_ready=False)
        self.assertEqual(daemon.wait(), 1)
        self.assertIn(f"--pb-users {path}:2: expected user:password", daemon.log_text())

    def test_refused(self):
        port = free_port()
        out = netecho("rpc", f"127.0.0.1:{port}")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(), f"dial tcp 127.0.0.1:{port}: connection refused\n")
