"""The random-number service: every line received gets a random number."""

from __future__ import annotations

import random

from twisted.internet import interfaces, protocol
from zope.interface import implementer

#: Answers are uniform in [0, RANDOM_LIMIT), like Go's rand.Int31.
RANDOM_LIMIT = 2**31

#: Lines answered in one write (at most about 11 bytes each).
BATCH_LINES = 1024


@implementer(interfaces.IHalfCloseableProtocol, interfaces.IPushProducer)
class RandomNumber(protocol.Protocol):
    """
    Answers each received line (LF-terminated, whatever its length or
    content) with a random number and a newline. Only line ends are
    counted, so a long line costs no memory.

    One read of line feeds asks for ten times its size in numbers, so the
    answers are written in batches of L{BATCH_LINES} while the transport
    takes them: the protocol is the transport's producer, and while the
    write buffer is full it stops writing and stops reading (the lines
    still owed are only a count). A client that does not read costs at
    most the transport's buffer and one batch.
    """

    owed = 0
    _paused = False
    _closing = False

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        lines = data.count(b"\n")
        if lines:
            self.owed += lines
            self._answer()

    def _answer(self) -> None:
        below = self.factory.rng.randrange
        while self.owed and not self._paused:
            n = min(self.owed, BATCH_LINES)
            self.owed -= n
            self.transport.write("".join([f"{below(RANDOM_LIMIT)}\n" for _ in range(n)]).encode("ascii"))
        if not self.owed and self._closing:
            self._close()

    # The transport's producer: pausing writes pauses reading too.

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._answer()
        if not self._paused and not self._closing:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.owed = 0

    def readConnectionLost(self) -> None:
        # Everything asked for is answered, then the close.
        self._closing = True
        self._answer()

    def _close(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


class RandomNumberFactory(protocol.Factory):
    """Builds L{RandomNumber} protocols; C{rng} may be seeded for tests."""

    protocol = RandomNumber
    noisy = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
