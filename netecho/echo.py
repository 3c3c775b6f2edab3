"""RFC 862 stream echo: byte-exact, half-close aware, with a stop word."""

from __future__ import annotations

import time
from typing import Callable

from errno import EAGAIN

from twisted.internet import interfaces, main, protocol, tcp, unix
from twisted.logger import Logger
from zope.interface import implementer

from netecho.address import describe
from netecho.limits import Guard
from netecho.stats import Stats
from netecho.stopword import StopWordScanner

try:
    # One read turn of the echo in C (netecho/_speedups.c), if it was built.
    from netecho._speedups import echo_stream
except ImportError:  # pragma: no cover - depends on the build
    echo_stream = None

#: How many bytes of a payload a ``--log-data`` line shows.
LOG_DATA_LIMIT = 200


def escape(data: bytes, limit: int = LOG_DATA_LIMIT) -> str:
    """Printable, escaped, truncated form of a payload for the log."""
    shown = repr(data[:limit])[2:-1]
    if len(data) > limit:
        shown += f"... (+{len(data) - limit} bytes)"
    return shown


class StreamFactory(protocol.Factory):
    """
    What every netecho stream protocol shares: the counters, the stop word,
    what to do when a client says it, and whether payloads are logged.

    @ivar service: the name used in log lines (``echo``, ``random``).
    """

    service = "stream"

    def __init__(
        self,
        stats: Stats,
        stop_word: bytes = b"STOP",
        on_stop_word: Callable[[], None] | None = None,
        log_data: bool = False,
        clock: Callable[[], float] = time.monotonic,
        guard: Guard | None = None,
    ) -> None:
        self.stats = stats
        self.stop_word = stop_word
        self.on_stop_word = on_stop_word
        self.log_data = log_data
        self.clock = clock
        self.guard = guard

    def buildProtocol(self, addr):
        key = None
        if self.guard is not None:
            accepted, key = self.guard.admit(addr)
            if not accepted:
                return None  # Twisted closes the connection
        session = self.protocol()
        session.factory = self
        session._limit_key = key
        return session

    def doStart(self) -> None:
        # Twisted logs "Starting factory ..." at every listener start: noise.
        self.numPorts += 1

    def doStop(self) -> None:
        self.numPorts -= 1


@implementer(interfaces.IHalfCloseableProtocol)
class StreamSession(protocol.Protocol):
    """
    Bookkeeping common to stream services: counting the client, logging its
    connection, closing after the stop word, honouring half-close.
    Subclasses implement L{answer}.
    """

    log = Logger()
    factory: StreamFactory
    received = 0
    sent = 0
    _stopped_by_word = False
    _closing = False
    _limit_key = None

    def connectionMade(self) -> None:
        transport = self.transport
        # Stop reading while the write buffer is full: a client that sends
        # but never reads is paused instead of buffered without end.
        transport.registerProducer(transport, True)
        factory = self.factory
        stats = factory.stats
        self._stats = stats
        self._started = factory.clock()
        self.kind = "unix" if interfaces.IUNIXTransport.providedBy(transport) else "tcp"
        if self.kind == "unix":
            stats.unix += 1
        else:
            stats.tcp += 1
        self.label = "random" if factory.service == "random" else self.kind
        if factory.guard is not None:
            factory.guard.opened(self, self.label)
        self._scanner = StopWordScanner(factory.stop_word) if factory.stop_word else None
        self._log_data = factory.log_data

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.received += len(data)
        scanner = self._scanner
        if scanner is not None:
            end = scanner.feed(data)
            if end >= 0:
                self._stop_word_at(data, end)
                return
        self.answer(data)

    def _stop_word_at(self, data: bytes, end: int) -> None:
        """The stop line ends at C{data[end]}: answer up to it, then close."""
        self._stopped_by_word = True
        self._closing = True
        self.answer(data[:end])
        self._close()

    def answer(self, data: bytes) -> None:
        """Reply to C{data}, the next bytes of the stream."""
        raise NotImplementedError

    def readConnectionLost(self) -> None:
        # The client shut down its sending side: everything it sent has been
        # answered by now (or sits in the write buffer); flush, then close.
        self._closing = True
        self._close()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def _close(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    @property
    def peer(self) -> str:
        # Asked when needed, not at connect: behind the PROXY protocol the
        # client's real address is known only once the header has arrived.
        return describe(self.transport.getPeer())

    def connectionLost(self, reason: object = None) -> None:
        factory = self.factory
        if factory.guard is not None:
            factory.guard.closed(self, self.label, self._limit_key)
        closed = self._stats.closed_bytes
        closed[self.label] = closed.get(self.label, 0) + self.sent
        self.log.info(
            "{service} {kind} {peer} closed after {duration:.3f}s: "
            "{received} bytes in, {sent} bytes out{why}",
            service=factory.service,
            kind=self.kind,
            peer=self.peer,
            duration=factory.clock() - self._started,
            received=self.received,
            sent=self.sent,
            why=" (stop word)" if self._stopped_by_word else "",
        )
        if self._stopped_by_word and factory.on_stop_word is not None:
            factory.on_stop_word()


class Echo(StreamSession):
    """
    Sends back every byte it receives, unchanged and in order.

    When nothing is waiting in the transport's write buffer, the reply goes
    straight to the socket: Twisted's write() would hold it until the next
    reactor iteration (Twisted issue 5303), costing a writability
    registration, an extra epoll round and latency on every echo. Whatever
    the kernel does not take goes through write() as usual, so ordering,
    flow control and error handling stay Twisted's.
    """

    _sock = None
    #: The reactor's EchoTable (netecho._speedups), if it can serve this
    #: echo in C, and whether this echo is in it now.
    _echoes = None
    _fast = False
    _received = 0
    _sent = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        transport = self.transport
        if isinstance(transport, tcp.Connection):  # plain TCP or Unix, not TLS/PROXY wrappers
            self._sock = transport.socket
            if self.kind == "tcp":
                transport.setTcpNoDelay(True)
            if type(transport) in _PLAIN_SERVERS:
                self._recv = transport.socket.recv
                transport.doRead = self._doRead
                if echo_stream is not None:
                    self._fd = transport.socket.fileno()
                    transport.doRead = self._doReadInC
                    self._echoes = getattr(transport.reactor, "_echoes", None)

    # The byte counters: while this echo is in the reactor's table, what it
    # echoes is counted there, and reading a counter brings that count in.

    def _counter(name: str) -> property:  # noqa: N805 - used in the class body
        def get(self) -> int:
            if self._fast:
                self._count(self._echoes.take(self._fd))
            return getattr(self, name)

        def set_(self, value: int) -> None:
            setattr(self, name, value)

        return property(get, set_)

    received = _counter("_received")
    sent = _counter("_sent")
    del _counter

    def _count(self, n: int) -> None:
        """C{n} more bytes received and echoed in whole."""
        if n:
            self._received += n
            self._sent += n
            self._stats.bytes_counted += n

    def _leftTable(self, unsynced: int, pending) -> None:
        """This echo is out of the reactor's table: take back its state."""
        self._fast = False
        self._count(unsynced)
        if self._scanner is not None:
            self._scanner.pending = pending

    def _doReadInC(self):
        """
        L{_doRead} with netecho._speedups.echo_stream: recv, the stop-word
        scan and the send in one C call, the bytes never becoming a Python
        object. Anything unusual (bytes waiting in the transport's buffer,
        closing, --log-data, a stop line, a piece of the word pending) goes
        the Python way. After a usual turn, the echo joins the reactor's
        table (netecho's reactor only), which serves its next turns in C
        without calling this method; the reactor hands back what C cannot
        finish to L{_tableTurn}.
        """
        if self._fast:
            # An event the table does not serve (not plain EPOLLIN): this
            # turn is Python's, with the state the table holds.
            _, unsynced, pending = self._echoes.remove(self._fd)
            self._leftTable(unsynced, pending)
        transport = self.transport
        if transport.dataBuffer or transport._tempDataLen or self._closing or self._log_data:
            return self._doRead()
        scanner = self._scanner
        try:
            turn = echo_stream(self._fd, None if scanner is None else scanner.word,
                               None if scanner is None else scanner.pending)
        except OSError:
            return main.CONNECTION_LOST
        if turn is None:
            return None
        kind, n, pending, data = turn
        why = self._finishTurn(kind, n, pending, data)
        if kind == 0 and self._echoes is not None and not self._closing:
            self._echoes.add(self._fd, self, None if scanner is None else scanner.word, pending)
            self._fast = True
            self._stats.count_elsewhere(transport.reactor._countEchoes)
        return why

    def _tableTurn(self, turn):
        """
        A turn the reactor's table started and could not finish: it has
        already taken this echo out. Returns what doRead would.
        """
        kind, n, pending, data, unsynced = turn
        self._leftTable(unsynced, pending)
        if kind == 4:
            return main.CONNECTION_LOST
        return self._finishTurn(kind, n, pending, data)

    def _finishTurn(self, kind: int, n: int, pending, data):
        """The Python side of an echo_stream() turn; returns what doRead would."""
        if kind == 3:
            return main.CONNECTION_DONE
        if kind == 2:
            self.dataReceived(data)
            return None
        if self._scanner is not None:
            self._scanner.pending = pending
        self._count(n)
        if kind == 1:
            self.transport.write(data)
        return None

    def _doRead(self):
        """
        The transport's doRead for plain TCP and Unix connections, where
        netecho._speedups is not built (and for the unusual turns of
        L{_doReadInC}): recv(), then dataReceived. Twisted's Unix transport
        reads with recvmsg() to receive file descriptors, which an echo
        never takes; recv() is cheaper, and the kernel discards descriptors
        sent to a reader that does not ask for them.
        """
        try:
            data = self._recv(65536)
        except OSError as e:
            if e.errno == EAGAIN:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.dataReceived(data)
        return None

    def answer(self, data: bytes) -> None:
        n = len(data)
        sock = self._sock
        transport = self.transport
        if sock is not None and not transport.dataBuffer and not transport._tempDataLen:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # EAGAIN, or an error write() will find and report
            if sent < n:
                transport.write(data[sent:])
        else:
            transport.write(data)
        self.sent += n
        self._stats.bytes_counted += n
        if self._log_data:
            self.log.info("{peer} -> {data}", peer=self.peer, data=escape(data))


_PLAIN_SERVERS = (tcp.Server, unix.Server)


class EchoFactory(StreamFactory):
    """Builds L{Echo} protocols."""

    protocol = Echo
    service = "echo"
