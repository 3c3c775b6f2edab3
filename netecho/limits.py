"""Abuse limits shared by the services: connection caps, the idle sweep, rate windows."""

from __future__ import annotations

import ipaddress
import itertools
import time
from functools import lru_cache
from typing import Callable, Hashable

from twisted.application import service
from twisted.internet import task

from netecho.address import describe, unmap
from netecho.throttle import ThrottledLog


class RateWindow:
    """
    At most C{rate} events a second per key, counted in one-second windows:
    a dict lookup and an increment per event, cheap enough for every UDP
    datagram. At most C{size} keys are counted in a window; keys beyond
    share one count, so a flood of spoofed sources cannot grow the table
    and still gets no more than C{rate} replies between them. A burst of
    up to twice the rate can straddle two windows.
    """

    _OVERFLOW = object()

    def __init__(self, rate: float, size: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = rate
        self.size = size
        self.clock = clock
        # A window opens with the first event after the last one closed.
        self._start = float("-inf")
        self._counts: dict = {}

    def allow(self, key: Hashable, now: float | None = None) -> bool:
        """
        Count one event for C{key}; False if its window is full. C{now}, if
        given, is this window's clock read by the caller (one read for
        several windows).
        """
        if now is None:
            now = self.clock()
        counts = self._counts
        if now - self._start >= 1.0:
            counts.clear()
            self._start = now
        count = counts.get(key)
        if count is None:
            if len(counts) >= self.size:
                key = self._OVERFLOW
                count = counts.get(key, 0)
            else:
                count = 0
        if count >= self.limit:
            return False
        counts[key] = count + 1
        return True


def source_key(addr: object) -> str | None:
    """The per-source key of a peer address: its IP (IPv4-mapped unmapped); None for Unix peers."""
    host = getattr(addr, "host", None)
    if host is None:
        return None
    return unmap(host)


@lru_cache(maxsize=4096)
def source_prefix(host: str) -> str:
    """
    The network a UDP source is rate-limited by: its /24 (IPv4) or /56
    (IPv6), as NSD does, so one host cannot dodge the limit by hopping
    addresses within its own network.
    """
    host = unmap(host)
    if ":" in host:
        try:
            return str(ipaddress.ip_network(f"{host}/56", strict=False))
        except ValueError:
            return host
    return host.rpartition(".")[0]


class ConnectionLimits:
    """
    The daemon-wide caps on stream connections: C{total} at once, and
    C{per_source} from one IP address (Twisted's LimitConnectionsByPeer is
    broken in 26.10, Twisted issue 12183). Zero disables a cap.
    """

    def __init__(self, total: int = 10000, per_source: int = 1000) -> None:
        self.total = total
        self.per_source = per_source
        self.active = 0
        self._by_source: dict[str, int] = {}

    def admit(self, addr: object) -> tuple[str | None, str | None]:
        """
        Count a new connection from C{addr} if the caps allow it.

        @return: (refusal reason or None, the key to L{release} later).
        """
        if self.total and self.active >= self.total:
            return "max_connections", None
        key = source_key(addr)
        if key is not None:
            count = self._by_source.get(key, 0)
            if self.per_source and count >= self.per_source:
                return "max_per_ip", None
            self._by_source[key] = count + 1
        self.active += 1
        return None, key

    def release(self, key: str | None) -> None:
        """Forget one connection admitted with C{key}."""
        self.active -= 1
        if key is not None:
            count = self._by_source[key] - 1
            if count:
                self._by_source[key] = count
            else:
                del self._by_source[key]


class IdleSweeper(service.Service):
    """
    Aborts stream connections that made no progress (received nothing) for
    C{timeout} seconds: idle peers, and peers that stopped reading (their
    connection is paused, so nothing more is received). Aborting, not
    closing: a close would wait for a write buffer that never drains.
    One periodic sweep (every tenth of the timeout) instead of a timer reset
    per chunk keeps the echo path free of timer work. Each connection's
    last progress is timed from the reactor's clock, so a connection goes
    at the first sweep after C{timeout}: within C{timeout} + 10%.
    """

    def __init__(self, reactor, timeout: float, on_abort: Callable[[object], None] | None = None) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.interval = max(timeout / 10, 0.05)
        self.on_abort = on_abort
        #: session -> (bytes received when last seen, when that changed)
        self.sessions: dict = {}
        self._loop: task.LoopingCall | None = None

    def track(self, session) -> None:
        """Watch C{session} (it has C{received} and C{transport})."""
        self.sessions[session] = (session.received, self.reactor.seconds())

    def untrack(self, session) -> None:
        self.sessions.pop(session, None)

    def startService(self) -> None:
        super().startService()
        if self.timeout > 0:
            self._loop = task.LoopingCall(self.sweep)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def sweep(self) -> None:
        """One pass: abort every connection without progress for C{timeout}."""
        now = self.reactor.seconds()
        sessions = self.sessions
        for session, (seen, since) in list(sessions.items()):
            received = session.received
            if received != seen:
                sessions[session] = (received, now)
            elif now - since >= self.timeout:
                del sessions[session]
                if self.on_abort is not None:
                    self.on_abort(session)
                session.transport.abortConnection()


#: How many of one source's connections a refused connection checks for a
#: peer that has already gone (see L{Guard.admit}).
REAP_CHECKS = 64

#: Connections younger than this are never evicted (see L{Guard.admit}).
EVICT_MIN_AGE = 1.0
#: Nor are connections that moved at least this many bytes a second (both
#: ways, on average since they opened).
EVICT_BELOW_RATE = 1024.0


class Guard:
    """
    The limits every stream listener shares: connection caps, the idle
    sweep, and the counting and (rate-limited) logging of each refusal.
    Sessions call L{opened} and L{closed}; factories call L{admit}.

    When a cap is reached, a new connection is not refused at once:
     - connections from that source (or, for the total cap, any) whose peer
       has already closed, but whose end of file the reactor has not read
       yet, no longer count (a client that connects and closes in a quick
       loop is never refused for its own dead connections);
     - at the total cap, the open connection with the least progress for
       its age (bytes both ways per second since it opened) is aborted to
       make room, if it has been open for at least L{EVICT_MIN_AGE} seconds
       and moved less than L{EVICT_BELOW_RATE} bytes a second: connections
       that trickle a byte now and then cannot hold every slot. Each
       eviction is counted (C{evicted}) and logged.

    Sessions have C{received}, C{sent}, C{started} (on C{clock}),
    C{limit_key}, C{transport}, C{peer} and C{peer_gone()}.
    """

    def __init__(self, stats, limits: ConnectionLimits, sweeper: IdleSweeper, log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.limits = limits
        self.sweeper = sweeper
        self.clock = clock
        self.throttled = ThrottledLog(log)
        #: Open sessions holding a slot, by source key (None for Unix peers).
        self._by_key: dict = {}
        sweeper.on_abort = lambda session: self.refuse("idle_timeout", getattr(session, "peer", "?"))

    def admit(self, addr) -> tuple[bool, str | None]:
        """(whether to accept a connection from C{addr}, the key for L{closed})."""
        refusal, key = self.limits.admit(addr)
        if refusal == "max_per_ip" and self._reap(self._by_key.get(source_key(addr), {})):
            refusal, key = self.limits.admit(addr)
        if refusal == "max_connections" and self._make_room():
            refusal, key = self.limits.admit(addr)
        if refusal is not None:
            self.refuse(refusal, describe(addr))
            return False, None
        return True, key

    def _reap(self, sessions) -> bool:
        """Free the slots of those of C{sessions} (L{REAP_CHECKS} at most) whose peer has gone."""
        # Newest first: a client that connects and closes in a loop leaves
        # its dead connections behind its live ones.
        gone = [s for s in itertools.islice(reversed(sessions), REAP_CHECKS) if s.peer_gone()]
        for session in gone:
            self._release(session)
        return bool(gone)

    def _make_room(self) -> bool:
        every = itertools.chain.from_iterable(reversed(s) for s in self._by_key.values())
        if self._reap(list(itertools.islice(every, REAP_CHECKS))[::-1]):
            return True
        now = self.clock()
        slowest, slowest_rate = None, None
        for sessions in self._by_key.values():
            for session in sessions:
                age = now - session.started
                if age < EVICT_MIN_AGE:
                    continue
                rate = (session.received + session.sent) / age
                if rate < EVICT_BELOW_RATE and (slowest_rate is None or rate < slowest_rate):
                    slowest, slowest_rate = session, rate
        if slowest is None:
            return False
        self.refuse("evicted", slowest.peer)
        self._release(slowest)
        slowest.transport.abortConnection()
        return True

    def _release(self, session) -> None:
        """Give back the slot C{session} holds (once)."""
        sessions = self._by_key.get(session.limit_key)
        if sessions is not None and session in sessions:
            del sessions[session]
            if not sessions:
                del self._by_key[session.limit_key]
            self.limits.release(session.limit_key)

    def refuse(self, reason: str, peer: str) -> None:
        """Count and log one refused or aborted connection."""
        self.stats.drop(reason)
        self.throttled.warn(reason, "limit: {peer} cut off: {why}", peer=peer, why=reason.replace("_", " "))

    def opened(self, session) -> None:
        """Count and watch a new connection, admitted with C{session.limit_key}."""
        self._by_key.setdefault(session.limit_key, {})[session] = None
        self.sweeper.track(session)

    def closed(self, session) -> None:
        """Forget a connection that has closed."""
        self._release(session)
        self.sweeper.untrack(session)
