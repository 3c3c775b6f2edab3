"""
The Perspective Broker service: a cred Portal whose avatars offer the classic
add/subtract and our own calls, and a Broker that bounds what an
unauthenticated or misbehaving peer can cost.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any, Callable

from twisted.cred import checkers, error as cred_error, portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from netecho import lookup
from netecho.address import describe, unmap
from netecho.errors import UserError
from netecho.limits import Guard, TokenBuckets
from netecho.policies import Served
from netecho.stats import Stats
from netecho.throttle import ThrottledLog

log = Logger()

#: Bytes a connection may send before it has logged in (a login is ~200).
PRELOGIN_BYTES = 16 * 1024
#: Seconds a connection has to log in.
LOGIN_TIMEOUT = 5.0
#: Bytes of one unfinished PB message (Banana's own SIZE_LIMIT is 640 KiB a string).
MESSAGE_BYTES = 1024 * 1024


class UnauthorizedLogin(pb.Error, cred_error.UnauthorizedLogin):
    """
    A refused login. Being a L{pb.Error}, PB sends it to the client without
    logging a traceback for every wrong password.
    """


class UsersFileError(Exception):
    """The --pb-users file is missing or malformed; the message says which line."""


def load_users(path: str) -> dict[bytes, bytes]:
    """
    Read C{user:password} lines (blank lines and C{#} comments allowed).

    @raise UsersFileError: unreadable file, a line without C{:}, an empty
        name or password, a name given twice.
    """
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsersFileError(f"{path}: {e.strerror.lower()}") from None
    users: dict[bytes, bytes] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        name, sep, password = line.partition(b":")
        if not sep or not name or not password:
            raise UsersFileError(f"{path}:{number}: expected user:password")
        if name in users:
            raise UsersFileError(f"{path}:{number}: user {name.decode(errors='replace')!r} given twice")
        users[name] = password
    if not users:
        raise UsersFileError(f"{path}: no user:password lines")
    return users


def readable_by_others(path: str) -> bool:
    """True if group or others may read C{path} (a password file should be 0600)."""
    return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))


def myints(args: tuple) -> tuple[int, int, bool, bool]:
    """
    Check the classic MyInts arguments (a1, a2, s1, s2).

    @raise pb.Error: with a sentence naming the bad argument.
    """
    if len(args) != 4:
        raise pb.Error(f"takes 4 arguments (a1, a2, s1, s2), got {len(args)}")
    a1, a2, s1, s2 = args
    for label, value in (("a1", a1), ("a2", a2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise pb.Error(f"{label} must be a non-negative integer, got {value!r}")
    for label, value in (("s1", s1), ("s2", s2)):
        if not isinstance(value, bool):
            raise pb.Error(f"{label} must be true or false, got {value!r}")
    return a1, a2, s1, s2


class EchoAvatar(pb.Avatar):
    """What every login, anonymous included, may call."""

    def __init__(self, service: "RPCService", user: str | None) -> None:
        self.service = service
        self.user = user

    def perspectiveMessageReceived(self, broker, message, args, kw):
        stats = self.service.stats
        name = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        if not hasattr(self, "perspective_" + name):
            name = "unknown"  # keeps the metric's label set bounded
        stats.rpc_call(name)

        def count(outcome):
            stats.rpc_done(name, outcome)

        try:
            result = super().perspectiveMessageReceived(broker, message, args, kw)
        except Exception:
            count("error")
            raise
        if isinstance(result, defer.Deferred):
            def ok(value):
                count("ok")
                return value

            def failed(reason):
                count("error")
                return reason

            return result.addCallbacks(ok, failed)
        count("ok")
        return result

    def perspective_add(self, *args: Any) -> int:
        a1, a2, s1, s2 = myints(args)
        return (-a1 if s1 else a1) + (-a2 if s2 else a2)

    def perspective_subtract(self, *args: Any) -> int:
        a1, a2, s1, s2 = myints(args)
        return (-a1 if s1 else a1) - (-a2 if s2 else a2)

    def perspective_echo(self, *args: Any):
        if len(args) != 1 or not isinstance(args[0], (str, bytes)):
            raise pb.Error("takes one argument, a string or bytes")
        return args[0]

    def perspective_stats(self) -> dict:
        return self.service.stats.as_dict()

    async def _lookup(self, name: str, rrtype: str) -> list[dict]:
        stats = self.service.stats
        try:
            answers = await lookup.lookup(self.service.reactor, name, rrtype, self.service.lookup_servers)
        except UserError as e:
            stats.lookup_done("error")
            raise pb.Error(str(e)) from None
        stats.lookup_done("ok")
        return [a.as_json() for a in answers]

    def perspective_lookup(self, *args: Any):
        if not 1 <= len(args) <= 2 or not all(isinstance(a, str) for a in args):
            raise pb.Error("takes a name and an optional record type, as strings")
        return defer.ensureDeferred(self._lookup(args[0], args[1] if len(args) > 1 else "A"))

    def perspective_quit(self) -> str:
        raise pb.Error("not authorized (log in with a --pb-users account)")


class AdminAvatar(EchoAvatar):
    """An authenticated user: may also stop the daemon."""

    def perspective_quit(self) -> str:
        log.info("quit requested over RPC by {user}", user=self.user)
        # Answer first: stopping the reactor now loses the reply (the caller
        # would see PBConnectionLost).
        self.service.reactor.callLater(0.05, self.service.stop_daemon, f"quit by {self.user} over RPC")
        return "stopping"


@implementer(portal.IRealm)
class Realm:
    """Anonymous logins get an L{EchoAvatar}, users an L{AdminAvatar}."""

    def __init__(self, service: "RPCService") -> None:
        self.service = service

    def requestAvatar(self, avatarId, mind, *interfaces):
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("PB only")
        if avatarId is checkers.ANONYMOUS:
            avatar = EchoAvatar(self.service, None)
        else:
            user = avatarId.decode("utf-8", "replace")
            avatar = AdminAvatar(self.service, user)
        return pb.IPerspective, avatar, lambda: None


class GuardedBroker(pb.Broker):
    """
    A Broker (under L{Served}'s caps and idle sweep) that closes connections that do not log in within
    L{LOGIN_TIMEOUT} seconds or send more than L{PRELOGIN_BYTES} before,
    that send one message larger than L{MESSAGE_BYTES}, or that send bytes
    Banana cannot parse: one log line (rate-limited), no traceback.
    """

    authenticated = False
    _pending = 0
    _received = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        service = self.factory.service
        self.peer = describe(self.transport.getPeer())
        self._deadline = service.reactor.callLater(service.login_timeout, self._refuse, "no login in time")

    def _refuse(self, why: str) -> None:
        self.factory.service.refused(why, self.peer)
        self.transport.abortConnection()

    def dataReceived(self, chunk: bytes) -> None:
        self._pending += len(chunk)
        if not self.authenticated:
            self._received += len(chunk)
            if self._received > PRELOGIN_BYTES:
                return self._refuse("too many bytes before login")
        try:
            super().dataReceived(chunk)
        except Exception:
            # BananaError, ProtocolError (a message that is not a list)...:
            # garbage from the peer, never a traceback in our log.
            return self._refuse("not PB")
        if self._pending > MESSAGE_BYTES:
            self._refuse("message too large")

    def expressionReceived(self, expression) -> None:
        self._pending = 0
        super().expressionReceived(expression)

    def logged_in(self) -> None:
        self.authenticated = True
        if self._deadline.active():
            self._deadline.cancel()

    def connectionLost(self, reason) -> None:
        if self._deadline.active():
            self._deadline.cancel()
        super().connectionLost(reason)


class GuardedPBFactory(pb.PBServerFactory):
    """A PB server factory making L{GuardedBroker}s."""

    protocol = GuardedBroker
    noisy = False

    def __init__(self, service: "RPCService") -> None:
        super().__init__(_Root(service))
        self.service = service


class _BrokerPortal:
    """The portal as one broker sees it: marks the broker on login, throttles failures."""

    def __init__(self, service: "RPCService", broker: GuardedBroker) -> None:
        self.service = service
        self.broker = broker

    def login(self, creds, mind, *interfaces):
        source = unmap(getattr(self.broker.transport.getPeer(), "host", "unix"))
        failures = self.service.failed_logins
        if not failures.allowed(source):
            self.service.refused("too many failed logins", self.broker.peer)
            return defer.fail(UnauthorizedLogin("too many failed logins; try again later"))
        d = self.service.portal.login(creds, mind, *interfaces)

        def ok(result):
            self.broker.logged_in()
            return result

        def failed(reason):
            reason.trap(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials)
            failures.take(source)
            self.service.refused("failed login", self.broker.peer)
            raise UnauthorizedLogin("wrong user name or password")

        return d.addCallbacks(ok, failed)


@implementer(pb.IPBRoot)
class _Root:
    def __init__(self, service: "RPCService") -> None:
        self.service = service

    def rootObject(self, broker):
        return pb._PortalWrapper(_BrokerPortal(self.service, broker), broker)


class RPCService:
    """
    Everything the PB listeners share: counters, the portal, the way to stop
    the daemon, the failed-login throttle.
    """

    def __init__(
        self,
        reactor,
        stats: Stats,
        stop_daemon: Callable[[str], None],
        users: dict[bytes, bytes] | None = None,
        login_timeout: float = LOGIN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        lookup_servers: list[tuple[str, int]] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.reactor = reactor
        self.stats = stats
        self.stop_daemon = stop_daemon
        self.login_timeout = login_timeout
        #: DNS servers for lookup() calls; None: the system's resolver.
        self.lookup_servers = lookup_servers
        self.guard = guard
        checker_list: list = [checkers.AllowAnonymousAccess()]
        if users:
            checker_list.append(checkers.InMemoryUsernamePasswordDatabaseDontUse(**{
                k.decode("utf-8", "surrogateescape"): v for k, v in users.items()
            }))
        self.portal = portal.Portal(Realm(self), checker_list)
        # 5 failed logins at once, then one more every 10 s, per source address.
        self.failed_logins = TokenBuckets(rate=0.1, burst=5, clock=clock)
        self.throttled = ThrottledLog(log)

    def refused(self, why: str, peer: str) -> None:
        self.stats.drop("pb_" + why.replace(" ", "_"))
        self.throttled.warn(why, "pb: {peer}: {why}", peer=peer, why=why)

    def factory(self) -> Served:
        """A server factory for one PB listener (under the daemon's caps and idle sweep)."""
        return Served(GuardedPBFactory(self), self.stats, "pb", guard=self.guard)
