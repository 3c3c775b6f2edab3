"""
Round-trip probes to an echo service over TCP, UDP, Unix sockets or TLS,
timed as ping, echoping and tcping time them.

In-process use (a trial test, a monitoring script)::

    from netecho.ping import ping

    stats = await ping(reactor, "udp", ("127.0.0.1", 1234), count=3, interval=0.1)
    stats.received, stats.loss_pct, stats.rtt()["p90"]

Each probe carries its sequence number and ends with a newline, so line-based
echo servers answer it too; every reply is checked byte for byte. On UDP the
replies are matched by sequence number (late, duplicated and reordered ones
are counted, never taken for another probe); on a stream, replies come back
in order, one line per probe.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer, endpoints, error, interfaces, protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from netecho.address import is_ip, join_host_port
from netecho.datagram import MAX_DATAGRAM
from netecho.errors import UserError, dial_error, io_error

TRANSPORTS = ("tcp", "udp", "unix", "tls")
MIN_SIZE = 16
MAX_UDP_SIZE = 65507  # the largest IPv4 UDP payload
MAX_STREAM_SIZE = 16 * 1024 * 1024
#: UDP probes remembered after they settled, to tell late and duplicate replies.
KEPT_PROBES = 256
#: The shortest -i (as ping, a floor against flooding from a typo).
MIN_INTERVAL = 0.001
_FILL = bytes(range(ord("a"), ord("z") + 1)) * 2 + b"0123456789"


def payload(seq: int, token: bytes, size: int) -> bytes:
    """The probe numbered C{seq}: C{b"SEQ TOKEN "}, filler, a newline; C{size} bytes."""
    head = b"%d %s " % (seq, token)
    room = size - 1 - len(head)
    if room < 0:
        raise ValueError(f"a probe of {size} bytes cannot hold sequence number {seq}")
    fill = _FILL * (room // len(_FILL) + 1)
    return head + fill[:room] + b"\n"


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: list[float]) -> dict | None:
    """min/avg/max/mdev (as ping computes it)/p50/p90/p99 of C{samples}, or None."""
    if not samples:
        return None
    ordered = sorted(samples)
    avg = sum(samples) / len(samples)
    mdev = math.sqrt(max(0.0, sum(s * s for s in samples) / len(samples) - avg * avg))
    return {
        "min": ordered[0], "avg": avg, "max": ordered[-1], "mdev": mdev,
        "p50": percentile(ordered, 50), "p90": percentile(ordered, 90), "p99": percentile(ordered, 99),
    }


@dataclass
class Statistics:
    """
    What a run of probes found.

    C{sent = received + lost + errors}: a probe is I{received} when its
    exact echo came within the timeout, I{lost} when nothing valid came in
    time, an I{error} when the reply was corrupted or the connection failed.
    C{late} replies (after their timeout), C{duplicates} and C{reordered}
    replies (answering a probe older than one already answered) are counted
    apart and never change what a probe counts as.
    """

    transport: str
    target: str
    size: int
    sent: int = 0
    received: int = 0
    lost: int = 0
    errors: int = 0
    duplicates: int = 0
    late: int = 0
    reordered: int = 0
    elapsed_ms: float = 0.0
    rtts_ms: list = field(default_factory=list)
    connects_ms: list = field(default_factory=list)

    @property
    def loss_pct(self) -> float:
        """Probes without a valid reply, in percent of those sent."""
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def rtt(self) -> dict | None:
        return summarize(self.rtts_ms)

    def connect(self) -> dict | None:
        return summarize(self.connects_ms)

    def exit_status(self) -> int:
        """0 every probe answered; 1 some answered; 100 none."""
        if self.sent and self.received == self.sent:
            return 0
        return 1 if self.received else 100

    def as_json(self, connect: bool = False) -> dict:
        """The C{--json} object."""
        out = {
            "transport": self.transport, "target": self.target, "size": self.size,
            "sent": self.sent, "received": self.received, "lost": self.lost,
            "errors": self.errors, "duplicates": self.duplicates, "late": self.late,
            "reordered": self.reordered, "loss_pct": round(self.loss_pct, 3),
            "time_ms": round(self.elapsed_ms, 3), "rtt_ms": _rounded(self.rtt()),
        }
        if connect:
            out["connect_ms"] = _rounded(self.connect())
        return out


def _rounded(summary: dict | None) -> dict | None:
    return None if summary is None else {k: round(v, 3) for k, v in summary.items()}


@dataclass
class Event:
    """
    One thing to report about a probe: C{kind} is C{reply}, C{timeout},
    C{error}, C{late} or C{duplicate}.
    """

    kind: str
    seq: int
    size: int = 0
    rtt_ms: float | None = None
    connect_ms: float | None = None
    reason: str = ""


class _Probe:
    __slots__ = ("seq", "data", "sent_at", "timer", "state", "connect_ms", "conn")

    def __init__(self, seq: int, data: bytes) -> None:
        self.seq = seq
        self.data = data
        self.sent_at = 0.0
        self.timer = None
        self.state = "waiting"  # then: answered, timeout, error
        self.connect_ms = None
        self.conn = None


@implementer(interfaces.IHandshakeListener)
class _StreamConnection(protocol.Protocol):
    """
    One stream connection of the pinger: replies split at LF and handed to
    C{on_line}; C{ready} fires once it can carry probes (after the TLS
    handshake on TLS), C{closed} when it has gone.
    """

    def __init__(self, pinger: "Pinger", tls: bool) -> None:
        self.pinger = pinger
        self.tls = tls
        self.buffer = bytearray()
        self.searched = 0
        self.queue: deque = deque()  # probes sent on it, answered in this order
        self.ready = defer.Deferred()
        self.closed = defer.Deferred()
        self.lost = None

    def connectionMade(self) -> None:
        # Probes are small writes timed one by one: Nagle's algorithm would
        # hold one back until the last is acknowledged (40 ms with delayed
        # ACKs). TLS's wrapper passes the call on to the TCP transport.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        if not self.tls:
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\n", self.searched)
            if end < 0:
                self.searched = len(buffer)
                return
            line = bytes(buffer[: end + 1])
            del buffer[: end + 1]
            self.searched = 0
            self.pinger._stream_line(self, line)

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:
        self.lost = reason
        if not self.ready.called:
            self.ready.errback(reason)
        self.pinger._stream_lost(self, reason)
        self.closed.callback(None)


class _Datagrams(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, pinger: "Pinger") -> None:
        self.pinger = pinger
        self.closing = False

    def datagramReceived(self, data: bytes, addr) -> None:
        self.pinger._datagram(data)

    def connectionRefused(self) -> None:
        self.pinger._refused()

    def stopProtocol(self) -> None:
        # The epoll reactor closes a connected UDP port on a pending ICMP
        # error without calling connectionRefused (see TRAPS.md).
        if not self.closing:
            self.pinger._refused()


class Pinger:
    """
    One run of probes. Build it, C{await pinger.run()} for the
    L{Statistics}; C{pinger.stop()} ends the run early (Ctrl-C) with the
    statistics so far.

    @param target: C{(host, port)}, or a socket path for C{unix}.
    @param tls: for C{tls}, a L{netecho.cli.tls.ClientTLS} (or anything with
        its C{creator}, C{wrap}, C{check} and C{failure}).
    @param report: called with an L{Event} for every probe outcome.
    @param clock: a monotonic clock in seconds (for the round-trip times).
    """

    def __init__(self, reactor, transport: str, target, *, count: int = 5, interval: float = 1.0,
                 size: int = 64, timeout: float = 1.0, connect: bool = False, tls=None,
                 report: Callable[[Event], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r} ({', '.join(TRANSPORTS)})")
        if size < MIN_SIZE:
            raise ValueError(f"size {size} is less than {MIN_SIZE} bytes")
        limit = MAX_UDP_SIZE if transport == "udp" else MAX_STREAM_SIZE
        if size > limit:
            raise ValueError(f"size {size} is more than {limit}")
        if connect and transport not in ("tcp", "tls"):
            raise ValueError("a connection per probe is for tcp and tls")
        if transport == "tls" and tls is None:
            raise ValueError("tls needs its settings (tls=ClientTLS(...))")
        self.reactor = reactor
        self.transport = transport
        self.network = "unix" if transport == "unix" else ("udp" if transport == "udp" else "tcp")
        self.count = count
        self.interval = interval
        self.size = size
        self.timeout = timeout
        self.connect_each = connect
        self.tls = tls
        self.report = report or (lambda event: None)
        self.clock = clock
        self.token = os.urandom(3).hex().encode()
        if transport == "unix":
            self.host, self.port = None, None
            self.target = target
        else:
            self.host, self.port = target
            self.target = join_host_port(self.host, self.port)
        self.stats = Statistics(transport, self.target, size)
        self.probes: dict[int, _Probe] = {}
        self.outstanding = 0
        self.highest_answered = 0
        self.stopped = False
        self.sending_done = False
        self.finished = defer.Deferred()
        self._sleep = None
        self._conn: _StreamConnection | None = None
        self._connecting = None
        self._udp = None
        self._fatal: UserError | None = None
        self._answered_once = False
        self._forgotten = 0  # probes up to this one were forgotten (see _send)
        self._start = 0.0
        self._last_sent = 0.0

    # -- the schedule

    async def run(self) -> Statistics:
        """
        Send the probes on schedule (probe k leaves at start + k*interval,
        whatever the earlier ones took) and wait for the last one's reply
        or timeout.

        @raise UserError: the target could not be reached at all.
        """
        try:
            await self._open()
            self._start = self.clock()
            seq = 0
            while not self.stopped and (self.count == 0 or seq < self.count):
                # Always through the reactor, even when the probe is due
                # already (a short -i): replies, timeouts and Ctrl-C must run.
                delay = max(0.0, self._start + seq * self.interval - self.clock())
                self._sleep = defer.Deferred()
                call = self.reactor.callLater(delay, self._sleep.callback, None)
                self._sleep.addErrback(lambda f: (call.cancel(), f.trap(defer.CancelledError)))
                await self._sleep
                self._sleep = None
                if self.stopped:
                    break
                seq += 1
                self._send(seq)
                if self._fatal is not None:
                    raise self._fatal
            self.sending_done = True
            self._check_finished()
            await self.finished
            if self._fatal is not None and not self._answered_once:
                raise self._fatal
        finally:
            self._end_time()
            self.stopped = True
            await self._close()
        return self.stats

    def stop(self) -> None:
        """End the run now; probes still waiting for their reply are not counted."""
        if self.stopped:
            return
        self.stopped = True
        self._end_time()
        if self._sleep is not None:
            self._sleep.cancel()
        for probe in list(self.probes.values()):
            if probe.state == "waiting":
                # Still within its timeout: not counted (neither sent nor
                # lost), so Ctrl-C on a healthy server still exits 0.
                probe.state = "cancelled"
                if probe.timer is not None and probe.timer.active():
                    probe.timer.cancel()
                probe.timer = None
                self.stats.sent -= 1
                self.outstanding -= 1
        self.sending_done = True
        self._check_finished()

    def _end_time(self) -> None:
        if not self.stats.elapsed_ms and self._start:
            self.stats.elapsed_ms = (self._last_sent - self._start) * 1000

    def _check_finished(self) -> None:
        if self.sending_done and self.outstanding == 0 and not self.finished.called:
            self.finished.callback(None)

    # -- opening and closing

    async def _open(self) -> None:
        if self.transport == "udp":
            await self._open_udp()
        elif not self.connect_each:
            self._conn = await self._dial()

    async def _close(self) -> None:
        for probe in self.probes.values():
            if probe.timer is not None and probe.timer.active():
                probe.timer.cancel()
        closing = []
        if self._udp is not None:
            self._udp.protocol.closing = True
            closing.append(defer.maybeDeferred(self._udp.stopListening))
        conns = {p.conn for p in self.probes.values() if p.conn is not None}
        if self._conn is not None:
            conns.add(self._conn)
        for conn in conns:
            if conn.lost is None and conn.transport is not None:
                conn.transport.loseConnection()
                closing.append(conn.closed)
        if closing:
            await defer.gatherResults(closing)

    def _endpoint(self):
        if self.transport == "unix":
            return endpoints.UNIXClientEndpoint(self.reactor, self.target, timeout=self.timeout)
        if is_ip(self.host):
            # An address needs no lookup; HostnameEndpoint would also leave
            # its attempt loop's timer running for a moment after a refusal.
            kind = endpoints.TCP6ClientEndpoint if ":" in self.host else endpoints.TCP4ClientEndpoint
            endpoint = kind(self.reactor, self.host, self.port, timeout=self.timeout)
        else:
            endpoint = endpoints.HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.timeout)
        return self.tls.wrap(endpoint) if self.transport == "tls" else endpoint

    async def _dial(self) -> _StreamConnection:
        conn = _StreamConnection(self, self.transport == "tls")
        try:
            await endpoints.connectProtocol(self._endpoint(), conn)
        except Exception as e:
            raise dial_error(self.network, self.target, e) from None
        try:
            await conn.ready
        except Exception as e:
            raise self._handshake_error(conn, e) from None
        if self.transport == "tls":
            reason = self.tls.check(conn.transport.getHandle())
            if reason is not None:
                conn.transport.abortConnection()
                await conn.closed
                raise UserError(f"tls {self.target}: {reason}")
        return conn

    def _handshake_error(self, conn: _StreamConnection, exc: BaseException) -> UserError:
        if self.transport == "tls":
            handle = conn.transport.getHandle() if conn.transport is not None else None
            return self.tls.failure(self.target, exc, handle)
        return io_error("read", self.network, self.target, exc)

    async def _open_udp(self) -> None:
        ip = self.host
        if not is_ip(ip):
            from netecho.cli.udp import resolve  # the same lookup as `netecho udp`
            ip = await resolve(self.reactor, self.host, self.port)
        self.target = join_host_port(ip, self.port)
        self.stats.target = self.target
        self._udp = self.reactor.listenUDP(0, _Datagrams(self), interface="::" if ":" in ip else "0.0.0.0",
                                           maxPacketSize=MAX_DATAGRAM)
        self._udp.connect(ip, self.port)

    # -- probes

    def _send(self, seq: int) -> None:
        probe = _Probe(seq, payload(seq, self.token, self.size))
        self.probes[seq] = probe
        # Memory stays flat however long it runs (-c 0): settled probes are
        # forgotten past the last KEPT_PROBES (a reply to one that old is
        # ignored, as a reply to no probe of this run).
        kept = KEPT_PROBES if self.transport == "udp" else 16
        while len(self.probes) > kept:
            oldest = next(iter(self.probes.values()))
            if oldest.state == "waiting":
                break
            del self.probes[oldest.seq]
            self._forgotten = oldest.seq
        self.outstanding += 1
        self.stats.sent += 1
        self._last_sent = self.clock()
        if self.connect_each:
            defer.ensureDeferred(self._probe_with_connection(probe))
            return
        if self.transport == "udp":
            probe.timer = self.reactor.callLater(self.timeout, self._expire, probe)
            probe.sent_at = self.clock()
            try:
                self._udp.write(probe.data)
            except (OSError, error.MessageLengthError) as e:
                self._resolve(probe, "error", reason=f"write udp {self.target}: {_why(e)}")
            return
        if self._conn is None or self._conn.lost is not None:
            # The server closed the connection: the next probe opens another.
            self._conn = None
            probe.timer = self.reactor.callLater(self.timeout, self._expire, probe)
            defer.ensureDeferred(self._redial_then_send(probe))
            return
        self._stream_send(self._conn, probe)

    def _stream_send(self, conn: _StreamConnection, probe: _Probe) -> None:
        if probe.timer is None:
            probe.timer = self.reactor.callLater(self.timeout, self._expire, probe)
        probe.conn = conn
        conn.queue.append(probe)
        probe.sent_at = self.clock()
        conn.transport.write(probe.data)

    async def _redial_then_send(self, probe: _Probe) -> None:
        waiter = defer.Deferred()
        if self._connecting is None:
            self._connecting = [waiter]
            defer.ensureDeferred(self._dial()).addBoth(self._dialed)
        else:
            self._connecting.append(waiter)
        conn = await waiter
        if probe.state != "waiting":
            return
        if isinstance(conn, UserError):
            self._resolve(probe, "error", reason=str(conn))
        elif conn.lost is not None:
            self._resolve(probe, "error", reason=f"read {self.network} {self.target}: connection closed by the server")
        else:
            self._stream_send(conn, probe)

    def _dialed(self, result) -> None:
        waiters, self._connecting = self._connecting, None
        if isinstance(result, Failure):
            result = result.value if result.check(UserError) else UserError(str(result.value))
        else:
            self._conn = result
            if self.stopped:
                result.transport.loseConnection()
        for waiter in waiters:
            waiter.callback(result)

    async def _probe_with_connection(self, probe: _Probe) -> None:
        began = self.clock()
        try:
            conn = await self._dial()
        except UserError as e:
            if self.stopped or probe.state != "waiting":
                return
            if not self._answered_once and probe.seq == 1:
                # The very first connection failed: the target cannot be reached.
                self._fatal = e
                self._resolve(probe, "error", reason=str(e), report=False)
                self.stop()
                return
            self._resolve(probe, "error", reason=str(e))
            return
        if self.stopped or probe.state != "waiting":
            conn.transport.loseConnection()
            return
        probe.connect_ms = (self.clock() - began) * 1000
        self._stream_send(conn, probe)

    def _expire(self, probe: _Probe) -> None:
        probe.timer = None
        if probe.state == "waiting":
            self._resolve(probe, "timeout")

    def _resolve(self, probe: _Probe, state: str, report: bool = True, rtt_ms: float | None = None,
                 reason: str = "") -> None:
        probe.state = state
        self.outstanding -= 1
        if probe.timer is not None and probe.timer.active():
            probe.timer.cancel()
        probe.timer = None
        if state == "answered":
            self.stats.received += 1
            self.stats.rtts_ms.append(rtt_ms)
            if probe.connect_ms is not None:
                self.stats.connects_ms.append(probe.connect_ms)
            self._answered_once = True
            if report:
                self.report(Event("reply", probe.seq, len(probe.data), rtt_ms, probe.connect_ms))
        elif state == "timeout":
            self.stats.lost += 1
            if report:
                self.report(Event("timeout", probe.seq, reason=f"{self.timeout:g} s"))
        else:
            self.stats.errors += 1
            if report:
                self.report(Event("error", probe.seq, reason=reason))
        if self.connect_each and probe.conn is not None and probe.conn.lost is None:
            probe.conn.transport.loseConnection()
        self._check_finished()

    def _answer(self, probe: _Probe, reply: bytes, now: float) -> None:
        """A reply that belongs to C{probe}: check it and count it."""
        rtt_ms = (now - probe.sent_at) * 1000
        if reply != probe.data:
            if probe.state == "waiting":
                self._resolve(probe, "error", reason=_difference(probe.data, reply))
            return
        if probe.state == "waiting":
            if probe.seq < self.highest_answered:
                self.stats.reordered += 1
            self.highest_answered = max(self.highest_answered, probe.seq)
            self._resolve(probe, "answered", rtt_ms=rtt_ms)
        elif probe.state == "timeout":
            self.stats.late += 1
            probe.state = "late"
            self.report(Event("late", probe.seq, len(reply), rtt_ms))
        elif probe.state in ("answered", "late"):
            self.stats.duplicates += 1
            self.report(Event("duplicate", probe.seq, len(reply), rtt_ms))

    # -- replies

    def _datagram(self, data: bytes) -> None:
        now = self.clock()
        probe = None
        head = data[:40].split(b" ", 2)
        if len(head) == 3 and head[1] == self.token and head[0].isdigit():
            probe = self.probes.get(int(head[0]))
            if probe is None and int(head[0]) <= self._forgotten:
                return  # a reply to a probe settled long ago
        if probe is None:
            # Garbled beyond telling which probe it answers: the oldest
            # waiting probe is the likeliest.
            waiting = [p for p in self.probes.values() if p.state == "waiting"]
            if waiting:
                self._resolve(waiting[0], "error", reason=_difference(waiting[0].data, data))
            return
        self._answer(probe, data, now)

    def _refused(self) -> None:
        if self.stopped:
            return
        self._fatal = UserError(f"read udp {self.target}: connection refused")
        for probe in list(self.probes.values()):
            if probe.state == "waiting":
                self._resolve(probe, "error", reason=str(self._fatal), report=self._answered_once)
        self.stop()

    def _stream_line(self, conn: _StreamConnection, line: bytes) -> None:
        now = self.clock()
        if not conn.queue:
            self.stats.duplicates += 1  # more lines than probes: an echo answered twice
            self.report(Event("duplicate", 0, len(line)))
            return
        probe = conn.queue.popleft()
        self._answer(probe, line, now)

    def _stream_lost(self, conn: _StreamConnection, reason: Failure) -> None:
        if self.stopped or self.connect_each and not conn.queue:
            return
        why = f"read {self.network} {self.target}: connection closed by the server"
        if self.transport == "tls" and not reason.check(error.ConnectionDone, error.ConnectionLost):
            why = str(self.tls.failure(self.target, reason.value, conn.transport.getHandle()))
        elif not reason.check(error.ConnectionDone):
            why = str(io_error("read", self.network, self.target, reason.value))
        while conn.queue:
            probe = conn.queue.popleft()
            if probe.state == "waiting":
                self._resolve(probe, "error", reason=why)


def _why(exc: BaseException) -> str:
    if isinstance(exc, error.MessageLengthError):
        return "message too long"
    return (getattr(exc, "strerror", None) or str(exc)).lower()


def _difference(expected: bytes, got: bytes) -> str:
    if len(got) != len(expected):
        return f"corrupted reply ({len(got)} bytes, {len(expected)} sent)"
    at = next(i for i, (a, b) in enumerate(zip(expected, got)) if a != b)
    return f"corrupted reply (byte {at} differs)"


def ping(reactor, transport: str, target, **options) -> defer.Deferred:
    """
    Probe C{target}; a Deferred firing with the L{Statistics} (or failing
    with L{UserError} when the target cannot be reached). Keywords are
    L{Pinger}'s: C{count}, C{interval}, C{size}, C{timeout}, C{connect},
    C{tls}, C{report}, C{clock}.
    """
    return defer.ensureDeferred(Pinger(reactor, transport, target, **options).run())
