"""Lines in and out for the interactive clients: stdin, and an echo connection."""

from __future__ import annotations

import os
import stat

from twisted.internet import defer, fdesc, interfaces, protocol
from twisted.internet.error import ConnectionDone
from zope.interface import implementer


@implementer(interfaces.IReadDescriptor)
class StdinLines:
    """
    Lines of standard input (each with its LF, the last maybe without), read
    without blocking the reactor; C{None} marks the end of input. A regular
    file or /dev/null (which epoll cannot watch) is read at once.
    """

    def __init__(self, reactor, fd: int = 0) -> None:
        self.reactor = reactor
        self.fd = fd
        self.queue: defer.DeferredQueue = defer.DeferredQueue()
        self._buffer = b""
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            self._eof()
            return
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) and not os.isatty(fd)):
            fdesc.setNonBlocking(fd)
            try:
                reactor.addReader(self)
                return
            except OSError:
                fdesc.setBlocking(fd)  # not pollable: read it whole below
        with os.fdopen(os.dup(fd), "rb") as f:
            self._feed(f.read())
        self._eof()

    def get(self) -> defer.Deferred:
        """The next line (bytes), or None at the end of input."""
        return self.queue.get()

    def _feed(self, data: bytes) -> None:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self.queue.put(line + b"\n")

    def _eof(self) -> None:
        if self._buffer:
            self.queue.put(self._buffer)
            self._buffer = b""
        self.queue.put(None)

    def fileno(self) -> int:
        return self.fd

    def doRead(self):
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if data:
            self._feed(data)
            return None
        self.reactor.removeReader(self)
        self._eof()
        return None

    def connectionLost(self, reason) -> None:
        # epoll reports a pipe's end as a hang-up, not as readable: take
        # what is left, then end the input.
        self.reactor.removeReader(self)
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                break
            if not data:
                break
            self._feed(data)
        self._eof()

    def logPrefix(self) -> str:
        return "stdin"


class LineConnection(protocol.Protocol):
    """
    The network side: replies are read up to each LF, however the server's
    bytes were split or merged in transit.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: defer.Deferred | None = None
        self._lost = None
        self.closed = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def _deliver(self) -> None:
        if self._waiting is None:
            return
        end = self._buffer.find(b"\n")
        if end >= 0:
            line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
        elif self._lost is not None and self._buffer:
            line, self._buffer = self._buffer, b""
        elif self._lost is not None:
            d, self._waiting = self._waiting, None
            d.errback(self._lost)
            return
        else:
            return
        d, self._waiting = self._waiting, None
        d.callback(line)

    def read_line(self) -> defer.Deferred:
        """The next line the server sends (with its LF if it sent one)."""
        self._waiting = defer.Deferred(lambda d: setattr(self, "_waiting", None))
        d = self._waiting
        self._deliver()
        return d

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason=ConnectionDone) -> None:
        self._lost = reason
        self._deliver()
        self.closed.callback(None)
