"""
The Perspective Broker service: a cred Portal whose avatars offer the classic
add/subtract and our own calls, and a Broker that bounds what an
unauthenticated or misbehaving peer can cost.

What a peer can cost, and what happens past it (each refusal is counted as a
drop and logged at most once per reason every 10 s):

 - before login: L{PRELOGIN_BYTES} and L{LOGIN_TIMEOUT}; failed logins are
   answered after L{FAILED_LOGIN_DELAY} and at most L{LOGINS_IN_PROGRESS}
   logins from one address are in progress at once, so one address
   guesses at most 10 passwords a second while a correct login still
   gets in;
 - every message: at most L{MESSAGE_BYTES} and L{MESSAGE_ITEMS} items,
   finished within L{MESSAGE_TIMEOUT} seconds, and all connections'
   unfinished messages together at most L{UNFINISHED_BYTES} (past it the
   connection whose message has been unfinished longest is closed);
   Banana is fed so that it never re-copies a long buffer, and for at most
   L{TURN_BUDGET} seconds of CPU a reactor turn per connection;
 - a caller's mistake (unknown method, wrong arguments, arguments nested
   too deeply) is a L{CallError} with one sentence; the connection stays;
 - lookup(): at most L{LOOKUPS_PER_CONNECTION} in flight on a connection
   and L{LOOKUPS_TOTAL} in all, sharing one UDP socket per DNS server.
"""

from __future__ import annotations

import collections
import inspect
import os
import reprlib
import stat
import time
from typing import Any, Callable

from twisted.cred import checkers, credentials, error as cred_error, portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import banana, pb
from zope.interface import implementer

from netecho.dns import api as lookup
from netecho.address import describe, unmap
from netecho.errors import UserError
from netecho.limits import Guard
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
#: Items (strings, numbers, lists) of one message: a parsed item costs far
#: more memory than its wire bytes (an empty list is one byte on the wire,
#: 64 in memory). Our calls take a few; a 900-deep list takes ~1,800.
MESSAGE_ITEMS = 10_000
#: Seconds within which a message, once begun, must be complete.
MESSAGE_TIMEOUT = 10.0
#: Bytes of unfinished messages all connections together may hold.
UNFINISHED_BYTES = 4 * 1024 * 1024
#: CPU seconds one connection's parsing may take in one reactor turn;
#: the rest waits (reading paused) for the next turn.
TURN_BUDGET = 0.002
#: Bytes given to Banana at once (it copies what follows each item it parses).
FEED_SLICE = 1024
#: Seconds before a failed login is answered (the source's slot is held as long).
FAILED_LOGIN_DELAY = 1.0
#: Password logins in progress (answered or waiting out the delay) from one address.
LOGINS_IN_PROGRESS = 10
#: lookup() calls in flight on one connection, and on the whole daemon.
LOOKUPS_PER_CONNECTION = 10
LOOKUPS_TOTAL = 100

# Reprs of a caller's values in error messages stay short.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlevel = 2


class UnauthorizedLogin(pb.Error, cred_error.UnauthorizedLogin):
    """
    A refused login. Being a L{pb.Error}, PB sends it to the client without
    logging a traceback for every wrong password.
    """


class CallError(pb.Error):
    """
    A caller's mistake (no such method, wrong arguments): PB sends a
    L{pb.Error} back without logging a traceback. C{str()} is the sentence
    the caller sees; C{reason} names the kind for the rate-limited log.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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


def myints(args: tuple, name: str = "add") -> tuple[int, int, bool, bool]:
    """
    Check the classic MyInts arguments (a1, a2, s1, s2) of call C{name}.

    @raise pb.Error: with a sentence naming the bad argument.
    """
    if len(args) != 4:
        raise pb.Error(f"{name} takes 4 arguments (a1, a2, s1, s2), got {len(args)}")
    a1, a2, s1, s2 = args
    for label, value in (("a1", a1), ("a2", a2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise pb.Error(f"{label} must be a non-negative integer, got {_short.repr(value)}")
    for label, value in (("s1", s1), ("s2", s2)):
        if not isinstance(value, bool):
            raise pb.Error(f"{label} must be true or false, got {_short.repr(value)}")
    return a1, a2, s1, s2


# --- calls: what PB does, minus the tracebacks for a caller's mistakes ----------

# method function -> (least, most) positional arguments, or None for *args
_ARITY: dict = {}


def _arity(method) -> tuple[int, int] | None:
    func = getattr(method, "__func__", method)
    try:
        return _ARITY[func]
    except KeyError:
        pass
    params = list(inspect.signature(method).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        arity = None
    else:
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        arity = (sum(p.default is p.empty for p in positional), len(positional))
    _ARITY[func] = arity
    return arity


def _arguments(n: int) -> str:
    return "no arguments" if n == 0 else "1 argument" if n == 1 else f"{n} arguments"


def invoke(service: "RPCService", broker, target, prefix: str, message, net_args, net_kw, perspective=None):
    """
    Call C{target}'s C{prefix + message} method with the arguments of a PB
    message, as PB's own dispatch does (L{pb.Avatar.perspectiveMessageReceived},
    L{pb.Referenceable.remoteMessageReceived}), except that a caller's
    mistake raises a L{CallError} with one sentence ("no such method: frob",
    "add takes 4 arguments", "arguments nested too deeply") and is logged
    once per reason at most every 10 s: PB would log a traceback and send
    Python's own exception. Exceptions of the method itself pass through.
    """
    name = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    shown = name if len(name) <= 64 else name[:64] + "..."
    try:
        try:
            args = broker.unserialize(net_args, perspective)
            kw = broker.unserialize(net_kw, perspective)
        except RecursionError:
            # jelly decodes recursively: a deep enough list exhausts the stack.
            raise CallError("arguments nested too deeply", "arguments nested too deeply") from None
        except pb.Error:
            raise
        except Exception:
            # InsecureJelly or malformed jelly: what the caller sent, not our bug.
            raise CallError(f"{shown}: arguments not understood", "arguments not understood") from None
        method = getattr(target, prefix + name, None)
        if not callable(method):
            raise CallError(f"no such method: {shown}", "no such method")
        if not isinstance(args, (tuple, list)):
            raise CallError(f"{shown}: arguments not understood", "arguments not understood")
        if kw:
            raise CallError(f"{shown} takes no keyword arguments", "keyword arguments")
        arity = _arity(method)
        if arity is not None and not arity[0] <= len(args) <= arity[1]:
            least, most = arity
            takes = _arguments(most) if least == most else f"{least} to {most} arguments"
            raise CallError(f"{shown} takes {takes}, got {len(args)}", "wrong number of arguments")
    except CallError as e:
        service.mistake(e, getattr(broker, "peer", "?"))
        raise
    state = method(*args)
    return broker.serialize(state, perspective, method, args, kw)


class EchoAvatar(pb.Avatar):
    """What every login, anonymous included, may call."""

    #: The connection this avatar was handed to (set at login).
    broker = None

    def __init__(self, service: "RPCService", user: str | None) -> None:
        self.service = service
        self.user = user

    def perspectiveMessageReceived(self, broker, message, args, kw):
        stats = self.service.stats
        name = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        if not callable(getattr(self, "perspective_" + name, None)):
            name = "unknown"  # keeps the metric's label set bounded
        stats.rpc_call(name)

        def count(outcome):
            stats.rpc_done(name, outcome)

        try:
            result = invoke(self.service, broker, self, "perspective_", message, args, kw, perspective=self)
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
        a1, a2, s1, s2 = myints(args, "add")
        return (-a1 if s1 else a1) + (-a2 if s2 else a2)

    def perspective_subtract(self, *args: Any) -> int:
        a1, a2, s1, s2 = myints(args, "subtract")
        return (-a1 if s1 else a1) - (-a2 if s2 else a2)

    def perspective_echo(self, *args: Any):
        if len(args) != 1 or not isinstance(args[0], (str, bytes)):
            raise pb.Error("echo takes one argument, a string or bytes")
        return args[0]

    def perspective_stats(self) -> dict:
        return self.service.stats.as_dict()

    def perspective_lookup(self, *args: Any):
        if not 1 <= len(args) <= 2 or not all(isinstance(a, str) for a in args):
            raise pb.Error("lookup takes a name and an optional record type, as strings")
        return self.service.lookup(self.broker, args[0], args[1] if len(args) > 1 else "A")

    def perspective_quit(self) -> str:
        raise pb.Error("not authorized (log in with a --pb-users account)")

    def perspective_faults(self, *args: Any) -> str:
        raise pb.Error("not authorized (log in with a --pb-users account)")


class AdminAvatar(EchoAvatar):
    """An authenticated user: may also stop the daemon and change its faults."""

    def perspective_faults(self, *args: Any) -> str:
        """Replace the daemon's --faults SPEC ('' clears it); returns the SPEC now in force."""
        if len(args) != 1 or not isinstance(args[0], str):
            raise pb.Error("faults takes one argument, a SPEC such as 'delay=100ms' ('' for none)")
        faults = self.service.faults
        if faults is None:
            raise pb.Error("this daemon takes no faults")
        try:
            spec = faults.set(args[0])
        except ValueError as e:
            raise pb.Error(f"faults: {e}") from None
        log.warn("faults set over RPC by {user}: {spec}", user=self.user, spec=str(spec) or "none")
        return str(spec)

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


# --- the broker: what one connection may cost -------------------------------------


class _TooManyItems(Exception):
    """The message being parsed has more than L{MESSAGE_ITEMS} items."""


class GuardedBroker(pb.Broker):
    """
    A Broker (under L{Served}'s caps and idle sweep) that closes, with one
    log line (rate-limited) and no traceback, connections that do not log
    in within L{LOGIN_TIMEOUT} seconds or send more than L{PRELOGIN_BYTES}
    before; that send a message larger than L{MESSAGE_BYTES} or
    L{MESSAGE_ITEMS}, or not finished within L{MESSAGE_TIMEOUT}; whose
    unfinished message is the oldest when all together pass
    L{UNFINISHED_BYTES}; or that send bytes Banana cannot parse.

    Banana re-copies its buffer after every item it parses and on every
    read: fed a long string a few bytes at a time, or many small items at
    once, it costs time quadratic in the bytes. So what arrives is held
    here and given to Banana only when it can make progress (a string
    whole), otherwise in slices of L{FEED_SLICE}, for at most
    L{TURN_BUDGET} seconds a reactor turn (reading paused meanwhile).

    @ivar unfinished: bytes of this connection's unfinished message
        (counted in L{RPCService.unfinished}).
    @ivar lookups: lookup() calls in flight on this connection.
    """

    authenticated = False
    unfinished = 0
    lookups = 0
    _closed = False
    _received = 0  # bytes before login
    _open = 0  # bytes given to Banana since its last whole message
    _items = 0  # items (and open lists) of the message being parsed
    _messages = 0  # whole messages so far
    _timed = 0  # _messages when the message timer was (re)started
    _wanted = 1  # bytes Banana needs before it can make progress
    _offset = 0  # of the first held chunk, already taken
    _resume = None  # DelayedCall: parse on next turn
    _timer = None  # DelayedCall: message not finished in time

    def connectionMade(self) -> None:
        super().connectionMade()
        service = self.factory.service
        self.peer = describe(self.transport.getPeer())
        self._held: collections.deque[bytes] = collections.deque()
        self._held_bytes = 0
        self._deadline = service.reactor.callLater(service.login_timeout, self.refuse, "no login in time")

    def refuse(self, why: str) -> None:
        """Close this connection at once, counted and logged as refused for C{why}."""
        if self._closed:
            return
        self._closed = True
        self._forget()
        self.factory.service.refused(why, self.peer)
        self.transport.abortConnection()

    def _forget(self) -> None:
        """Drop what is held and give back this connection's share of the unfinished bytes."""
        self._held.clear()
        self._held_bytes = 0
        self._open = 0
        self.factory.service.hold(self, 0)
        for call in (self._resume, self._timer):
            if call is not None and call.active():
                call.cancel()
        self._resume = self._timer = None

    # What arrives.

    def dataReceived(self, chunk: bytes) -> None:
        if self._closed:
            return
        if not self.authenticated:
            self._received += len(chunk)
            if self._received > PRELOGIN_BYTES:
                return self.refuse("too many bytes before login")
        self._held.append(chunk)
        self._held_bytes += len(chunk)
        if self._account() and self._resume is None:
            self._digest()

    def _account(self) -> bool:
        """Count what is unfinished; False if that closed the connection."""
        if self._closed:  # (refused meanwhile: nothing of it counts any more)
            return False
        unfinished = self._open + self._held_bytes
        if unfinished > MESSAGE_BYTES:
            self.refuse("message too large")
            return False
        self.factory.service.hold(self, unfinished)
        return not self._closed

    def _take(self, n: int) -> bytes:
        """Up to C{n} bytes from the front of what is held, copying only those."""
        held = self._held
        parts = []
        while n > 0 and held:
            chunk = held[0]
            start = self._offset
            end = min(len(chunk), start + n)
            parts.append(chunk if start == 0 and end == len(chunk) else chunk[start:end])
            n -= end - start
            if end == len(chunk):
                held.popleft()
                self._offset = 0
            else:
                self._offset = end
        piece = parts[0] if len(parts) == 1 else b"".join(parts)
        self._held_bytes -= len(piece)
        return piece

    def _wants(self) -> int:
        """Bytes Banana needs before it can parse its next item (1 unless a string or float is cut)."""
        buffer = self.buffer
        # The item's header: up to prefixLimit digits below 0x80, then its type byte.
        for pos in range(min(len(buffer), 65)):
            if buffer[pos] & 0x80:
                break
        else:
            return 1
        kind = buffer[pos : pos + 1]
        if kind == banana.STRING:
            return max(pos + 1 + banana.b1282int(buffer[:pos]) - len(buffer), 1)
        if kind == banana.FLOAT:
            return max(pos + 9 - len(buffer), 1)
        return 1

    def _digest(self) -> None:
        deadline = time.perf_counter() + TURN_BUDGET
        try:
            while self._held_bytes >= self._wanted and not self._closed:
                if time.perf_counter() >= deadline:
                    # Leave the rest for the next turn: other connections
                    # and services are served in between.
                    self.transport.pauseProducing()
                    self._resume = self.factory.service.reactor.callLater(0, self._go_on)
                    break
                # A cut string is given whole, so Banana copies it once.
                piece = self._take(max(self._wanted, FEED_SLICE))
                messages = self._messages
                self._open += len(piece)
                super().dataReceived(piece)
                if not self.buffer and not self.listStack:
                    self._open = 0
                elif self._messages != messages:
                    self._open = len(piece)
                if self._items + len(self.listStack) > MESSAGE_ITEMS:
                    raise _TooManyItems()
                self._wanted = self._wants()
        except _TooManyItems:
            return self.refuse("message too large")
        except Exception:
            # BananaError, ProtocolError (a message that is not a list), a
            # KeyError for an unknown reference...: garbage from the peer,
            # never a traceback in our log.
            return self.refuse("not PB")
        if self._account():
            self._watch()

    def _go_on(self) -> None:
        self._resume = None
        if not self._closed:
            self.transport.resumeProducing()
            self._digest()

    def _watch(self) -> None:
        """Keep the timer of the unfinished message (restarted when one completes)."""
        timer = self._timer
        if not self.unfinished:
            if timer is not None and timer.active():
                timer.cancel()
            self._timer = None
        elif timer is None or not timer.active():
            service = self.factory.service
            self._timer = service.reactor.callLater(service.message_timeout, self.refuse,
                                                    "message not finished in time")
            self._timed = self._messages
        elif self._timed != self._messages:
            timer.reset(self.factory.service.message_timeout)
            self._timed = self._messages

    def gotItem(self, item) -> None:
        self._items += 1
        super().gotItem(item)

    def expressionReceived(self, expression) -> None:
        self._messages += 1
        self._items = 0
        super().expressionReceived(expression)

    def callExpressionReceived(self, obj) -> None:
        if not self.currentDialect and obj not in self.knownDialects:
            # Banana would log a line for each such connection.
            return self.refuse("unknown Banana dialect")
        super().callExpressionReceived(obj)

    # What PB would log a traceback or a line for, for each such message.

    def proto_didNotUnderstand(self, command) -> None:
        self.factory.service.throttled.warn(
            "didNotUnderstand", "pb: {peer}: did not understand our {command}", peer=self.peer,
            command=_short.repr(command),
        )

    def localObjectForID(self, luid):
        try:
            return super().localObjectForID(luid)
        except (TypeError, AttributeError):  # an ID that is no string or number
            return None

    def cachedLocallyAs(self, cid):
        # We cache nothing remotely: a peer naming a cached object is wrong.
        try:
            return super().cachedLocallyAs(cid)
        except (KeyError, TypeError):
            raise CallError("no such cached object", "no such cached object") from None

    # Login and close.

    def logged_in(self) -> None:
        self.authenticated = True
        if self._deadline.active():
            self._deadline.cancel()

    def connectionLost(self, reason) -> None:
        self._closed = True
        if self._deadline.active():
            self._deadline.cancel()
        self._forget()
        super().connectionLost(reason)


class GuardedPBFactory(pb.PBServerFactory):
    """A PB server factory making L{GuardedBroker}s."""

    protocol = GuardedBroker
    noisy = False

    def __init__(self, service: "RPCService") -> None:
        super().__init__(_Root(service))
        self.service = service


# --- login --------------------------------------------------------------------


class _BrokerPortal:
    """
    The portal as one broker sees it: marks the broker on login; answers a
    failed password login after L{RPCService.failed_login_delay}, holding
    one of the source's L{RPCService.logins_per_source} slots as long, so
    guessing is slow while a correct login is answered at once.
    """

    def __init__(self, service: "RPCService", broker: GuardedBroker) -> None:
        self.service = service
        self.broker = broker

    def login(self, creds, mind, *interfaces):
        service = self.service
        broker = self.broker

        def ok(result):
            broker.logged_in()
            result[1].broker = broker
            return result

        if isinstance(creds, credentials.Anonymous):
            return service.portal.login(creds, mind, *interfaces).addCallback(ok)
        source = unmap(getattr(broker.transport.getPeer(), "host", "unix"))
        if not service.login_started(source):
            service.refused("too many logins in progress", broker.peer)
            return defer.fail(UnauthorizedLogin(
                "too many logins in progress from your address; try again in a moment"))
        d = service.portal.login(creds, mind, *interfaces)

        def succeeded(result):
            service.login_finished(source)
            return ok(result)

        def failed(reason):
            answer: defer.Deferred = defer.Deferred()

            def later():
                service.login_finished(source)
                if not broker.disconnected:
                    if reason.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                        answer.errback(UnauthorizedLogin("wrong user name or password"))
                    else:
                        answer.errback(reason)

            if reason.check(cred_error.UnauthorizedLogin, cred_error.UnhandledCredentials):
                service.refused("failed login", broker.peer)
            service.reactor.callLater(service.failed_login_delay, later)
            return answer

        return d.addCallbacks(succeeded, failed)


class _Challenger(pb._PortalAuthChallenger):
    """
    PB's answer to a password login (its remote_respond), with L{invoke}'s
    checks. Twisted names it privately; we subclass it to keep its
    challenge-response, which clients speak.
    """

    def remoteMessageReceived(self, broker, message, args, kw):
        return invoke(self.portal.service, broker, self, "remote_", message, args, kw)


class _LoginRoot(pb._PortalWrapper):
    """
    PB's root object (remote_login, remote_loginAnonymous) with
    L{invoke}'s checks. Twisted names it privately; we subclass it to keep
    its login protocol, which clients speak.
    """

    def remoteMessageReceived(self, broker, message, args, kw):
        return invoke(self.portal.service, broker, self, "remote_", message, args, kw)

    def remote_login(self, username):
        if not isinstance(username, bytes) or not 0 < len(username) <= 255:
            raise CallError("login takes a user name (bytes)", "arguments not understood")
        challenge = pb.challenge()
        return challenge, _Challenger(self.portal, self.broker, username, challenge)


@implementer(pb.IPBRoot)
class _Root:
    def __init__(self, service: "RPCService") -> None:
        self.service = service

    def rootObject(self, broker):
        return _LoginRoot(_BrokerPortal(self.service, broker), broker)


# --- the service ----------------------------------------------------------------


class RPCService:
    """
    Everything the PB listeners share: counters, the portal, the way to stop
    the daemon, the logins in progress, the unfinished messages and the
    lookups in flight of every connection.
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
        *,
        message_timeout: float = MESSAGE_TIMEOUT,
        unfinished_limit: int = UNFINISHED_BYTES,
        failed_login_delay: float = FAILED_LOGIN_DELAY,
        logins_per_source: int = LOGINS_IN_PROGRESS,
        lookups_per_connection: int = LOOKUPS_PER_CONNECTION,
        lookups_total: int = LOOKUPS_TOTAL,
        faults=None,
    ) -> None:
        self.reactor = reactor
        #: The daemon's netecho.faults.Faults (changed by an admin's faults()), or None.
        self.faults = faults
        self.stats = stats
        self.stop_daemon = stop_daemon
        self.login_timeout = login_timeout
        #: DNS servers for lookup() calls; None: the system's resolver.
        self.lookup_servers = lookup_servers
        self.guard = guard
        self.message_timeout = message_timeout
        self.unfinished_limit = unfinished_limit
        self.failed_login_delay = failed_login_delay
        self.logins_per_source = logins_per_source
        self.lookups_per_connection = lookups_per_connection
        self.lookups_total = lookups_total
        checker_list: list = [checkers.AllowAnonymousAccess()]
        if users:
            checker_list.append(checkers.InMemoryUsernamePasswordDatabaseDontUse(**{
                k.decode("utf-8", "surrogateescape"): v for k, v in users.items()
            }))
        self.portal = portal.Portal(Realm(self), checker_list)
        #: Password logins in progress, by source address.
        self.logins: dict[str, int] = {}
        #: Bytes of unfinished messages, all connections together.
        self.unfinished = 0
        # Connections holding unfinished bytes, the longest-holding first.
        self._holding: dict[GuardedBroker, None] = {}
        #: lookup() calls in flight, all connections together.
        self.lookups_in_flight = 0
        #: The DNS sockets lookups share (one per server).
        self.upstreams = lookup.Upstreams(reactor)
        self.throttled = ThrottledLog(log, clock=clock)

    def refused(self, why: str, peer: str) -> None:
        """Count and log (rate-limited) a refused connection, login or call."""
        self.stats.drop("pb_" + why.replace(" ", "_"))
        self.throttled.warn(why, "pb: {peer}: {why}", peer=peer, why=why)

    def mistake(self, error: CallError, peer: str) -> None:
        """Log (rate-limited) a caller's mistake; the caller gets C{error}."""
        self.throttled.warn("call: " + error.reason, "pb: {peer}: call refused: {why}", peer=peer, why=str(error))

    def hold(self, broker: GuardedBroker, unfinished: int) -> None:
        """
        C{broker} now holds C{unfinished} bytes of an unfinished message.
        Past L{unfinished_limit} in all, the connections whose messages
        have been unfinished longest are closed until the rest fit.
        """
        self.unfinished += unfinished - broker.unfinished
        broker.unfinished = unfinished
        holding = self._holding
        if unfinished:
            holding.setdefault(broker, None)
        else:
            holding.pop(broker, None)
        while self.unfinished > self.unfinished_limit and holding:
            oldest = next(iter(holding))
            self.unfinished -= oldest.unfinished  # (forgotten here first, so the loop ends even if
            oldest.unfinished = 0                  # refuse() finds it closed already)
            del holding[oldest]
            oldest.refuse("too many unfinished bytes")

    def login_started(self, source: str) -> bool:
        """Count a password login from C{source}; False (nothing counted) if it has too many in progress."""
        count = self.logins.get(source, 0)
        if count >= self.logins_per_source:
            return False
        self.logins[source] = count + 1
        return True

    def login_finished(self, source: str) -> None:
        """A password login from C{source} has been answered (after the delay, if it failed)."""
        count = self.logins[source] - 1
        if count:
            self.logins[source] = count
        else:
            del self.logins[source]

    def lookup(self, broker, name: str, rrtype: str) -> defer.Deferred:
        """
        Look C{name} up for a caller on C{broker}, if neither that
        connection nor the daemon has too many lookups in flight.

        @raise pb.Error: too many in flight (at once, nothing is sent).
        """
        if broker is not None and broker.lookups >= self.lookups_per_connection:
            self.refused("too many lookups on one connection", getattr(broker, "peer", "?"))
            raise pb.Error(f"too many lookups in progress on this connection (at most "
                           f"{self.lookups_per_connection}); wait for one to finish")
        if self.lookups_in_flight >= self.lookups_total:
            self.refused("too many lookups", getattr(broker, "peer", "?"))
            raise pb.Error(f"too many lookups in progress on the server (at most "
                           f"{self.lookups_total}); try again in a moment")
        if broker is not None:
            broker.lookups += 1
        self.lookups_in_flight += 1

        def done(result):
            if broker is not None:
                broker.lookups -= 1
            self.lookups_in_flight -= 1
            return result

        return defer.ensureDeferred(self._lookup(name, rrtype)).addBoth(done)

    async def _lookup(self, name: str, rrtype: str) -> list[dict]:
        try:
            answers = await lookup.lookup(self.reactor, name, rrtype, self.lookup_servers, upstreams=self.upstreams)
        except UserError as e:
            self.stats.lookup_done("error")
            raise pb.Error(str(e)) from None
        self.stats.lookup_done("ok")
        return [a.as_json() for a in answers]

    def factory(self) -> Served:
        """A server factory for one PB listener (under the daemon's caps and idle sweep)."""
        return Served(GuardedPBFactory(self), self.stats, "pb", guard=self.guard)
