"""
Baseline: stock Twisted echo, as its documentation writes it.

TCP and Unix: twisted.protocols.wire.Echo. UDP: a DatagramProtocol that
sends every datagram back, on listenUDP with its default maxPacketSize (8192
bytes, so longer datagrams arrive truncated: that is stock Twisted). Default
reactor (epoll on Linux). Prints one line, ``READY tcp=P udp=P unix=PATH``,
once everything listens; runs until killed.

    python twisted_echo.py --tcp 0 --udp 0 --unix /tmp/x.sock
"""

import argparse
import sys

from twisted.internet import protocol, reactor
from twisted.protocols.wire import Echo


class UDPEcho(protocol.DatagramProtocol):
    noisy = False

    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", type=int)
    p.add_argument("--udp", type=int)
    p.add_argument("--unix")
    args = p.parse_args()
    factory = protocol.Factory.forProtocol(Echo)
    factory.noisy = False
    ready = []
    if args.tcp is not None:
        port = reactor.listenTCP(args.tcp, factory, interface="127.0.0.1")
        ready.append(f"tcp={port.getHost().port}")
    if args.udp is not None:
        port = reactor.listenUDP(args.udp, UDPEcho(), interface="127.0.0.1")
        ready.append(f"udp={port.getHost().port}")
    if args.unix is not None:
        reactor.listenUNIX(args.unix, factory)
        ready.append(f"unix={args.unix}")
    print("READY " + " ".join(ready), flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
