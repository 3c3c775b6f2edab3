"""
``netecho ping`` and ``netecho tcp --tls`` as a user runs them: against the
real daemon (plain and ``ssl:`` listeners), against socat echo servers
(``EXEC:cat``, ``OPENSSL-LISTEN``), and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import TestCase

from tests import peers
from tests.certs import make_pki
from tests.integration.clients import Socat, free_port, netecho, wait_connectable
from tests.integration.harness import Daemon

FAST = ("-i", "0.05", "-W", "2")
REPLY = r"64 bytes from {}: seq={} time=\d+\.\d{{3}} ms"


def run(*args):
    out = netecho("ping", *args)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


class PingDaemonTests(TestCase):
    def setUp(self):
        self.pki = make_pki(tempfile.mkdtemp(prefix="netecho-pki-"))
        self.unix = os.path.join(tempfile.mkdtemp(prefix="netecho-ping-"), "echo.sock")
        self.ssl = f"ssl:0:interface=127.0.0.1:privateKey={self.pki.server.key}:certKey={self.pki.server.cert}"
        self.daemon = Daemon(self, "--tcp", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0",
                             "--unix", self.unix, "--tcp", self.ssl).start()
        self.tcp = f"127.0.0.1:{self.daemon.port('--tcp tcp:0:interface=127.0.0.1')}"
        self.udp = f"127.0.0.1:{self.daemon.port('--udp 127.0.0.1:0')}"
        self.tls = f"127.0.0.1:{self.daemon.port('--tcp ' + self.ssl)}"

    def check_all_answered(self, transport, target, *extra, count=3, size=64):
        code, out, err = run(transport, target, "-c", str(count), "-s", str(size), *FAST, *extra)
        self.assertEqual((code, err), (0, ""), out)
        lines = out.splitlines()
        self.assertEqual(lines[0], f"PING {transport} {target}: {size} bytes")
        for seq in range(1, count + 1):
            self.assertRegex(lines[seq], REPLY.replace("64", str(size)).format(target, seq).replace("time=", r"(connect=\d+\.\d{3} ms )?time="))
        self.assertEqual(lines[count + 1], f"--- {target} ping statistics ---")
        self.assertRegex(lines[count + 2], rf"^{count} probes sent, {count} replies, 0\.0% loss, 0 errors, time \d+ ms$")
        self.assertRegex(lines[-1], r"^rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms$")
        return out

    def test_tcp_udp_unix(self):
        self.check_all_answered("tcp", self.tcp)
        self.check_all_answered("udp", self.udp)
        self.check_all_answered("unix", self.unix)
        self.check_all_answered("udp", self.udp, count=2, size=65507)

    def test_tcp_connect_each(self):
        out = self.check_all_answered("tcp", self.tcp, "--connect")
        self.assertIn("connect=", out.splitlines()[1])
        self.assertRegex(out, r"\nconnect min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms\nrtt ")

    def test_tls_verified_against_the_ca(self):
        self.check_all_answered("tls", self.tls, "--ca", self.pki.ca.cert)
        self.check_all_answered("tls", self.tls, "--ca", self.pki.ca.cert, "--connect", count=2)

    def test_tls_untrusted_certificate(self):
        code, out, err = run("tls", self.tls, "-c", "2", *FAST, "--ca", self.pki.self_signed.cert)
        self.assertEqual(code, 100)
        self.assertEqual(err, f"tls {self.tls}: certificate verify failed: unable to get local issuer certificate\n")

    def test_tls_wrong_name(self):
        code, out, err = run("tls", self.tls, "-c", "1", *FAST, "--ca", self.pki.ca.cert, "--sni", "other.example")
        self.assertEqual(code, 100)
        self.assertEqual(err, f"tls {self.tls}: certificate verify failed: certificate is not valid for other.example\n")

    def test_tls_insecure_warns(self):
        code, out, err = run("tls", self.tls, "-c", "1", *FAST, "--insecure")
        self.assertEqual(code, 0, out + err)
        self.assertEqual(err, "netecho: warning: --insecure: the server's certificate is not verified\n")

    def test_json_only(self):
        code, out, err = run("udp", self.udp, "-c", "3", *FAST, "--json")
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertEqual(out.count("\n"), 1)
        self.assertEqual((data["transport"], data["target"], data["sent"], data["received"], data["lost"]),
                         ("udp", self.udp, 3, 3, 0))
        self.assertLessEqual(data["rtt_ms"]["min"], data["rtt_ms"]["p50"])

    def test_refused(self):
        port = free_port()
        self.assertEqual(run("tcp", f"127.0.0.1:{port}", "-c", "2", *FAST)[::2],
                         (100, f"dial tcp 127.0.0.1:{port}: connection refused\n"))
        self.assertEqual(run("udp", f"127.0.0.1:{port}", "-c", "2", *FAST)[::2],
                         (100, f"read udp 127.0.0.1:{port}: connection refused\n"))

    def test_daemon_goes_away(self):
        """Every probe lost after the daemon stops: some answered, exit 1."""
        proc = subprocess.Popen([sys.executable, "-m", "netecho", "ping", "udp", self.udp, "-c", "10",
                                 "-i", "0.1", "-W", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=tempfile.gettempdir())
        self.addCleanup(proc.kill)
        time.sleep(0.5)
        self.daemon.stop()
        out, err = proc.communicate(timeout=20)
        self.assertIn(proc.returncode, (1, 100), out + err)
        if proc.returncode == 100:  # the kernel's port-unreachable ends it at once
            self.assertIn(b"connection refused", err)
        else:
            self.assertIn(b"% loss", out)

    def test_tcp_client_over_tls(self):
        out = netecho("tcp", self.tls, "--tls", "--ca", self.pki.ca.cert, "-m", "hello")
        self.assertEqual((out.returncode, out.stdout, out.stderr), (0, b"->: hello\n", b""))
        out = netecho("tcp", self.tls, "--tls", "-m", "hello")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr.decode(),
                         f"tls {self.tls}: certificate verify failed: unable to get local issuer certificate\n")
        out = netecho("tcp", self.tls, "--ca", self.pki.ca.cert, "-m", "hello")
        self.assertEqual(out.returncode, 2)


class CtrlCTests(TestCase):
    def test_summary_on_interrupt(self):
        socat = Socat(self, "udp")
        proc = subprocess.Popen([sys.executable, "-m", "netecho", "ping", "udp", socat.address, "-c", "0",
                                 "-i", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=tempfile.gettempdir(),
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.addCleanup(proc.kill)
        deadline = time.monotonic() + 10
        first = proc.stdout.readline()  # the PING line
        self.assertTrue(first.startswith(b"PING udp"), first)
        while time.monotonic() < deadline and not proc.stdout.readline().startswith(b"64 bytes"):
            pass
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0, out + err)
        self.assertIn(f"--- {socat.address} ping statistics ---".encode(), out)
        self.assertRegex(out.decode(), r"\n(\d+) probes sent, \1 replies, 0\.0% loss")


class SocatTests(TestCase):
    def check(self, transport, address, *extra):
        code, out, err = run(transport, address, "-c", "3", *FAST, *extra)
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn("3 probes sent, 3 replies, 0.0% loss, 0 errors", out)

    def test_tcp_udp_unix(self):
        self.check("tcp", Socat(self, "tcp").address)
        self.check("udp", Socat(self, "udp").address)
        self.check("unix", Socat(self, "unix").address)

    def openssl(self, cert, *options):
        exe = peers.require("socat", "socat")
        port = free_port()
        spec = ",".join([f"OPENSSL-LISTEN:{port}", "bind=127.0.0.1", "fork", "reuseaddr", f"cert={cert}", *options])
        proc = subprocess.Popen([exe, spec, "EXEC:cat"], stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (proc.kill(), proc.wait()))
        import socket

        wait_connectable(lambda: socket.create_connection(("127.0.0.1", port), 1).close())
        return f"127.0.0.1:{port}"

    def test_openssl_listen(self):
        pki = make_pki(tempfile.mkdtemp(prefix="netecho-pki-"))
        address = self.openssl(pki.server.both, "verify=0")
        self.check("tls", address, "--ca", pki.ca.cert)
        self.check("tls", address.replace("127.0.0.1", "localhost"), "--ca", pki.ca.cert, "--connect")

    def test_openssl_self_signed_and_expired(self):
        pki = make_pki(tempfile.mkdtemp(prefix="netecho-pki-"))
        for files, reason in ((pki.self_signed, "self-signed certificate"), (pki.expired, "certificate has expired")):
            address = self.openssl(files.both, "verify=0")
            trust = pki.self_signed.cert if files is pki.self_signed else pki.ca.cert
            ca = pki.ca.cert if files is pki.self_signed else trust
            code, out, err = run("tls", address, "-c", "1", *FAST, "--ca", ca)
            self.assertEqual((code, err), (100, f"tls {address}: certificate verify failed: {reason}\n"))

    def test_openssl_client_certificate(self):
        pki = make_pki(tempfile.mkdtemp(prefix="netecho-pki-"))
        address = self.openssl(pki.server.both, f"cafile={pki.ca.cert}", "verify=1")
        self.check("tls", address, "--ca", pki.ca.cert, "--cert", pki.client.cert, "--key", pki.client.key)
        code, out, err = run("tls", address, "-c", "2", *FAST, "--ca", pki.ca.cert)
        self.assertEqual(code, 100, out + err)
        self.assertIn(f"tls {address}: ", out + err)
