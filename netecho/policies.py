"""
What every netecho service shares, wrapped around its protocol from
outside, once: counting, connection caps and idle tracking (through
L{netecho.limits.Guard}), the stop word, C{--log-data} and the
per-connection log line. The protocols (L{netecho.echo},
L{netecho.randomnum}, PB's broker) only say what they do with bytes.

L{Served} wraps a stream factory (echo, random, PB) and L{Session} each of
its protocols, as Twisted's L{policies.WrappingFactory} and
L{policies.ProtocolWrapper} do, and is the wrapped protocol's transport, so
it sees every byte both ways. L{ServedDatagrams} does the same for a
datagram protocol, with the UDP guards of L{netecho.datagram}. Faults on
purpose (L{netecho.faults}) are one more such policy: around a L{Session}
(the counting and the stop word see the client's bytes as they came), and
in L{ServedDatagrams}' replies.
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.internet import error, interfaces, protocol
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import alsoProvides, directlyProvides, providedBy

from netecho.address import describe, join_host_port, unmap
from netecho.limits import Guard
from netecho.stats import Stats
from netecho.stopword import Scanner, is_stop_datagram
from netecho.throttle import ThrottledLog
from netecho.transports import is_liveness_probe, peer_credentials, peer_gone

log = Logger()

#: How many bytes of a payload a ``--log-data`` line shows.
LOG_DATA_LIMIT = 200

#: How long a Unix connection named as a liveness probe may stay silent and
#: still not count as a client (a real probe connects and closes at once).
PROBE_GRACE = 2.0


def escape(data: bytes, limit: int = LOG_DATA_LIMIT) -> str:
    """Printable, escaped, truncated form of a payload for the log."""
    shown = repr(data[:limit])[2:-1]
    if len(data) > limit:
        shown += f"... (+{len(data) - limit} bytes)"
    return shown


class Session(policies.ProtocolWrapper):
    """
    One stream connection of a L{Served} factory: counts what goes each
    way, tracks the connection for the caps and the idle sweep, closes it
    after the stop word, logs its payloads (C{--log-data}) and, when it
    closes, one line with its peer, duration and byte counts.

    @ivar received: bytes received so far (the idle sweep watches it).
    @ivar sent: bytes sent so far.
    """

    factory: "Served"
    received = 0
    sent = 0
    kind = "tcp"
    _credentials = None
    _closing = False
    _stopped_by_word = False
    #: Not a client served until proven otherwise (L{ProbeSession}).
    probe = False
    #: What the connection caps admitted this connection with.
    limit_key = None

    def makeConnection(self, transport) -> None:
        factory = self.factory
        self.kind = "unix" if interfaces.IUNIXTransport.providedBy(transport) else "tcp"
        self._credentials = None
        #: The label of this connection in the counters: tcp or unix for
        #: the echo, else the service (random, pb).
        self.label = self.kind if factory.service == "echo" else factory.service
        self._stats = factory.stats
        #: When it opened, on the factory's clock.
        self.started = factory.clock()
        self._scanner = Scanner(factory.stop_word) if factory.stop_word else None
        self._log_data = factory.log_data
        self._stats.connection_opened(self.label, client=not self.probe)
        if factory.guard is not None:
            factory.guard.opened(self)
        # ProtocolWrapper.makeConnection: provide what the transport does,
        # then connect the wrapped protocol to this wrapper.
        directlyProvides(self, providedBy(transport))
        if interfaces.IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            # Twisted's ProtocolWrapper does not: a wrapped echo would lose
            # the tail of a half-closed client's stream.
            alsoProvides(self, interfaces.IHalfCloseableProtocol)
        protocol.Protocol.makeConnection(self, transport)
        if self.kind == "unix":
            self._credentials = peer_credentials(transport)
        factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)

    # What the client sends.

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.received += len(data)
        if self._log_data:
            log.info("{peer} -> {data}", peer=self.peer, data=escape(data))
        scanner = self._scanner
        if scanner is not None:
            end = scanner.feed(data)
            if end >= 0:
                # The stop line is answered like any other, then the close.
                self._stopped_by_word = True
                self._closing = True
                self.wrappedProtocol.dataReceived(data[:end])
                self.transport.unregisterProducer()
                self.loseConnection()
                return
        self.wrappedProtocol.dataReceived(data)

    def readConnectionLost(self) -> None:
        self._closing = True
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    # What the service sends back.

    def write(self, data: bytes) -> None:
        n = len(data)
        self.sent += n
        self._stats.sent(self.label, n)
        self.transport.write(data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    # The wrapped protocol registers this wrapper as its transport's producer.

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def peer_gone(self) -> bool:
        """Whether the peer has gone and is owed nothing (see L{transports.peer_gone})."""
        return peer_gone(self.transport)

    @property
    def peer(self) -> str:
        # Asked when needed, not at connect: behind the PROXY protocol the
        # client's real address is known only once the header has arrived.
        if self._credentials is not None:
            return self._credentials
        return describe(self.transport.getPeer())

    def connectionLost(self, reason=None) -> None:
        factory = self.factory
        if factory.guard is not None:
            factory.guard.closed(self)
        self._stats.connection_closed(self.label)
        self._log_closed()
        super().connectionLost(reason)
        if self._stopped_by_word and factory.on_stop_word is not None:
            factory.on_stop_word()

    def _log_closed(self) -> None:
        factory = self.factory
        log.info(
            "{service} {kind} {peer} closed after {duration:.3f}s: "
            "{received} bytes in, {sent} bytes out{why}",
            service=factory.service,
            kind=self.kind,
            peer=self.peer,
            duration=factory.clock() - self.started,
            received=self.received,
            sent=self.sent,
            why=" (stop word)" if self._stopped_by_word else "",
        )


class ProbeSession(Session):
    """
    A Unix connection whose peer is named as another server's liveness
    probe (L{netecho.transports.LIVENESS_PROBE}): a server checking whether
    this socket is live before reclaiming its path connects, sends nothing
    and closes. It is no client, so it is neither counted as one nor
    logged but at debug level. The name is taken at its word only while the
    connection sends nothing and for L{PROBE_GRACE} seconds (a real probe
    closes at once): its first byte, or staying longer, makes it a client
    like any other. The caps, the idle sweep and the active gauge see it
    all along.
    """

    probe = True

    def _now_a_client(self) -> None:
        self.probe = False
        self._stats.client_counted(self.label)

    def dataReceived(self, data: bytes) -> None:
        if self.probe:
            self._now_a_client()
        super().dataReceived(data)

    def _log_closed(self) -> None:
        if self.probe and self.factory.clock() - self.started > PROBE_GRACE:
            self._now_a_client()  # too long for a probe: a silent client
        if not self.probe:
            return super()._log_closed()
        log.debug(
            "{service} {kind} {peer}: a liveness probe (another server checking whether "
            "this socket is in use), not counted as a client",
            service=self.factory.service, kind=self.kind, peer=self.peer,
        )


class Served(policies.WrappingFactory):
    """
    Wraps the factory of a stream service (C{service}: C{echo}, C{random}
    or C{pb}) in L{Session}s: a connection the caps refuse is closed at
    once (Twisted closes it when buildProtocol returns None).

    @ivar stop_word: a line equal to it (trimmed) is answered, then that
        client is disconnected; empty: none.
    @ivar on_stop_word: called after a client that said the stop word has gone.
    """

    protocol = Session
    noisy = False

    def __init__(
        self,
        wrapped: protocol.Factory,
        stats: Stats,
        service: str = "echo",
        *,
        guard: Guard | None = None,
        stop_word: bytes = b"",
        on_stop_word: Callable[[], None] | None = None,
        log_data: bool = False,
        clock: Callable[[], float] = time.monotonic,
        faults=None,
    ) -> None:
        super().__init__(wrapped)
        self.stats = stats
        self.service = service
        #: netecho.faults.Faults for the services that take faults, or None.
        self.faults = faults
        self.guard = guard
        self.stop_word = stop_word
        self.on_stop_word = on_stop_word
        self.log_data = log_data
        self.clock = clock

    def buildProtocol(self, addr):
        key = None
        if self.guard is not None:
            accepted, key = self.guard.admit(addr)
            if not accepted:
                return None
        # (WrappingFactory.buildProtocol, with the probe's own session class.)
        session_class = ProbeSession if is_liveness_probe(getattr(addr, "name", None)) else self.protocol
        session = session_class(self, self.wrappedFactory.buildProtocol(addr))
        session.limit_key = key
        if self.faults is not None:
            return self.faults.wrap(session)  # (the session itself when no stream faults are in force)
        return session


class ServedDatagrams(protocol.DatagramProtocol):
    """
    Wraps a datagram protocol: datagrams the guard refuses never reach it;
    what it writes is counted (a failed send is counted and logged, one
    datagram lost, never the service); the stop word and C{--log-data}
    as for streams. It is the wrapped protocol's transport.
    """

    noisy = False

    def __init__(
        self,
        wrapped: protocol.DatagramProtocol,
        stats: Stats,
        *,
        guard=None,
        stop_word: bytes = b"",
        on_stop_word: Callable[[], None] | None = None,
        log_data: bool = False,
        faults=None,
    ) -> None:
        self.wrapped = wrapped
        #: netecho.faults.Faults, or None.
        self.faults = faults
        self.stats = stats
        self.guard = guard
        self.stop_word = stop_word if on_stop_word is not None else b""
        self.on_stop_word = on_stop_word
        self.log_data = log_data
        self.throttled = ThrottledLog(log)

    def startProtocol(self) -> None:
        if self.guard is not None:
            self.guard.bound(self.transport.getHost())
        self.wrapped.makeConnection(self)

    def stopProtocol(self) -> None:
        if self.faults is not None:
            self.faults.cancel()  # replies still waiting for their time
        self.wrapped.doStop()

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        guard = self.guard
        if guard is not None and not guard.admit(addr):
            return
        if self.log_data:
            log.info("{peer} -> {data}", peer=join_host_port(unmap(addr[0]), addr[1]), data=escape(data))
        self.wrapped.datagramReceived(data, addr)
        if self.stop_word and is_stop_datagram(data, self.stop_word):
            self.on_stop_word()

    def kernelDropped(self, n: int) -> None:
        """The port says the kernel dropped C{n} datagrams (a full receive buffer)."""
        self.stats.drop("udp_kernel_dropped", n)
        self.throttled.warn(
            "udp_kernel_dropped",
            "udp: the kernel dropped {n} datagrams (receive buffer full; see --udp-rcvbuf)",
            n=n,
        )

    def write(self, data: bytes, addr: tuple) -> None:
        faults = self.faults
        if faults is not None and faults.datagram:
            faults.send_datagram(self._send, data, addr)
        else:
            self._send(data, addr)

    def _send(self, data: bytes, addr: tuple) -> None:
        try:
            self.transport.write(data, addr)
        except (OSError, error.MessageLengthError) as e:
            self._send_failed(addr, e)
            return
        self.stats.datagram_sent(len(data), addr)

    def datagramNotSent(self, data: bytes, addr: tuple, reason: Exception) -> None:
        """
        netecho's UDP port sent a batch of replies after write() returned
        (netecho/transports.py): this one failed.
        """
        self.stats.datagram_unsent(len(data))
        self._send_failed(addr, reason)

    def _send_failed(self, addr: tuple, reason: Exception) -> None:
        # EAGAIN, EMSGSIZE, ENETUNREACH...: one datagram lost, not the service.
        self.stats.drop("udp_send_error")
        self.throttled.warn(
            "udp_send_error",
            "udp: reply to {peer} failed: {error}",
            peer=join_host_port(unmap(addr[0]), addr[1]),
            error=(getattr(reason, "strerror", None) or str(reason)).lower(),
        )

    def getHost(self):
        return self.transport.getHost()

    def __getattr__(self, name: str):
        # The rest of the transport's interface (as ProtocolWrapper does).
        return getattr(self.transport, name)
