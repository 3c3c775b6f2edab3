"""The PB service over real loopback connections, in-process."""

from __future__ import annotations

import os
import tempfile

from twisted.cred import credentials
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.spread import pb
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho import rpc
from netecho.stats import Stats


class MyIntsTests(SynchronousTestCase):
    def test_valid(self):
        self.assertEqual(rpc.myints((17, 18, True, False)), (17, 18, True, False))
        self.assertEqual(rpc.myints((10**40, 0, False, False))[0], 10**40)

    def test_invalid(self):
        cases = [  # a list: (True, ...) and (1, ...) are equal dict keys
            ((1, 2, True), "add takes 4 arguments (a1, a2, s1, s2), got 3"),
            ((-1, 2, True, False), "a1 must be a non-negative integer, got -1"),
            ((1, 2.5, True, False), "a2 must be a non-negative integer, got 2.5"),
            ((True, 2, True, False), "a1 must be a non-negative integer, got True"),
            ((1, "2", True, False), "a2 must be a non-negative integer, got '2'"),
            ((1, 2, 1, False), "s1 must be true or false, got 1"),
            ((1, 2, True, None), "s2 must be true or false, got None"),
            ((1, [[[[[1]]]]] * 100, True, False), "a2 must be a non-negative integer, got [[[...]], [[...]], [[...]], [[...]], [[...]], [[...]], ...]"),
        ]
        for args, message in cases:
            e = self.assertRaises(pb.Error, rpc.myints, args)
            self.assertEqual(str(e), message)


class UsersFileTests(SynchronousTestCase):
    def write(self, text: bytes, mode=0o600) -> str:
        fd, path = tempfile.mkstemp()
        os.write(fd, text)
        os.close(fd)
        os.chmod(path, mode)
        self.addCleanup(os.unlink, path)
        return path

    def test_load(self):
        path = self.write(b"# admins\nalice:s3cret:with:colons\n\n  bob:pw  \n")
        self.assertEqual(rpc.load_users(path), {b"alice": b"s3cret:with:colons", b"bob": b"pw"})
        self.assertFalse(rpc.readable_by_others(path))
        os.chmod(path, 0o644)
        self.assertTrue(rpc.readable_by_others(path))

    def test_errors(self):
        for text, message in [
            (b"alice\n", ":1: expected user:password"),
            (b"ok:1\n:nopass\n", ":2: expected user:password"),
            (b"a:1\na:2\n", ":2: user 'a' given twice"),
            (b"# nothing\n", ": no user:password lines"),
        ]:
            path = self.write(text)
            e = self.assertRaises(rpc.UsersFileError, rpc.load_users, path)
            self.assertEqual(str(e), path + message)
        e = self.assertRaises(rpc.UsersFileError, rpc.load_users, "/nonexistent/users")
        self.assertEqual(str(e), "/nonexistent/users: no such file or directory")


class ArityTests(SynchronousTestCase):
    def test_described_from_the_signature(self):
        class Target:
            def one(self, a): pass
            def two_or_three(self, a, b, c=None): pass
            def many(self, *args): pass
            def none(self): pass

        t = Target()
        self.assertEqual([rpc._arity(m) for m in (t.one, t.two_or_three, t.many, t.none)],
                         [(1, 1), (2, 3), None, (0, 0)])


# --- Banana by hand: what a client that does not play by PB's rules sends -----------


def b128(n: int) -> bytes:
    """Banana's base-128 digits, lowest first."""
    out = bytearray()
    while n:
        out.append(n & 0x7F)
        n >>= 7
    return bytes(out)


def b_list(n: int) -> bytes:
    return b128(n) + b"\x80"


def b_int(n: int) -> bytes:
    return b128(n) + b"\x81"


def b_str(s: bytes) -> bytes:
    return b128(len(s)) + b"\x82" + s


def deep_list(depth: int) -> bytes:
    """The jelly of a list nested C{depth} deep ([[[...]]]), as Banana sends it."""
    return (b_list(2) + b_str(b"list")) * (depth - 1) + b_list(1) + b_str(b"list")


def call_bytes(request: int, luid: int, method: bytes, args: bytes, kw: bytes = b_list(1) + b_str(b"dictionary")) -> bytes:
    """A PB message calling C{method} on object C{luid}; C{args} is the jelly of a tuple's items."""
    return (b_list(7) + b_str(b"message") + b_int(request) + b_int(luid) + b_str(method) + b_int(1)
            + args + kw)


def tuple_of(*items: bytes) -> bytes:
    return b_list(1 + len(items)) + b_str(b"tuple") + b"".join(items)


def raw_call(avatar: pb.RemoteReference, method: bytes, args: bytes, **kw) -> defer.Deferred:
    """Send a call built by hand on C{avatar}'s connection; its answer as a Deferred."""
    broker = avatar.broker
    request = broker.newRequestID()
    d = defer.Deferred()
    broker.waitingForAnswers[request] = d
    broker.transport.write(call_bytes(request, avatar.luid, method, args, **kw))
    return d


# Banana: a list announcing 1000 items (digits base 128, low first; 0x80 LIST),
# then 100 KiB strings (0x82 STRING), and never the rest: 1.5 MiB of one message.
NEVER_FINISHED = bytes([0x68, 0x07, 0x80]) + (bytes([0x00, 0x20, 0x06, 0x82]) + b"x" * 102400) * 15


class Raw(protocol.Protocol):
    """A client that sends whatever it is told and notices the close."""

    def __init__(self):
        self.closed = defer.Deferred()
        self.received = b""

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(None)


class Warnings:
    """netecho.rpc's log lines while a test runs."""

    def __init__(self, testcase):
        from twisted.logger import globalLogPublisher

        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, namespace="netecho.rpc"):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_namespace") == namespace]

    def tracebacks(self):
        return [e for e in self.events if "log_failure" in e or e.get("isError")]


class PBServiceTests(TestCase):
    def setUp(self):
        self.stats = Stats()
        self.stops = []
        self.service = rpc.RPCService(
            reactor, self.stats, self.stops.append, users={b"admin": b"secret"}, login_timeout=0.5,
            failed_login_delay=0.2, message_timeout=5.0,
        )
        self.factory = self.service.factory()
        self.server_protos = []
        build = self.factory.buildProtocol

        def tracking(addr):
            p = build(addr)  # the shared policy (netecho.policies.Session) around the broker
            self.server_protos.append(p.wrappedProtocol)
            return p

        self.factory.buildProtocol = tracking
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self._close_servers)

    def _close_servers(self):
        waits = []
        for p in self.server_protos:
            if not p.disconnected:
                d = defer.Deferred()
                p.notifyOnDisconnect(lambda d=d: d.callback(None))
                p.transport.abortConnection()
                waits.append(d)
        return defer.gatherResults(waits)

    async def login(self, creds=None):
        factory = pb.PBClientFactory()
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, factory)
        self.addCleanup(factory.disconnect)
        return await factory.login(creds or credentials.Anonymous())

    async def closed(self, server) -> None:
        if server.disconnected:
            return
        d = defer.Deferred()
        server.notifyOnDisconnect(lambda: d.callback(None))
        await d

    async def test_classic_demo(self):
        avatar = await self.login()
        self.assertEqual(await avatar.callRemote("add", 17, 18, True, False), 1)
        self.assertEqual(await avatar.callRemote("subtract", 17, 18, True, False), -35)
        self.assertEqual(await avatar.callRemote("add", 10**30, 1, False, True), 10**30 - 1)
        self.assertEqual(self.stats.rpc_by_method, {"add": 2, "subtract": 1})
        self.assertEqual((self.stats.pb, self.stats.rpc_calls), (1, 3))

    async def test_bad_arguments_keep_the_connection(self):
        avatar = await self.login()
        for args in [(1, 2, True), (-1, 2, True, False), (1, "x", True, False), (1, 2, 3, 4)]:
            with self.assertRaises(pb.RemoteError) as cm:
                await avatar.callRemote("add", *args)
            self.assertIn("must be" if len(args) == 4 else "add takes 4 arguments", str(cm.exception))
        self.assertEqual(await avatar.callRemote("add", 1, 1, False, False), 2)

    async def remote_error(self, d) -> str:
        with self.assertRaises(pb.RemoteError) as cm:
            await d
        return str(cm.exception)

    async def test_mistakes_get_one_sentence_and_no_traceback(self):
        """Issue 13, item 1: unknown methods, wrong arity, keywords, deep nesting."""
        warnings = Warnings(self)
        avatar = await self.login()
        for _ in range(50):
            self.assertEqual(await self.remote_error(avatar.callRemote("frob")), "no such method: frob")
        self.assertEqual(await self.remote_error(avatar.callRemote("add", 1, 2, True)),
                         "add takes 4 arguments (a1, a2, s1, s2), got 3")
        self.assertEqual(await self.remote_error(avatar.callRemote("stats", 1)), "stats takes no arguments, got 1")
        self.assertEqual(await self.remote_error(avatar.callRemote("add", 1, 2, True, False, x=1)),
                         "add takes no keyword arguments")
        for _ in range(5):
            answer = raw_call(avatar, b"add", tuple_of(b_int(1), deep_list(900), b_int(0), b_int(0)))
            self.assertEqual(await self.remote_error(answer), "arguments nested too deeply")
        answer = raw_call(avatar, b"add", tuple_of(b_list(2) + b_str(b"module") + b_str(b"os")))
        self.assertEqual(await self.remote_error(answer), "add: arguments not understood")
        self.assertEqual(await avatar.callRemote("add", 1, 1, False, False), 2)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(warnings.tracebacks(), [])
        lines = warnings.lines()
        self.assertEqual(len(lines), 5, lines)  # one per reason
        self.assertIn("call refused: no such method: frob", lines[0])
        self.assertEqual(self.stats.rpc_outcomes[("unknown", "error")], 50)

    async def test_mistakes_on_the_login_object(self):
        """The root object (login) answers mistakes the same way, before any login."""
        warnings = Warnings(self)
        factory = pb.PBClientFactory()
        reactor.connectTCP("127.0.0.1", self.port.getHost().port, factory)
        self.addCleanup(factory.disconnect)
        root = await factory.getRootObject()
        self.assertEqual(await self.remote_error(root.callRemote("frob")), "no such method: frob")
        self.assertEqual(await self.remote_error(root.callRemote("login")), "login takes 1 argument, got 0")
        self.assertEqual(await self.remote_error(root.callRemote("login", [1])),
                         "login takes a user name (bytes)")
        avatar = await factory.login(credentials.Anonymous())
        self.assertEqual(await avatar.callRemote("add", 1, 1, False, False), 2)
        self.assertEqual(warnings.tracebacks(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_unknown_dialect_closes_quietly(self):
        """Twisted logs a line for every client choosing an unknown dialect; we log one."""
        warnings = Warnings(self)
        for _ in range(20):
            proto = await self.raw(b_str(b"xx"))
            await proto.closed
        self.assertEqual(self.stats.dropped, {"pb_unknown_Banana_dialect": 20})
        self.assertEqual(len(warnings.lines()), 1)
        self.assertEqual(warnings.lines("twisted.spread.banana"), [])
        self.assertEqual([line for e in warnings.events for line in [str(e.get("log_format"))]
                          if "didn't" in line], [])

    async def test_echo_and_stats(self):
        avatar = await self.login()
        self.assertEqual(await avatar.callRemote("echo", "héllo"), "héllo")
        self.assertEqual(await avatar.callRemote("echo", b"\x00\xff"), b"\x00\xff")
        stats = await avatar.callRemote("stats")
        self.assertEqual(stats["pb"], 1)
        self.assertEqual(stats["rpc_calls_by_method"], {"echo": 2, "stats": 1})

    async def test_long_strings_still_echo(self):
        """Strings near Banana's limit, arriving in many reads, are parsed once each."""
        avatar = await self.login()
        big = bytes(range(256)) * 2500  # 640,000 bytes
        self.assertEqual(await avatar.callRemote("echo", big), big)
        results = await defer.gatherResults([avatar.callRemote("echo", b"%d" % i * 1000) for i in range(50)])
        self.assertEqual(results, [b"%d" % i * 1000 for i in range(50)])
        self.assertEqual(self.service.unfinished, 0)

    async def test_anonymous_quit_refused(self):
        avatar = await self.login()
        with self.assertRaises(Exception) as cm:
            await avatar.callRemote("quit")
        self.assertIn("not authorized", str(cm.exception))
        self.assertEqual(self.stops, [])

    async def test_admin_quit_answers_then_stops(self):
        avatar = await self.login(credentials.UsernamePassword(b"admin", b"secret"))
        self.assertEqual(await avatar.callRemote("quit"), "stopping")
        self.assertEqual(self.stops, [])  # the reply came first
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.stops, ["quit by admin over RPC"])

    async def failed_login(self, password=b"wrong") -> str:
        with self.assertRaises(pb.RemoteError) as cm:
            await self.login(credentials.UsernamePassword(b"admin", password))
        self.assertIn(b"UnauthorizedLogin", cm.exception.remoteType)
        return str(cm.exception)

    async def test_failed_login_answered_late(self):
        start = reactor.seconds()
        self.assertEqual(await self.failed_login(), "wrong user name or password")
        self.assertGreaterEqual(reactor.seconds() - start, 0.2)
        self.assertEqual(self.stats.dropped["pb_failed_login"], 1)
        self.assertEqual(self.service.logins, {})

    async def test_logins_in_progress_capped_per_source(self):
        """Issue 13, item 4: a source has at most N password logins in progress."""
        self.service.logins_per_source = 3
        self.service.failed_login_delay = 0.4
        guesses = [defer.ensureDeferred(self.failed_login()) for _ in range(3)]
        await task.deferLater(reactor, 0.2, lambda: None)
        # Every slot is held by a guess waiting out its delay: refused without a check.
        self.assertEqual(await self.failed_login(b"secret"),
                         "too many logins in progress from your address; try again in a moment")
        self.assertEqual(await defer.gatherResults(guesses), ["wrong user name or password"] * 3)
        # The slots are free again: the right password gets in at once.
        start = reactor.seconds()
        avatar = await self.login(credentials.UsernamePassword(b"admin", b"secret"))
        self.assertLess(reactor.seconds() - start, 0.4)
        self.assertEqual(await avatar.callRemote("add", 1, 1, False, False), 2)
        self.assertEqual(self.stats.dropped["pb_failed_login"], 3)
        self.assertEqual(self.stats.dropped["pb_too_many_logins_in_progress"], 1)

    async def test_correct_login_while_another_guesses(self):
        """Issue 13, item 4: no shared bucket of failures keeps the admin out."""
        stop = []

        async def guesser():
            while not stop:
                await self.failed_login()

        guessing = defer.ensureDeferred(guesser())
        for _ in range(4):
            avatar = await self.login(credentials.UsernamePassword(b"admin", b"secret"))
            self.assertEqual(await avatar.callRemote("add", 1, 1, False, False), 2)
            await task.deferLater(reactor, 0.1, lambda: None)
        stop.append(True)
        await guessing
        self.assertGreaterEqual(self.stats.dropped["pb_failed_login"], 2)

    async def raw(self, data: bytes) -> Raw:
        proto = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port), Raw()
        )
        proto.transport.write(data)
        return proto

    async def test_garbage_closes_quietly(self):
        proto = await self.raw(bytes(range(256)) * 4)
        await proto.closed
        self.assertEqual(self.stats.dropped, {"pb_not_PB": 1})
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_silent_http_request_times_out(self):
        proto = await self.raw(b"GET / HTTP/1.0\r\n")
        await proto.closed
        self.assertEqual(self.stats.dropped, {"pb_no_login_in_time": 1})

    async def test_never_finished_message_before_login(self):
        proto = await self.raw(NEVER_FINISHED[:100_000])
        await proto.closed
        self.assertEqual(self.stats.dropped, {"pb_too_many_bytes_before_login": 1})

    async def logged_in_server(self):
        avatar = await self.login()
        server = self.server_protos[-1]
        self.assertTrue(server.authenticated)
        return avatar, server

    async def test_never_finished_message_after_login(self):
        avatar, server = await self.logged_in_server()
        avatar.broker.transport.write(NEVER_FINISHED)
        await self.closed(server)
        self.assertEqual(self.stats.dropped, {"pb_message_too_large": 1})
        self.assertEqual(self.service.unfinished, 0)

    async def test_too_many_items_in_one_message(self):
        """Small items cost more memory than bytes: a message has at most MESSAGE_ITEMS."""
        avatar, server = await self.logged_in_server()
        avatar.broker.transport.write(b_list(600_000) + b"\x80" * 100_000)  # empty lists
        await self.closed(server)
        self.assertEqual(self.stats.dropped, {"pb_message_too_large": 1})

    async def test_unfinished_message_times_out(self):
        """Issue 13, item 2: a message must be finished within the message timeout."""
        self.service.message_timeout = 0.3
        avatar, server = await self.logged_in_server()
        start = reactor.seconds()
        avatar.broker.transport.write(b_list(3) + b_str(b"message") + b128(1000) + b"\x82" + b"x" * 10)
        await self.closed(server)
        self.assertTrue(0.25 <= reactor.seconds() - start < 3)
        self.assertEqual(self.stats.dropped, {"pb_message_not_finished_in_time": 1})

    async def test_finished_messages_restart_the_timer(self):
        self.service.message_timeout = 0.3
        avatar, server = await self.logged_in_server()
        for i in range(8):  # 0.8 s in all, each message well within the timeout
            d = avatar.callRemote("echo", b"x" * 100)
            # Each message arrives in two halves, 0.1 s apart.
            await task.deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(await d, b"x" * 100)
        self.assertFalse(server.disconnected)

    async def test_unfinished_bytes_bounded_in_all(self):
        """Issue 13, item 2: past the total, the longest-unfinished message's connection goes."""
        self.service.unfinished_limit = 500_000
        held = []
        for _ in range(3):
            avatar, server = await self.logged_in_server()
            avatar.broker.transport.write(b_list(3) + b_str(b"message") + b128(600_000) + b"\x82" + b"x" * 200_000)
            held.append(server)
            while server.unfinished < 200_000 and not server.disconnected:
                await task.deferLater(reactor, 0.01, lambda: None)
        await self.closed(held[0])
        self.assertFalse(held[1].disconnected or held[2].disconnected)
        self.assertEqual(self.stats.dropped, {"pb_too_many_unfinished_bytes": 1})
        self.assertLessEqual(self.service.unfinished, 500_000)

    async def test_100_concurrent_clients(self):
        async def one(i):
            avatar = await self.login()
            return await avatar.callRemote("add", i, 1, False, False)

        results = await defer.gatherResults([defer.ensureDeferred(one(i)) for i in range(100)])
        self.assertEqual(results, [i + 1 for i in range(100)])
        self.assertEqual(self.stats.pb, 100)


class ParsingCostTests(SynchronousTestCase):
    """The broker's feeding of Banana, driven in memory."""

    def broker(self, **kw):
        from twisted.internet.testing import StringTransport

        clock = task.Clock()
        service = rpc.RPCService(clock, Stats(), lambda why: None, **kw)
        broker = service.factory().buildProtocol(None)
        transport = StringTransport()
        broker.makeConnection(transport)
        broker.wrappedProtocol.logged_in()
        return clock, service, broker.wrappedProtocol, transport

    def test_a_trickled_string_is_given_to_banana_once(self):
        clock, service, broker, transport = self.broker()
        feeds = []
        original = rpc.pb.Broker.dataReceived

        def counting(self, piece):
            feeds.append(len(piece))
            return original(self, piece)

        self.patch(rpc.pb.Broker, "dataReceived", counting)
        message = b_list(3) + b_str(b"message") + b_str(b"y" * 600_000)
        broker.dataReceived(message[:20])
        for i in range(20, len(message) - 1, 100):  # 100 bytes a read
            broker.dataReceived(message[i:i + 100])
        # Banana saw the header and then the rest of the string in one piece.
        self.assertLessEqual(len(feeds), 3)
        self.assertEqual(service.unfinished, broker.unfinished)
        self.assertGreater(service.unfinished, 590_000)

    def test_parsing_yields_the_reactor(self):
        clock, service, broker, transport = self.broker()
        # 60,000 small items in one read: far more than one turn's budget.
        broker.dataReceived(b_list(1_000) + b_int(1) * 999)
        broker.dataReceived(b_list(60_000) + b_int(1) * 60_000)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(clock.getDelayedCalls()), 2)  # the message timer and the next turn
        for _ in range(1000):
            if broker.disconnected or broker._closed:
                break
            clock.advance(0)
        self.assertEqual(service.stats.dropped, {"pb_message_too_large": 1})
