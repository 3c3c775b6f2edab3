"""The random-number service: every line received gets a random number."""

from __future__ import annotations

import random

from twisted.internet import interfaces, protocol
from zope.interface import implementer

#: Answers are uniform in [0, RANDOM_LIMIT), like Go's rand.Int31.
RANDOM_LIMIT = 2**31


@implementer(interfaces.IHalfCloseableProtocol)
class RandomNumber(protocol.Protocol):
    """
    Answers each received line (LF-terminated, whatever its length or
    content) with a random number and a newline. Only line ends are
    counted, so a long line costs no memory; a client that does not read
    its answers is paused, as the echo's are.
    """

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        lines = data.count(b"\n")
        if lines:
            below = self.factory.rng.randrange
            self.transport.write("".join([f"{below(RANDOM_LIMIT)}\n" for _ in range(lines)]).encode("ascii"))

    def readConnectionLost(self) -> None:
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
