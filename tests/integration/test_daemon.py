"""
The real daemon (``twistd -n netecho``) against the real ``nc``
(netcat-openbsd) and plain sockets, all on loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import tempfile
import time

from twisted.trial.unittest import TestCase

from tests import peers
from tests.integration.harness import Daemon, twistd_command


def nc(args: list[str], data: bytes, timeout: float = 20) -> bytes:
    """Run nc with C{data} on stdin; return what it printed."""
    out = subprocess.run(
        [peers.require_openbsd_nc(), *args], input=data, capture_output=True, timeout=timeout
    )
    return out.stdout


def udp_roundtrip(host: str, port: int, data: bytes, timeout: float = 2.0, source=None) -> bytes | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if source is not None:
            s.bind(source)
        s.settimeout(timeout)
        s.sendto(data, (host, port))
        try:
            reply, _ = s.recvfrom(70000)
        except TimeoutError:
            return None
        return reply


def summary_fields(daemon: Daemon) -> dict[str, int]:
    line = daemon.wait_for("summary: ")
    text = line.split("summary: ", 1)[1]
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split())}


class StreamEchoTests(TestCase):
    """TCP and Unix echo through nc."""

    def setUp(self):
        peers.require_openbsd_nc()
        self.dir = tempfile.mkdtemp(prefix="netecho-test-")
        self.sock = os.path.join(self.dir, "echo.sock")
        self.daemon = Daemon(self, "--tcp", "0", "--unix", self.sock).start()
        self.port = self.daemon.port("--tcp 0")

    def test_lines_ipv4_and_ipv6(self):
        """A bare port answers on 127.0.0.1 and ::1 alike."""
        for host in ("127.0.0.1", "::1"):
            self.assertEqual(nc(["-N", host, str(self.port)], b"hello\nworld\n"), b"hello\nworld\n")

    def test_no_newline(self):
        self.assertEqual(nc(["-N", "127.0.0.1", str(self.port)], b"no newline"), b"no newline")

    def test_megabyte_of_random_bytes(self):
        """1 MiB of random binary, sent in one go then half-closed, comes back byte-exact."""
        data = os.urandom(1 << 20)
        self.assertEqual(nc(["-N", "127.0.0.1", str(self.port)], data), data)
        self.assertEqual(nc(["-N", "-U", self.sock], data), data)

    def test_unix_lines(self):
        self.assertEqual(nc(["-N", "-U", self.sock], b"over unix\n"), b"over unix\n")

    def test_unix_socket_mode(self):
        """The default --unix-mode is 0660, not Twisted's 0666."""
        self.assertEqual(stat.S_IMODE(os.stat(self.sock).st_mode), 0o660)

    def test_200_concurrent_clients(self):
        """200 nc processes at once, each gets its own lines back."""
        nc_path = peers.require_openbsd_nc()
        procs = []
        for i in range(200):
            p = subprocess.Popen(
                [nc_path, "-N", "127.0.0.1", str(self.port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            procs.append(p)
        try:
            for i, p in enumerate(procs):
                p.stdin.write(f"client {i}\n".encode() * 50)
                p.stdin.close()
            for i, p in enumerate(procs):
                self.assertEqual(p.stdout.read(), f"client {i}\n".encode() * 50)
                self.assertEqual(p.wait(30), 0)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.stdout.close()
                p.wait()
        self.daemon.stop()
        self.assertEqual(summary_fields(self.daemon)["tcp"], 200)

    def test_stop_word_closes_only_that_client(self):
        """After 'STOP' the server closes the connection; other clients go on."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as c:
            c.sendall(b"first\n  STOP \r\nnever echoed\n")
            received = b""
            while chunk := c.recv(4096):  # b"" only when the server closes
                received += chunk
        self.assertEqual(received, b"first\n  STOP \r\n")
        self.assertEqual(nc(["-N", "127.0.0.1", str(self.port)], b"still here\n"), b"still here\n")
        self.daemon.wait_for("(stop word)")

    def test_stop_word_case_sensitive_and_whole_line(self):
        data = b"stop\nSTOPPED\nSTOP it\n"
        self.assertEqual(nc(["-N", "127.0.0.1", str(self.port)], data), data)

    def test_sighup_does_not_stop(self):
        self.daemon.signal(signal.SIGHUP)
        self.daemon.wait_for("SIGHUP")
        self.assertEqual(nc(["-N", "127.0.0.1", str(self.port)], b"after hup\n"), b"after hup\n")
        self.assertIsNone(self.daemon.proc.poll())

    def test_sigterm_removes_unix_socket(self):
        self.assertEqual(self.daemon.stop(), -signal.SIGTERM)
        self.assertFalse(os.path.exists(self.sock))
        self.assertNotIn("Traceback", self.daemon.log_text())


class NonReadingClientTests(TestCase):
    def test_memory_bounded(self):
        """
        A client that sends without ever reading is paused, not buffered:
        after pushing as much as the server takes for a few seconds, the
        daemon's memory has grown by little and another client is served.
        """
        daemon = Daemon(self, "--tcp", "0").start()
        port = daemon.port("--tcp 0")
        before = daemon.rss_kib()
        hog = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(hog.close)
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        hog.setblocking(False)
        chunk = b"x" * 65536
        sent = 0
        stalled_since = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sent < 256 << 20:
            try:
                sent += hog.send(chunk)
                stalled_since = None
            except BlockingIOError:
                now = time.monotonic()
                stalled_since = stalled_since or now
                if now - stalled_since > 2:
                    break
                time.sleep(0.01)
        growth_mib = (daemon.rss_kib() - before) / 1024
        self.assertLess(sent, 256 << 20, "the server took everything: it is not pausing")
        self.assertLess(growth_mib, 32, f"daemon grew by {growth_mib:.1f} MiB after {sent} bytes")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as other:
            other.sendall(b"ping\n")
            self.assertEqual(other.recv(100), b"ping\n")


class DatagramEchoTests(TestCase):
    def setUp(self):
        self.daemon = Daemon(self, "--udp", "0", "--udp", "127.0.0.1:0").start()
        self.port = self.daemon.port("--udp 0")

    def test_nc_udp(self):
        """nc -u: a line goes out as one datagram and comes back."""
        out = nc(["-u", "-w", "1", "127.0.0.1", str(self.port)], b"hello udp\n")
        self.assertEqual(out, b"hello udp\n")

    def test_sizes_up_to_65507(self):
        """Datagrams of 1 ... 65,507 bytes come back whole, over IPv4 and IPv6."""
        for host in ("127.0.0.1", "::1"):
            for size in (1, 2, 100, 1472, 8192, 8193, 9000, 32768, 65507):
                data = os.urandom(size)
                self.assertEqual(udp_roundtrip(host, self.port, data), data, (host, size))

    def test_host_port_listener(self):
        port = self.daemon.port("--udp 127.0.0.1:0")
        self.assertEqual(udp_roundtrip("127.0.0.1", port, b"x"), b"x")

    def test_privileged_source_port_ignored(self):
        peers.require_root("binding a source port below 1024")
        for source_port in range(900, 1000):
            try:
                reply = udp_roundtrip("127.0.0.1", self.port, b"hi", 1.0, ("127.0.0.1", source_port))
                break
            except OSError:
                continue
        self.assertIsNone(reply)
        self.daemon.wait_for("privileged source port")
        self.daemon.stop()
        self.assertEqual(summary_fields(self.daemon)["datagrams_echoed"], 0)

    def test_spoofed_own_address_is_not_echoed(self):
        """
        One datagram whose source is the server's own address and port (sent
        through a raw socket) must not start a self-echo loop.
        """
        peers.require_root("a raw socket to spoof a source address")
        port = self.daemon.port("--udp 127.0.0.1:0")
        payload = b"loop?"
        udp = port.to_bytes(2, "big") * 2 + (8 + len(payload)).to_bytes(2, "big") + b"\0\0"
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        try:
            raw.sendto(udp + payload, ("127.0.0.1", 0))
        finally:
            raw.close()
        self.daemon.wait_for("own service port")
        time.sleep(0.5)
        self.daemon.stop()
        self.assertEqual(summary_fields(self.daemon)["datagrams_echoed"], 0)
        self.assertIn("udp_own_service_port=1", self.daemon.log_text())


class StopAndSummaryTests(TestCase):
    def test_summary_counts(self):
        """
        SIGTERM: a clean stop (twistd then ends by the same signal, as
        systemd expects) with a summary whose counts are what was sent.
        """
        peers.require_openbsd_nc()
        sock = os.path.join(tempfile.mkdtemp(), "s")
        daemon = Daemon(self, "--tcp", "0", "--udp", "0", "--unix", sock).start()
        tcp, udp = daemon.port("--tcp 0"), daemon.port("--udp 0")
        nc(["-N", "127.0.0.1", str(tcp)], b"12345\n")
        nc(["-N", "::1", str(tcp)], b"123\n")
        nc(["-N", "-U", sock], b"1\n")
        for _ in range(2):
            udp_roundtrip("127.0.0.1", udp, b"abcd")  # two peers: new source port each
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        fields = summary_fields(daemon)
        uptime = fields.pop("uptime_s")
        self.assertEqual(
            fields,
            dict(clients_served=3, tcp=2, unix=1, udp_peers=2, pb=0, bytes_echoed=6 + 4 + 2 + 8,
                 datagrams_echoed=2, rpc_calls=0),
        )
        self.assertGreaterEqual(uptime, 0)
        self.assertRegex(
            daemon.wait_for("summary: "),
            r"summary: clients_served=3 tcp=2 unix=1 udp_peers=2 pb=0 bytes_echoed=20 "
            r"datagrams_echoed=2 rpc_calls=0 uptime_s=\d+$",
        )

    def test_sigint(self):
        daemon = Daemon(self, "--tcp", "0").start()
        daemon.signal(signal.SIGINT)
        self.assertEqual(daemon.wait(), -signal.SIGINT)
        daemon.wait_for("summary: ")

    def test_stop_signal(self):
        daemon = Daemon(self, "--tcp", "0", "--stop-signal", "USR1").start()
        daemon.signal(signal.SIGUSR1)
        self.assertEqual(daemon.wait(), 0)
        daemon.wait_for("summary: ")

    def test_exit_on_stop_tcp(self):
        daemon = Daemon(self, "--tcp", "0", "--exit-on-stop").start()
        daemon.wait_for("--exit-on-stop is on")
        out = nc(["-N", "127.0.0.1", str(daemon.port("--tcp 0"))], b"bye\nSTOP\n")
        self.assertEqual(out, b"bye\nSTOP\n")
        self.assertEqual(daemon.wait(), 0)
        self.assertEqual(summary_fields(daemon)["tcp"], 1)

    def test_exit_on_stop_unix(self):
        sock = os.path.join(tempfile.mkdtemp(), "s")
        daemon = Daemon(self, "--unix", sock, "--exit-on-stop").start()
        self.assertEqual(nc(["-N", "-U", sock], b"STOP\n"), b"STOP\n")
        self.assertEqual(daemon.wait(), 0)
        self.assertFalse(os.path.exists(sock))

    def test_exit_on_stop_udp(self):
        daemon = Daemon(self, "--udp", "127.0.0.1:0", "--exit-on-stop").start()
        port = daemon.port("--udp 127.0.0.1:0")
        self.assertEqual(udp_roundtrip("127.0.0.1", port, b"STOP\n"), b"STOP\n")
        self.assertEqual(daemon.wait(), 0)
        self.assertEqual(summary_fields(daemon)["datagrams_echoed"], 1)

    def test_without_exit_on_stop_the_daemon_stays(self):
        daemon = Daemon(self, "--udp", "127.0.0.1:0").start()
        port = daemon.port("--udp 127.0.0.1:0")
        self.assertEqual(udp_roundtrip("127.0.0.1", port, b"STOP"), b"STOP")
        self.assertEqual(udp_roundtrip("127.0.0.1", port, b"again"), b"again")


class LoggingTests(TestCase):
    def test_connection_line_without_payload(self):
        daemon = Daemon(self, "--tcp", "0").start()
        nc(["-N", "127.0.0.1", str(daemon.port("--tcp 0"))], b"secret\n")
        line = daemon.wait_for("closed after")
        self.assertRegex(line, r"echo tcp 127\.0\.0\.1:\d+ closed after [\d.]+s: 7 bytes in, 7 bytes out")
        daemon.stop()
        self.assertNotIn("secret", daemon.log_text())

    def test_log_data(self):
        daemon = Daemon(self, "--tcp", "0", "--log-data").start()
        nc(["-N", "127.0.0.1", str(daemon.port("--tcp 0"))], b"secret\x00\n")
        self.assertIn(r"-> secret\x00\n", daemon.wait_for("-> "))


class RandomServiceTests(TestCase):
    def test_a_number_per_line(self):
        daemon = Daemon(self, "--random", "0").start()
        out = nc(["-N", "127.0.0.1", str(daemon.port("--random 0"))], b"a\n\nlong" * 1 + b"x" * 100000 + b"\nno end")
        numbers = out.decode().split("\n")
        self.assertEqual(numbers[-1], "")
        self.assertEqual(len(numbers[:-1]), 3)
        for n in numbers[:-1]:
            self.assertTrue(0 <= int(n) < 2**31, n)


    def test_non_reading_clients_cost_little(self):
        """
        Clients that send 64 KiB of line feeds (65,536 numbers owed, ~700 KB)
        and never read: the answers are written only as the socket takes
        them, so each costs the daemon little (before: about 430 KB each).
        """
        daemon = Daemon(self, "--random", "0").start()
        port = daemon.port("--random 0")
        before = daemon.rss_kib()
        hogs = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            self.addCleanup(s.close)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"\n" * 65536)
            hogs.append(s)
        time.sleep(1.5)
        growth_kib = daemon.rss_kib() - before
        self.assertLess(growth_kib / len(hogs), 200, f"daemon grew by {growth_kib} KiB for {len(hogs)} clients")
        # Each one still gets every number once it reads.
        hog = hogs[0]
        hog.shutdown(socket.SHUT_WR)
        hog.settimeout(10)
        data = b""
        while True:
            chunk = hog.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        self.assertEqual(data.count(b"\n"), 65536)


class UnixSocketFileTests(TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-unix-")
        self.path = os.path.join(self.dir, "echo.sock")

    def test_stale_socket_replaced(self):
        """A socket file nobody listens on (its owner died) is replaced."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        s.close()  # the file stays: a stale socket
        daemon = Daemon(self, "--unix", self.path).start()
        daemon.wait_for("removed stale socket")
        self.assertEqual(nc(["-N", "-U", self.path], b"fresh\n"), b"fresh\n")

    def test_restart_after_sigkill(self):
        daemon = Daemon(self, "--unix", self.path).start()
        daemon.proc.kill()
        daemon.proc.wait()
        self.assertTrue(os.path.exists(self.path))
        again = Daemon(self, "--unix", self.path).start()
        self.assertEqual(nc(["-N", "-U", self.path], b"again\n"), b"again\n")
        self.assertEqual(again.stop(), -signal.SIGTERM)

    def test_live_socket_refused(self):
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(live.close)
        live.bind(self.path)
        live.listen(5)
        daemon = Daemon(self, "--unix", self.path).start(wait_ready=False)
        self.assertEqual(daemon.wait(), 1)
        self.assertEqual(
            daemon.stderr,
            f"netecho: cannot listen on --unix {self.path}: in use by a live server\n",
        )
        self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode))

    def test_regular_file_never_deleted(self):
        with open(self.path, "w") as f:
            f.write("precious")
        daemon = Daemon(self, "--unix", self.path).start(wait_ready=False)
        self.assertEqual(daemon.wait(), 1)
        self.assertIn("exists and is not a socket", daemon.stderr)
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious")

    def test_unix_mode_option(self):
        Daemon(self, "--unix", self.path, "--unix-mode", "0600").start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)


class StartupErrorTests(TestCase):
    def assertOneLineError(self, daemon: Daemon, expected: str) -> None:
        self.assertNotEqual(daemon.wait(), 0)
        lines = daemon.stderr.splitlines()
        self.assertEqual(len(lines), 1, daemon.stderr)
        self.assertIn(expected, lines[0])
        self.assertNotIn("Traceback", daemon.stderr + daemon.log_text())

    def test_port_in_use(self):
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        label = f"tcp:{port}:interface=127.0.0.1"
        daemon = Daemon(self, "--tcp", label).start(wait_ready=False)
        self.assertOneLineError(
            daemon, f"netecho: cannot listen on --tcp {label}: address already in use"
        )

    def test_udp_port_in_use(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        value = f"127.0.0.1:{busy.getsockname()[1]}"
        daemon = Daemon(self, "--udp", value).start(wait_ready=False)
        self.assertOneLineError(daemon, f"cannot listen on --udp {value}: address already in use")

    def assertUsageError(self, daemon: Daemon, expected: str) -> None:
        """twistd prints the usage, then one line naming the bad option, and exits 1."""
        self.assertEqual(daemon.wait(), 1)
        last = daemon.log_text().splitlines()[-1]
        self.assertIn(expected, last)
        self.assertNotIn("Traceback", daemon.stderr + daemon.log_text())

    def test_bad_endpoint(self):
        daemon = Daemon(self, "--tcp", "nonsense:1234").start(wait_ready=False)
        self.assertUsageError(daemon, "--tcp nonsense:1234: not a port or a server endpoint")

    def test_bad_option_value(self):
        daemon = Daemon(self, "--unix-mode", "999").start(wait_ready=False)
        self.assertUsageError(daemon, "--unix-mode: '999' is not an octal file mode")

    def test_bad_udp_value(self):
        daemon = Daemon(self, "--udp", "localhost").start(wait_ready=False)
        self.assertUsageError(daemon, "--udp localhost: 'localhost' is not HOST:PORT")

    def test_bad_stop_signal(self):
        daemon = Daemon(self, "--stop-signal", "KILL").start(wait_ready=False)
        self.assertUsageError(daemon, "--stop-signal: SIGKILL cannot be caught")

    def test_one_bad_listener_stops_all(self):
        """A listener that fails takes the others down too: no half-started daemon."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        sock = os.path.join(tempfile.mkdtemp(), "s")
        label = f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1"
        daemon = Daemon(self, "--unix", sock, "--tcp", label).start(wait_ready=False)
        self.assertOneLineError(daemon, "address already in use")
        self.assertFalse(os.path.exists(sock))


class JSONLogTests(TestCase):
    def test_log_format_json(self):
        """--log-format json: every line after start-up is one JSON record."""
        import json

        daemon = Daemon(self, "--tcp", "0", "--log-format", "json").start(wait_ready=False)
        daemon.wait_for('"log_namespace": "netecho.daemon"')
        daemon.stop()
        records = [json.loads(line.lstrip("\x1e")) for line in daemon.lines if line.lstrip("\x1e").startswith("{")]
        formats = [r.get("log_format") for r in records]
        self.assertIn("{summary}", formats)
        listening = [r for r in records if r.get("log_format") == "{label}: listening on {where}"]
        self.assertEqual(listening[0]["label"], "--tcp 0")


def self_signed(directory: str) -> tuple[str, str]:
    """A throw-away key and certificate for localhost (cryptography comes with twisted[tls])."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    key_path, cert_path = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def tls_echo(port: int, data: bytes) -> bytes:
    """Send C{data} over TLS (any certificate) to 127.0.0.1:C{port} in 64 KiB steps; what came back."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            received = bytearray()
            for start in range(0, len(data), 65536):
                chunk = data[start : start + 65536]
                tls.sendall(chunk)
                while len(received) < start + len(chunk):
                    received += tls.recv(65536)
    return bytes(received)


class TLSTests(TestCase):
    def test_ssl_endpoint_echoes_byte_exact(self):
        """--tcp ssl:...: the TLS endpoint (twisted[tls]) echoes 1 MiB byte-exact."""
        key, cert = self_signed(tempfile.mkdtemp())
        label = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        daemon = Daemon(self, "--tcp", label).start()
        port = daemon.port(f"--tcp {label}")
        data = os.urandom(1 << 20)
        self.assertEqual(tls_echo(port, data), data)


class ReactorChoiceTests(TestCase):
    """
    twistd netecho runs on netecho's epoll reactor unless --reactor picks
    another; either way the echo and the stop are the same.
    """

    def check(self, reactor_option, reactor_class):
        peers.require_openbsd_nc()
        daemon = Daemon(self, "--tcp", "0", "--udp", "127.0.0.1:0")
        daemon.command = lambda: [*twistd_command(), *reactor_option, "--nodaemon",
                                  "--pidfile=", "netecho", *daemon.args]
        daemon.start()
        self.assertIn(f"reactor class: {reactor_class}", daemon.wait_for("reactor class"))
        data = os.urandom(1 << 20)
        self.assertEqual(nc(["-N", "127.0.0.1", str(daemon.port("--tcp 0"))], data), data)
        self.assertEqual(nc(["-N", "127.0.0.1", str(daemon.port("--tcp 0"))], b"a\n  STOP \r\nb\n"),
                         b"a\n  STOP \r\n")
        self.assertEqual(udp_roundtrip("127.0.0.1", daemon.port("--udp 127.0.0.1:0"), b"x" * 65507),
                         b"x" * 65507)
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        fields = summary_fields(daemon)
        self.assertEqual(fields["tcp"], 2)

    def test_default_is_netecho_epoll(self):
        self.check([], "netecho.reactor.DirectEPollReactor")

    def test_named_netecho_epoll(self):
        self.check(["--reactor", "netecho-epoll"], "netecho.reactor.DirectEPollReactor")

    def test_twisted_epoll_when_asked(self):
        self.check(["--reactor", "epoll"], "twisted.internet.epollreactor.EPollReactor")


class RepeatedSignalTests(TestCase):
    def test_second_sigterm_while_stopping(self):
        """Two SIGTERMs in a row (an impatient operator): one clean stop, no traceback."""
        daemon = Daemon(self, "--tcp", "0").start()
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("Received SIGTERM")
        daemon.signal(signal.SIGTERM)  # while the first stop is under way
        self.assertEqual(daemon.wait(), -signal.SIGTERM)
        daemon.wait_for("summary: ")
        self.assertNotIn("Traceback", daemon.log_text() + daemon.stderr)
