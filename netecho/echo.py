"""RFC 862 echo: every byte received goes back unchanged, in order."""

from __future__ import annotations

from twisted.internet import interfaces, protocol
from zope.interface import implementer


@implementer(interfaces.IHalfCloseableProtocol)
class Echo(protocol.Protocol):
    """
    Stream echo. A client that sends but never reads is paused (the
    transport is its own producer: it stops reading while its write buffer
    is full); a client that shuts down its sending side gets everything
    echoed, then the close.
    """

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


class EchoFactory(protocol.Factory):
    """Builds L{Echo} protocols."""

    protocol = Echo
    noisy = False


class DatagramEcho(protocol.DatagramProtocol):
    """UDP echo: every datagram goes back whole to its sender."""

    noisy = False

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        self.transport.write(data, addr)
