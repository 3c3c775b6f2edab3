"""The PB service over real loopback connections, in-process."""

from __future__ import annotations

import os
import tempfile

from twisted.cred import credentials
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.spread import pb
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho import rpc
from netecho.limits import TokenBuckets
from netecho.stats import Stats


class MyIntsTests(SynchronousTestCase):
    def test_valid(self):
        self.assertEqual(rpc.myints((17, 18, True, False)), (17, 18, True, False))
        self.assertEqual(rpc.myints((10**40, 0, False, False))[0], 10**40)

    def test_invalid(self):
        cases = [  # a list: (True, ...) and (1, ...) are equal dict keys
            ((1, 2, True), "takes 4 arguments (a1, a2, s1, s2), got 3"),
            ((-1, 2, True, False), "a1 must be a non-negative integer, got -1"),
            ((1, 2.5, True, False), "a2 must be a non-negative integer, got 2.5"),
            ((True, 2, True, False), "a1 must be a non-negative integer, got True"),
            ((1, "2", True, False), "a2 must be a non-negative integer, got '2'"),
            ((1, 2, 1, False), "s1 must be true or false, got 1"),
            ((1, 2, True, None), "s2 must be true or false, got None"),
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


class TokenBucketTests(SynchronousTestCase):
    def test_burst_refill_and_bound(self):
        clock = task.Clock()
        buckets = TokenBuckets(rate=1, burst=2, size=3, clock=clock.seconds)
        self.assertEqual([buckets.take("a") for _ in range(3)], [True, True, False])
        self.assertFalse(buckets.allowed("a"))
        clock.advance(1)
        self.assertTrue(buckets.take("a"))
        for key in "bcde":
            buckets.take(key)
        self.assertEqual(len(buckets._table), 3)


# Banana: a list announcing 1000 items (digits base 128, low first; 0x80 LIST),
# then 100 KiB strings (0x82 STRING), and never the rest: 1.5 MiB of one message.
NEVER_FINISHED = bytes([0x68, 0x07, 0x80]) + (bytes([0x00, 0x20, 0x06, 0x82]) + b"x" * 102400) * 15


class Raw(protocol.Protocol):
    """A client that sends whatever it is told and notices the close."""

    def __init__(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)


class PBServiceTests(TestCase):
    def setUp(self):
        self.stats = Stats()
        self.stops = []
        self.service = rpc.RPCService(
            reactor, self.stats, self.stops.append, users={b"admin": b"secret"}, login_timeout=0.5
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
            self.assertIn("must be" if len(args) == 4 else "takes 4 arguments", str(cm.exception))
        self.assertEqual(await avatar.callRemote("add", 1, 1, False, False), 2)

    async def test_echo_and_stats(self):
        avatar = await self.login()
        self.assertEqual(await avatar.callRemote("echo", "héllo"), "héllo")
        self.assertEqual(await avatar.callRemote("echo", b"\x00\xff"), b"\x00\xff")
        stats = await avatar.callRemote("stats")
        self.assertEqual(stats["pb"], 1)
        self.assertEqual(stats["rpc_calls_by_method"], {"echo": 2, "stats": 1})

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

    async def test_wrong_password_then_throttled(self):
        for _ in range(5):
            with self.assertRaises(Exception) as cm:
                await self.login(credentials.UsernamePassword(b"admin", b"wrong"))
            self.assertIn(b"UnauthorizedLogin", cm.exception.remoteType)
        with self.assertRaises(Exception) as cm:
            await self.login(credentials.UsernamePassword(b"admin", b"secret"))
        self.assertIn("too many failed logins", str(cm.exception))
        self.assertEqual(self.stats.dropped["pb_failed_login"], 5)

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

    async def test_never_finished_message_after_login(self):
        avatar = await self.login()
        (server,) = self.server_protos
        self.assertTrue(server.authenticated)
        closed = defer.Deferred()
        server.notifyOnDisconnect(lambda: closed.callback(None))
        avatar.broker.transport.write(NEVER_FINISHED)
        await closed
        self.assertEqual(self.stats.dropped, {"pb_message_too_large": 1})

    async def test_100_concurrent_clients(self):
        async def one(i):
            avatar = await self.login()
            return await avatar.callRemote("add", i, 1, False, False)

        results = await defer.gatherResults([defer.ensureDeferred(one(i)) for i in range(100)])
        self.assertEqual(results, [i + 1 for i in range(100)])
        self.assertEqual(self.stats.pb, 100)
