"""``netecho udp HOST:PORT``: send a datagram, print the reply."""

from __future__ import annotations

import argparse
import socket
import sys

from twisted.internet import defer, error, protocol, threads

from netecho.address import is_ip, join_host_port
from netecho.cli.types import host_port, positive, whole
from netecho.datagram import MAX_DATAGRAM
from netecho.errors import UserError

DEFAULT_MESSAGE = "Hello UDP Echo server!"


class _Refused(Exception):
    pass


class ReplyCatcher(protocol.DatagramProtocol):
    """A connected UDP socket: the kernel passes only the server's replies."""

    noisy = False

    def __init__(self) -> None:
        self.replies: defer.DeferredQueue = defer.DeferredQueue()
        self.closing = False

    def datagramReceived(self, data: bytes, addr) -> None:
        self.replies.put(data)

    def connectionRefused(self) -> None:
        # ICMP port unreachable for an earlier datagram.
        self.replies.put(_Refused())

    def stopProtocol(self) -> None:
        # The epoll reactor reports a connected UDP socket's pending ICMP
        # error as a lost connection and closes the port, without calling
        # connectionRefused: it is the same refusal.
        if not self.closing:
            self.replies.put(_Refused())


async def resolve(reactor, host: str, port: int) -> str:
    """The IP address to send to (the first getaddrinfo answer)."""
    if is_ip(host):
        return host
    try:
        infos = await threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), socket.getaddrinfo, host, port, 0, socket.SOCK_DGRAM
        )
    except socket.gaierror:
        raise UserError(f"dial udp: lookup {host}: no such host") from None
    return infos[0][4][0]


async def query(reactor, args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    host, port = args.address
    ip = await resolve(reactor, host, port)
    target = join_host_port(ip, port)
    out.write(f"The UDP server is {target}\n")
    out.flush()
    message = args.message.encode() + b"\n"
    catcher = ReplyCatcher()
    udp = reactor.listenUDP(0, catcher, interface="::" if ":" in ip else "0.0.0.0",
                            maxPacketSize=MAX_DATAGRAM)
    try:
        udp.connect(ip, port)
        tries = args.retries + 1
        for _ in range(tries):
            try:
                udp.write(message)
            except error.MessageLengthError:
                raise UserError(f"write udp {target}: message too long ({len(message)} bytes)") from None
            except OSError as e:
                raise UserError(f"write udp {target}: {e.strerror.lower()}") from None
            d = catcher.replies.get()
            d.addTimeout(args.timeout, reactor)
            try:
                reply = await d
            except defer.TimeoutError:
                continue
            if isinstance(reply, _Refused):
                raise UserError(f"read udp {target}: connection refused")
            text = reply.decode("utf-8", "backslashreplace")
            out.write(f"Reply: {text[:-1] if text.endswith(chr(10)) else text}\n")
            out.flush()
            return 0
        raise UserError(f"no reply from {target} after {tries} {'try' if tries == 1 else 'tries'}")
    finally:
        catcher.closing = True
        await defer.maybeDeferred(udp.stopListening)


def run(args: argparse.Namespace) -> int:
    from netecho.cli.runner import run as run_on_reactor

    return run_on_reactor(lambda reactor: query(reactor, args))


def register(sub) -> None:
    """Add the C{udp} subcommand."""
    p = sub.add_parser(
        "udp",
        help="send one datagram to a UDP echo server and print the reply",
        description="Send one datagram (TEXT and a newline) and print 'Reply: ...'. "
        "Exit 100 with 'no reply from IP:PORT after N tries' when nothing answers.",
    )
    p.add_argument("address", metavar="HOST:PORT", type=host_port)
    p.add_argument("--message", "-m", metavar="TEXT", default=DEFAULT_MESSAGE,
                   help=f"text to send (a newline is added; default {DEFAULT_MESSAGE!r})")
    p.add_argument("--timeout", type=positive, default=2.0, metavar="S",
                   help="seconds to wait for a reply to each try (default 2)")
    p.add_argument("--retries", type=whole, default=2, metavar="N",
                   help="extra tries when no reply comes (default 2)")
    p.set_defaults(run=run)
