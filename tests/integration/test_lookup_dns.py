"""
netecho lookup against a real authoritative server (NSD, started here on
127.0.0.1 and a free port with the zones in tests/zones/), answer for answer
against ``dig +short`` asking the same server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet import reactor
from twisted.names import dns
from twisted.trial.unittest import TestCase

from netecho.dns import api as lookup
from netecho.errors import UserError
from tests import peers
from tests.test_lookup import a_records, overrun, reply_to

ZONES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zones")
ZONE_FILES = {
    "netecho.test": "netecho.test.zone",
    "2.0.192.in-addr.arpa": "2.0.192.in-addr.arpa.zone",
    "8.b.d.0.1.0.0.2.ip6.arpa": "8.b.d.0.1.0.0.2.ip6.arpa.zone",
}


def free_port_udp_and_tcp() -> int:
    """A loopback port number free for both UDP and TCP (bounded tries)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


def soa_query() -> bytes:
    m = dns.Message(4321, recDes=0)
    m.queries = [dns.Query(b"netecho.test", dns.SOA)]
    return m.toStr()


class NSDExited(AssertionError):
    """NSD ended before it answered (for one: a port taken since it was found free)."""


class NSD:
    """
    NSD in the foreground with a configuration of our own, in a temporary
    directory: C{zone_files} (zone name -> path, by default the zones in
    tests/zones/), and with C{tls} (key file, certificate file) DNS over
    TLS on C{tls_port} too; C{server_options}: more lines for its
    C{server:} section (benchmarks turn response rate limiting off).
    """

    def __init__(self, zone_files: dict[str, str] | None = None, tls: tuple[str, str] | None = None,
                 server_options: str = "") -> None:
        exe = peers.require("nsd", "nsd")
        if zone_files is None:
            zone_files = {name: os.path.join(ZONES, file) for name, file in ZONE_FILES.items()}
        # A port found free can be taken by another process before NSD binds
        # it: then NSD exits at once, and new ports are tried (a few times).
        for attempt in range(3):
            try:
                self.start(exe, zone_files, tls, server_options)
                return
            except NSDExited:
                if attempt == 2:
                    raise

    def start(self, exe: str, zone_files: dict[str, str], tls: tuple[str, str] | None, server_options: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="netecho-nsd-")
        self.port = free_port_udp_and_tcp()
        self.tls_port = None
        conf = os.path.join(self.dir, "nsd.conf")
        zones = "".join(f"zone:\n    name: {name}\n    zonefile: {path}\n" for name, path in zone_files.items())
        listen = "    ip-address: 127.0.0.1\n"
        if tls is not None:
            self.tls_port = free_port_udp_and_tcp()
            # NSD speaks TLS on the interfaces whose port is tls-port.
            listen = (f"    ip-address: 127.0.0.1@{self.port}\n    ip-address: 127.0.0.1@{self.tls_port}\n"
                      f"    tls-port: {self.tls_port}\n"
                      f'    tls-service-key: "{tls[0]}"\n    tls-service-pem: "{tls[1]}"\n')
        with open(conf, "w") as f:
            f.write(
                "server:\n"
                + listen
                + f"    port: {self.port}\n"
                "    do-ip6: no\n"
                '    username: ""\n'
                '    chroot: ""\n'
                '    database: ""\n'
                f'    zonesdir: "{self.dir}"\n'
                f'    pidfile: "{self.dir}/nsd.pid"\n'
                f'    xfrdfile: "{self.dir}/xfrd.state"\n'
                f'    zonelistfile: "{self.dir}/zone.list"\n'
                f'    logfile: "{self.dir}/nsd.log"\n'
                "    server-count: 1\n"
                "    verbosity: 1\n"
                + server_options
                + "remote-control:\n"
                "    control-enable: no\n" + zones
            )
        self.log = open(os.path.join(self.dir, "stderr.log"), "wb")
        self.proc = subprocess.Popen([exe, "-d", "-c", conf], stdout=self.log, stderr=self.log)
        try:
            self.wait_answering()
        except BaseException:
            self.stop()
            raise

    def wait_answering(self, limit: float = 15) -> None:
        deadline = time.monotonic() + limit
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise NSDExited(f"nsd exited with {self.proc.returncode}: {self.logs()}")
                s.sendto(soa_query(), ("127.0.0.1", self.port))
                try:
                    data = s.recv(4096)
                except OSError:  # timeout, or refused while NSD is not bound yet
                    time.sleep(0.05)
                    continue
                if data[:2] == soa_query()[:2]:
                    return
        raise AssertionError(f"nsd did not answer within {limit}s: {self.logs()}")

    def logs(self) -> str:
        text = ""
        for name in ("stderr.log", "nsd.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        return text[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def dig(server: NSD, *query: str) -> subprocess.CompletedProcess:
    exe = peers.require("dig", "dnsutils")
    return subprocess.run(
        [exe, "@127.0.0.1", "-p", str(server.port), "+tries=1", "+time=3", "+noidnout", *query],
        capture_output=True, text=True, timeout=20,
    )


def dig_short(server: NSD, *query: str) -> list[str]:
    out = dig(server, "+short", *query)
    assert out.returncode == 0, out
    return out.stdout.splitlines()


def netecho_lookup(*args: str, input: str = "") -> subprocess.CompletedProcess:
    """The installed command as a user runs it: python -m netecho lookup ..."""
    return subprocess.run(
        [sys.executable, "-m", "netecho", "lookup", *args],
        input=input, capture_output=True, text=True, timeout=30, cwd=tempfile.gettempdir(),
    )


# (netecho TYPE, netecho NAME, what dig is asked): dig gets ASCII names.
CASES = [
    ("a", "www.netecho.test", ("A", "www.netecho.test")),
    ("a", "netecho.test", ("A", "netecho.test")),
    ("aaaa", "www.netecho.test", ("AAAA", "www.netecho.test")),
    ("a", "alias.netecho.test", ("A", "alias.netecho.test")),
    ("aaaa", "ALIAS.Netecho.Test.", ("AAAA", "ALIAS.Netecho.Test.")),
    ("a", "away.netecho.test", ("A", "away.netecho.test")),
    ("cname", "alias.netecho.test", ("CNAME", "alias.netecho.test")),
    ("ns", "netecho.test", ("NS", "netecho.test")),
    ("mx", "netecho.test", ("MX", "netecho.test")),
    ("txt", "netecho.test", ("TXT", "netecho.test")),
    ("txt", "txt.netecho.test", ("TXT", "txt.netecho.test")),
    ("txt", "big.netecho.test", ("TXT", "big.netecho.test")),
    ("soa", "netecho.test", ("SOA", "netecho.test")),
    ("srv", "_sip._tcp.netecho.test", ("SRV", "_sip._tcp.netecho.test")),
    ("a", "bücher.netecho.test", ("A", "xn--bcher-kva.netecho.test")),
    ("aaaa", "bücher.netecho.test", ("AAAA", "xn--bcher-kva.netecho.test")),
    ("ptr", "192.0.2.1", ("-x", "192.0.2.1")),
    ("ptr", "1.2.0.192.in-addr.arpa", ("PTR", "1.2.0.192.in-addr.arpa")),
    ("ip", "192.0.2.10", ("-x", "192.0.2.10")),
    ("ip", "192.0.2.30", ("-x", "192.0.2.30")),
    ("ip", "2001:db8::1", ("-x", "2001:db8::1")),
    ("mx", "mailonly.netecho.test", ("MX", "mailonly.netecho.test")),
]

# (TYPE, NAME, netecho's error with SERVER for the server, dig's status)
FAILURES = [
    ("aaaa", "v4only.netecho.test", "lookup v4only.netecho.test: no AAAA record", "NOERROR"),
    ("a", "nx.netecho.test", "lookup nx.netecho.test: no such host", "NXDOMAIN"),
    ("mx", "www.netecho.test", "lookup www.netecho.test: no MX record", "NOERROR"),
    ("ip", "192.0.2.99", "lookup 192.0.2.99: no such host", "NXDOMAIN"),
    ("a", "www.example.com", "lookup www.example.com on SERVER: query refused (REFUSED)", "REFUSED"),
]


class AgainstDigTests(TestCase):
    """Every answer equal to dig's, over UDP and TCP."""

    def setUp(self):
        # One NSD per test (trial has no setUpClass); it starts in well under a second.
        self.nsd = NSD()
        self.addCleanup(self.nsd.stop)

    def servers(self):
        return [("127.0.0.1", self.nsd.port)]

    async def check_cases(self, tcp: bool) -> None:
        for kind, name, query in CASES:
            expected = sorted(dig_short(self.nsd, *query))
            self.assertTrue(expected, (kind, name, "dig found nothing: the zone is wrong"))
            result = await lookup.query(reactor, name, {"ip": "IP"}.get(kind, kind), self.servers(), tcp=tcp)
            self.assertEqual(sorted(result.lines()), expected, (kind, name, tcp))
            self.assertEqual(result.server, f"127.0.0.1:{self.nsd.port}")

    async def test_udp(self):
        await self.check_cases(tcp=False)

    async def test_tcp(self):
        await self.check_cases(tcp=True)

    async def test_host_is_a_then_aaaa_addresses_only(self):
        for name, ascii_name in (("www.netecho.test", "www.netecho.test"), ("alias.netecho.test", "alias.netecho.test"),
                                 ("bücher.netecho.test", "xn--bcher-kva.netecho.test"),
                                 ("v4only.netecho.test", "v4only.netecho.test")):
            v4 = [line for line in dig_short(self.nsd, "A", ascii_name) if not line.endswith(".")]
            v6 = [line for line in dig_short(self.nsd, "AAAA", ascii_name) if not line.endswith(".")]
            result = await lookup.query(reactor, name, "host", self.servers())
            lines = result.lines()
            self.assertEqual((sorted(lines[: len(v4)]), sorted(lines[len(v4):])), (sorted(v4), sorted(v6)), name)

    async def test_failures_match_dig_status(self):
        for kind, name, message, status in FAILURES:
            query = ("-x", name) if kind == "ip" else (kind.upper(), name)
            out = dig(self.nsd, *query)
            self.assertIn(f"status: {status}", out.stdout, (kind, name))
            with self.assertRaises(UserError) as caught:
                await lookup.query(reactor, name, {"ip": "IP"}.get(kind, kind), self.servers())
            self.assertEqual(str(caught.exception), message.replace("SERVER", f"127.0.0.1:{self.nsd.port}"))

    def test_big_txt_is_truncated_over_udp(self):
        # The precondition of the TC case above: without EDNS the set does not fit.
        out = dig(self.nsd, "+noedns", "+ignore", "TXT", "big.netecho.test")
        flags = [line for line in out.stdout.splitlines() if line.startswith(";; flags:")]
        self.assertIn(" tc", flags[0])


class CommandTests(TestCase):
    """The command as a subprocess: output, exit status, stderr."""

    def setUp(self):
        # One NSD per test (trial has no setUpClass); it starts in well under a second.
        self.nsd = NSD()
        self.addCleanup(self.nsd.stop)

    def server(self) -> str:
        return f"127.0.0.1:{self.nsd.port}"

    def test_plain_output_equals_dig(self):
        for args, query in ((("txt", "txt.netecho.test"), ("TXT", "txt.netecho.test")),
                            (("a", "alias.netecho.test", "--tcp"), ("A", "alias.netecho.test")),
                            (("soa", "netecho.test"), ("SOA", "netecho.test")),
                            (("ip", "2001:db8::1"), ("-x", "2001:db8::1"))):
            out = netecho_lookup(*args, "--server", self.server())
            self.assertEqual((out.returncode, out.stderr), (0, ""), args)
            self.assertEqual(sorted(out.stdout.splitlines()), sorted(dig_short(self.nsd, *query)), args)

    def test_host_idn(self):
        out = netecho_lookup("host", "bücher.netecho.test", "--server", self.server())
        self.assertEqual((out.returncode, out.stdout, out.stderr), (0, "192.0.2.30\n2001:db8::30\n", ""))

    def test_json(self):
        out = netecho_lookup("mx", "netecho.test", "--json", "--server", self.server())
        self.assertEqual(out.returncode, 0, out.stderr)
        data = json.loads(out.stdout)
        self.assertEqual(
            (data["query"], data["type"], data["server"]), ("netecho.test", "MX", self.server())
        )
        self.assertEqual(
            sorted((a["name"], a["type"], a["ttl"], a["data"]) for a in data["answers"]),
            [("netecho.test.", "MX", 300, "10 mail.netecho.test."), ("netecho.test.", "MX", 300, "20 mail2.netecho.test.")],
        )

    def test_errors_one_line_exit_100(self):
        for args, message in (
            (("aaaa", "v4only.netecho.test"), "lookup v4only.netecho.test: no AAAA record"),
            (("host", "nx.netecho.test"), "lookup nx.netecho.test: no such host"),
            (("ip", "288.8.8.8"), "Not a valid IP address!"),
            (("a", "x" * 64 + ".netecho.test"), f"lookup {'x' * 64}.netecho.test: label longer than 63 bytes"),
        ):
            out = netecho_lookup(*args, "--server", self.server())
            self.assertEqual((out.returncode, out.stdout, out.stderr), (100, "", message + "\n"), args)

    def test_silent_server_times_out_in_time(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            start = time.monotonic()
            out = netecho_lookup("a", "www.netecho.test", "--server", f"127.0.0.1:{port}",
                                 "--timeout", "0.4", "--retries", "1")
            elapsed = time.monotonic() - start
        self.assertEqual(
            (out.returncode, out.stderr),
            (100, f"lookup www.netecho.test on 127.0.0.1:{port}: timed out (2 tries of 0.4s)\n"),
        )
        self.assertLess(elapsed, 0.8 + 5)  # the tries, plus starting Python

    def test_file_from_stdin_in_order(self):
        names = ["www.netecho.test", "nx.netecho.test", "bücher.netecho.test", "# comment", "", "mail.netecho.test"]
        out = netecho_lookup("a", "--file", "-", "--server", self.server(), "--concurrency", "2",
                             input="\n".join(names) + "\n")
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, "1 of 4 lookups failed\n")  # stderr is no terminal: no progress bar
        self.assertEqual(
            out.stdout.splitlines(),
            ["www.netecho.test 192.0.2.1 192.0.2.2 192.0.2.3",
             "nx.netecho.test error: lookup nx.netecho.test: no such host",
             "bücher.netecho.test 192.0.2.30",
             "mail.netecho.test 192.0.2.25"],
        )


def thread_server(testcase: TestCase, replies) -> int:
    """
    A UDP server on 127.0.0.1 in a thread (for tests that block on a
    subprocess) answering each query with C{replies(query)}, a list of
    datagrams (none: a silent server that still reads); its port.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()
    testcase.received = 0

    def run():
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except socket.timeout:
                continue
            testcase.received += 1
            query = dns.Message()
            query.fromStr(data)
            for datagram in replies(query):
                sock.sendto(datagram, addr)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join(5)
        sock.close()

    testcase.addCleanup(close)
    return sock.getsockname()[1]


class MalformedReplyTests(TestCase):
    """
    Issue 13, item 15: the real command, asking a server on 127.0.0.1 that
    first sends a reply with the right ID and question but an A record
    whose rdlength runs past the end of the packet.
    """

    def serve(self, replies) -> int:
        return thread_server(self, replies)

    def test_overrunning_record_ignored_for_the_genuine_reply(self):
        port = self.serve(lambda q: [overrun(reply_to(q, a_records(q, "1.2.3.4"))),
                                     reply_to(q, a_records(q, "192.0.2.1"))])
        out = netecho_lookup("a", "www.example", "--server", f"127.0.0.1:{port}", "--retries", "0")
        self.assertEqual((out.returncode, out.stdout, out.stderr), (0, "192.0.2.1\n", ""))

    def test_only_an_overrunning_reply_times_out(self):
        port = self.serve(lambda q: [overrun(reply_to(q, a_records(q, "1.2.3.4")))])
        out = netecho_lookup("a", "www.example", "--server", f"127.0.0.1:{port}",
                             "--timeout", "0.5", "--retries", "0")
        self.assertEqual(
            (out.returncode, out.stdout, out.stderr),
            (100, "", f"lookup www.example on 127.0.0.1:{port}: timed out (1 try of 0.5s)\n"),
        )


class EndingTests(TestCase):
    """
    Review of issue 18, items 3, 4 and 5: the real command whose stdout's
    reader goes away, which Ctrl-C stops in the middle of a --file run, and
    which meets a name it cannot ask among others: no traceback, a defined
    exit status.
    """

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "netecho", "lookup", *args]

    def names_file(self, names) -> str:
        fd, path = tempfile.mkstemp(suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(names) + "\n")
        self.addCleanup(os.remove, path)
        return path

    def assert_quiet(self, stderr: str) -> None:
        for word in ("Traceback", "Exception ignored", "Error"):
            self.assertNotIn(word, stderr)

    def test_bulk_into_a_pipe_closed_early(self):
        # 20 addresses an answer: ~300 bytes a line, 1000 lines, far more than a pipe holds.
        port = thread_server(self, lambda q: [reply_to(q, a_records(q, *(f"192.0.2.{i}" for i in range(20))))])
        path = self.names_file(f"h{i}.example" for i in range(1000))
        proc = subprocess.Popen(self.command("a", "--file", path, "--server", f"127.0.0.1:{port}",
                                             "--timeout", "5"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
        try:
            first = proc.stdout.readline()
            proc.stdout.close()  # as `| head -1` does
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertTrue(first.startswith(b"h0.example 192.0.2.0 "), first)
        self.assert_quiet(err.decode())
        self.assertEqual(err, b"")
        self.assertEqual(proc.returncode, 141)

    def test_single_lookup_into_a_closed_pipe(self):
        port = thread_server(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        read, write = os.pipe()
        os.close(read)  # nobody will read
        try:
            proc = subprocess.run(self.command("a", "www.example", "--server", f"127.0.0.1:{port}"),
                                  stdout=write, stderr=subprocess.PIPE, timeout=30, cwd=tempfile.gettempdir())
        finally:
            os.close(write)
        self.assert_quiet(proc.stderr.decode())
        self.assertEqual((proc.returncode, proc.stderr), (141, b""))

    def test_ctrl_c_during_a_stalled_file_run(self):
        port = thread_server(self, lambda q: [])  # reads every query, answers none
        # More names than lookups at once: some are still to start when Ctrl-C comes.
        path = self.names_file(f"h{i}.example" for i in range(200))
        proc = subprocess.Popen(self.command("a", "--file", path, "--server", f"127.0.0.1:{port}",
                                             "--timeout", "30", "--retries", "0", "--concurrency", "50"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
        try:
            deadline = time.monotonic() + 20
            while self.received < 50 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            self.assertEqual(self.received, 50)  # every lookup is waiting for its answer
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assert_quiet(err.decode())
        self.assertEqual((proc.returncode, out, err), (130, b"", b"\n"))

    def test_scoped_address_and_non_utf8_name_are_one_failed_line_each(self):
        def behave(q):
            name = q.queries[0].name.name
            if q.queries[0].type == dns.PTR:
                return [reply_to(q, [dns.RRHeader(name, dns.PTR, dns.IN, 60, dns.Record_PTR(b"host.example"))])]
            return [reply_to(q, rcode=dns.ENAME)]
        port = thread_server(self, behave)
        server = f"127.0.0.1:{port}"
        env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
        run = dict(capture_output=True, timeout=30, cwd=tempfile.gettempdir(), env=env)
        out = subprocess.run(self.command("ip", "--file", "-", "--server", server, "--concurrency", "1"),
                             input=b"192.0.2.1\nfe80::1%eth0\n2001:db8::1\n", **run)
        self.assertEqual(out.returncode, 100)
        self.assertEqual(out.stderr, b"1 of 3 lookups failed\n")
        self.assertEqual(out.stdout.decode().splitlines(), [
            "192.0.2.1 host.example.",
            "fe80::1%eth0 error: lookup fe80::1%eth0: a scoped address has no reverse name (without %eth0: fe80::1)",
            "2001:db8::1 host.example.",
        ])
        out = subprocess.run(self.command("ip", "fe80::1%eth0", "--server", server), **run)
        self.assertEqual((out.returncode, out.stdout), (100, b""))
        self.assertEqual(out.stderr, b"lookup fe80::1%eth0: a scoped address has no reverse name "
                                     b"(without %eth0: fe80::1)\n")
        out = subprocess.run(self.command("a", "--file", "-", "--server", server, "--concurrency", "1"),
                             input=b"caf\xe9.example\nnx.example\n", **run)
        self.assert_quiet(out.stderr.decode())
        self.assertEqual((out.returncode, out.stderr), (100, b"2 of 2 lookups failed\n"))
        self.assertEqual(out.stdout.decode().splitlines(), [
            "caf\\udce9.example error: lookup caf\\udce9.example: not a valid internationalised name",
            "nx.example error: lookup nx.example: no such host",
        ])
