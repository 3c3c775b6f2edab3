"""PB on the real daemon, through the real ``netecho rpc`` client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

from twisted.cred import credentials
from twisted.internet import defer, reactor, task, threads
from twisted.names import dns
from twisted.spread import pb
from twisted.trial.unittest import TestCase

from tests.integration.clients import free_port, netecho
from tests.integration.harness import Daemon
from tests.integration.test_daemon import summary_fields
from tests.test_lookup import FakeServer, a_records, reply_to
from tests.test_rpc import NEVER_FINISHED, b128, b_int, b_list, b_str, deep_list, raw_call, tuple_of


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


# --- issue 13: what an anonymous client, a guesser, a slow client can still do ----------


async def pb_login(port: int, creds=None, testcase=None) -> pb.RemoteReference:
    """An in-process PB login to the daemon on 127.0.0.1:C{port} (disconnected at cleanup)."""
    factory = pb.PBClientFactory()
    reactor.connectTCP("127.0.0.1", port, factory)
    if testcase is not None:
        testcase.addCleanup(factory.disconnect)
    return await factory.login(creds or credentials.Anonymous())


def disconnected(avatar: pb.RemoteReference) -> defer.Deferred:
    d = defer.Deferred()
    if avatar.broker.disconnected:
        d.callback(None)
    else:
        avatar.broker.notifyOnDisconnect(lambda: d.callback(None))
    return d


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# Measures UDP echo round trips for DURATION seconds, one probe every 10 ms;
# a probe without an answer within 1 s counts as 1 s. Prints JSON.
UDP_PROBE = r"""
import json, socket, sys, time
port, duration = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect(("127.0.0.1", port))
rtts, lost, i = [], 0, 0
end = time.monotonic() + duration
while time.monotonic() < end:
    i += 1
    payload = b"probe %d" % i
    start = time.monotonic()
    s.send(payload)
    try:
        while s.recv(2048) != payload:
            pass
        rtts.append(time.monotonic() - start)
    except OSError:
        lost += 1
        rtts.append(1.0)
    time.sleep(0.01)
rtts.sort()
print(json.dumps({"n": len(rtts), "lost": lost, "p99_ms": 1000 * rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]}))
"""


class HardeningTests(TestCase):
    """Issue 13, items 1, 2 and 4, against the real daemon."""

    def setUp(self):
        self.daemon = Daemon(self, "--pb", "0", "--tcp", "0", "--udp", "0", "--pb-users", users_file()).start()
        self.pb_port = self.daemon.port("--pb 0")

    def echo_works(self) -> None:
        with socket.create_connection(("127.0.0.1", self.daemon.port("--tcp 0")), timeout=5) as c:
            c.sendall(b"still\n")
            self.assertEqual(c.recv(10), b"still\n")

    async def stats(self) -> dict:
        avatar = await pb_login(self.pb_port, testcase=self)
        return await avatar.callRemote("stats")

    async def test_mistakes_one_sentence_one_log_line(self):
        """Item 1: no tracebacks, one sentence each, the connection stays, the log stays short."""
        before = len(self.daemon.lines)
        avatar = await pb_login(self.pb_port, testcase=self)
        errors = []
        for call in ([avatar.callRemote("frob") for _ in range(300)]
                     + [avatar.callRemote("add", 1, 2, True) for _ in range(20)]
                     + [avatar.callRemote("add", 1, 2, True, False, extra=1) for _ in range(20)]
                     + [raw_call(avatar, b"add", tuple_of(b_int(1), deep_list(900), b_int(0), b_int(0)))
                        for _ in range(20)]):
            try:
                await call
            except pb.RemoteError as e:
                errors.append(str(e))
        self.assertEqual(errors, ["no such method: frob"] * 300
                         + ["add takes 4 arguments (a1, a2, s1, s2), got 3"] * 20
                         + ["add takes no keyword arguments"] * 20
                         + ["arguments nested too deeply"] * 20)
        self.assertEqual(await avatar.callRemote("add", 17, 18, True, False), 1)
        # Twisted's own line for a client choosing a dialect the server did not offer.
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", self.pb_port), timeout=5) as s:
                s.sendall(b_str(b"xx"))
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
        self.assertEqual(await avatar.callRemote("echo", "ok"), "ok")
        await task.deferLater(reactor, 0.3, lambda: None)
        lines = self.daemon.lines[before:]
        refused = [line for line in lines if "call refused" in line]
        # One per reason (add's own check of its arguments logs nothing).
        self.assertEqual(len(refused), 3, refused)
        self.assertEqual(len([line for line in lines if "dialect" in line]), 1)
        text = "\n".join(lines)
        self.assertNotIn("Traceback", text)
        self.assertNotIn("didn't suggest", text)
        self.assertLess(len(lines), 130)  # the 101 connections' close lines, and those above

    async def test_unfinished_messages_bounded(self):
        """
        Item 2: 10 logged-in connections each holding a 1,040,000-byte
        unfinished message, trickled in 1 KiB writes: a UDP echo's p99
        stays under 50 ms, the daemon grows by under 20 MiB, and every such
        connection is gone within the message timeout.
        """
        avatars = [await pb_login(self.pb_port, testcase=self) for _ in range(10)]
        gone = [disconnected(a) for a in avatars]
        before = self.daemon.rss_kib()
        # Banana's two worst cases, five connections each: long strings
        # (re-copied on every read) and small items (each a Python object,
        # and the rest of the buffer copied after each).
        strings = b_list(3) + b_str(b"message") + b128(640_000) + b"\x82" + b"x" * 640_000 + b128(600_000) + b"\x82"
        strings += b"y" * (1_040_000 - len(strings))
        items = b_list(3) + b_list(600_000) + b"\x81" * 600_000 + b_list(600_000)
        items += b"\x81" * (1_040_000 - len(items))
        messages = [strings] * 5 + [items] * 5
        probe = subprocess.Popen([sys.executable, "-c", UDP_PROBE, str(self.daemon.port("--udp 0")), "5"],
                                 stdout=subprocess.PIPE, text=True)
        self.addCleanup(probe.kill)
        await task.deferLater(reactor, 0.3, lambda: None)
        grown = 0
        for offset in range(0, 1_040_000, 1024):
            for avatar, message in zip(avatars, messages):
                avatar.broker.transport.write(message[offset:offset + 1024])
            if offset % (64 * 1024) == 0:
                await task.deferLater(reactor, 0.001, lambda: None)
                grown = max(grown, self.daemon.rss_kib() - before)
            else:
                await task.deferLater(reactor, 0, lambda: None)
        await task.deferLater(reactor, 0.5, lambda: None)
        grown = max(grown, self.daemon.rss_kib() - before)
        out, _ = await threads.deferToThread(probe.communicate, timeout=30)
        result = json.loads(out)
        self.assertLess(result["p99_ms"], 50, result)
        self.assertLess(grown, 20 * 1024, f"RSS grew by {grown} KiB")
        # Past 4 MiB in all, the oldest unfinished message's connection went;
        # the rest go when their messages are 10 s old.
        start = reactor.seconds()
        await defer.gatherResults(gone).addTimeout(20, reactor)
        self.assertLess(reactor.seconds() - start, 15)
        self.echo_works()
        dropped = (await self.stats())["dropped"]
        self.assertGreater(dropped.get("pb_message_too_large", 0), 0, dropped)  # the items
        self.assertGreater(dropped.get("pb_too_many_unfinished_bytes", 0), 0, dropped)
        self.assertGreater(dropped.get("pb_message_not_finished_in_time", 0), 0, dropped)
        self.assertNotIn("Traceback", self.daemon.log_text())

    async def guess_until(self, stop: list, checked: list | None = None) -> None:
        """
        Log in as admin with a wrong password on one connection until
        C{stop} is set or the server drops it; the times of the guesses the
        server checked go into C{checked} (a refused one waits a little).
        """
        wrong = credentials.UsernamePassword(b"admin", b"guess")
        factory = pb.PBClientFactory()
        reactor.connectTCP("127.0.0.1", self.pb_port, factory)
        self.addCleanup(factory.disconnect)
        while not stop:
            try:
                await factory.login(wrong)
            except pb.RemoteError as e:
                if "wrong user name or password" in str(e):
                    if checked is not None:
                        checked.append(reactor.seconds())
                elif checked is not None:
                    await task.deferLater(reactor, 0.02, lambda: None)
            except pb.PBConnectionLost:
                return  # its login time is up

    async def test_admin_gets_in_while_another_guesses(self):
        """Item 4: guessers on 127.0.0.1 do not lock the admin (also on 127.0.0.1) out."""
        stop = []
        guessers = [defer.ensureDeferred(self.guess_until(stop)) for _ in range(3)]
        await task.deferLater(reactor, 0.5, lambda: None)
        for _ in range(4):
            admin = await pb_login(self.pb_port, credentials.UsernamePassword(b"admin", b"s3cret"), self)
            self.assertEqual(await admin.callRemote("add", 1, 1, False, False), 2)
            await task.deferLater(reactor, 0.5, lambda: None)
        stop.append(True)
        await defer.gatherResults(guessers)
        self.assertGreaterEqual((await self.stats())["dropped"]["pb_failed_login"], 6)

    async def test_guessing_stays_slow(self):
        """Item 4: at most 10 guesses a second from one address, however many connections."""
        stop = []
        checked = []
        start = reactor.seconds()
        guessers = [defer.ensureDeferred(self.guess_until(stop, checked)) for _ in range(30)]
        await task.deferLater(reactor, 3, lambda: None)
        stop.append(True)
        elapsed = reactor.seconds() - start
        await defer.gatherResults(guessers)
        # N slots each held 1 s per guess: N a second, plus the first N.
        self.assertLessEqual(len(checked), 10 * elapsed + 10, (len(checked), elapsed))
        failed = (await self.stats())["dropped"]["pb_failed_login"]
        self.assertLessEqual(failed, 10 * (reactor.seconds() - start) + 10)
        self.assertGreater(failed, 0)


class PatchedResolverDaemon(Daemon):
    """
    The daemon with its system resolver (resolv.conf's servers) pointed at
    a fake server on 127.0.0.1, so lookup() calls never leave the host.
    """

    def __init__(self, testcase, dns_port: int, *args: str) -> None:
        super().__init__(testcase, *args)
        self.dns_port = dns_port

    def command(self) -> list[str]:
        code = (
            "import sys, netecho.dns.api as lookup; "
            f"lookup.system_servers = lambda *a, **k: [('127.0.0.1', {self.dns_port})]; "
            "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        )
        return [sys.executable, "-c", code, "--nodaemon", "--pidfile=", "netecho", *self.args]


class LookupBoundsTests(TestCase):
    """Item 3: lookup() calls cannot exhaust the daemon's descriptors."""

    def setUp(self):
        self.sources = set()
        self.held: list[tuple[dns.Message, tuple]] = []

        def behave(query):
            # Silent until told: the lookups stay in flight.
            return []

        self.fake = FakeServer(behave)
        original = self.fake.datagramReceived

        def received(data, addr):
            self.sources.add(addr)
            original(data, addr)
            self.held.append((self.fake.queries[-1], addr))

        self.fake.datagramReceived = received
        port = reactor.listenUDP(0, self.fake, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.daemon = PatchedResolverDaemon(self, port.getHost().port, "--pb", "0", "--tcp", "0").start()
        self.pb_port = self.daemon.port("--pb 0")

    async def test_lookups_bounded_and_sharing_one_socket(self):
        fds_before = fd_count(self.daemon.pid)
        avatar = await pb_login(self.pb_port, testcase=self)
        calls = [avatar.callRemote("lookup", f"n{i}.example", "A") for i in range(2000)]
        refused = []
        for call in calls:
            call.addErrback(lambda f: refused.append(str(f.value)) or f)
        # The excess is refused at once, while the first ten wait for the server.
        await avatar.callRemote("echo", "barrier")
        self.assertEqual(len(refused), 1990)
        self.assertEqual(set(refused), {
            "too many lookups in progress on this connection (at most 10); wait for one to finish"})
        # 12 more connections, 10 each: past 100 in all (10 + 120), the server refuses 30.
        others = [await pb_login(self.pb_port, testcase=self) for _ in range(12)]
        more = [other.callRemote("lookup", f"m{i}.example", "A") for other in others for i in range(10)]
        more_refused = []
        for call in more:
            call.addErrback(lambda f: more_refused.append(str(f.value)) or f)
        for other in others:
            await other.callRemote("echo", "barrier")
        self.assertEqual(len(more_refused), 30)
        self.assertEqual(set(more_refused), {
            "too many lookups in progress on the server (at most 100); try again in a moment"})
        while len(self.held) < 100:
            await task.deferLater(reactor, 0.05, lambda: None)
        # One socket for all of them: one source port, a handful of descriptors.
        self.assertEqual(len(self.sources), 1, self.sources)
        self.assertLess(fd_count(self.daemon.pid) - fds_before, 20)
        with socket.create_connection(("127.0.0.1", self.daemon.port("--tcp 0")), timeout=5) as c:
            c.sendall(b"still\n")
            self.assertEqual(c.recv(10), b"still\n")
        # The server answers: every lookup in flight completes.
        for query, addr in self.held:
            self.fake.transport.write(reply_to(query, a_records(query, "192.0.2.1")), addr)
        answered = [d for d in calls + more if not d.called]
        results = await defer.gatherResults(answered)
        self.assertEqual(len(results), 100)
        self.assertEqual({r[0]["data"] for r in results}, {"192.0.2.1"})
        for d in calls + more:
            d.addErrback(lambda f: None)
        counters = await avatar.callRemote("stats")
        self.assertEqual(counters["lookups"], {"ok": 100})
        self.assertEqual(counters["dropped"]["pb_too_many_lookups_on_one_connection"], 1990)
        self.assertEqual(counters["dropped"]["pb_too_many_lookups"], 30)
