"""``netecho tcp HOST:PORT`` and ``netecho unix PATH``: line clients for stream echo."""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet import defer, endpoints, interfaces, task
from zope.interface import implementer

from netecho.address import join_host_port
from netecho.cli import tls as tls_options
from netecho.cli.lines import LineConnection, StdinLines
from netecho.cli.types import host_port, positive, whole
from netecho.errors import EXIT_USAGE, UserError, dial_error, io_error


def _show(reply: bytes) -> str:
    text = reply.decode("utf-8", "backslashreplace")
    return text[:-1] if text.endswith("\n") else text


@implementer(interfaces.IHandshakeListener)
class TLSLineConnection(LineConnection):
    """A L{LineConnection} that knows when its TLS handshake is done (C{handshake})."""

    def __init__(self) -> None:
        super().__init__()
        self.handshake = defer.Deferred()

    def handshakeCompleted(self) -> None:
        self.handshake.callback(None)

    def connectionLost(self, reason=None) -> None:
        if not self.handshake.called:
            self.handshake.errback(reason)
        super().connectionLost(reason)


class StreamClient:
    """One connection to a stream echo server, and the ways of using it."""

    tls: tls_options.ClientTLS | None = None  # set by --tls

    def __init__(self, reactor, args: argparse.Namespace, network: str) -> None:
        self.reactor = reactor
        self.args = args
        self.network = network
        self.out = sys.stdout
        if network == "unix":
            self.target = args.path
            self.endpoint = endpoints.UNIXClientEndpoint(reactor, args.path, timeout=args.timeout)
            self.name = "Unix"
        else:
            host, port = args.address
            self.target = join_host_port(host, port)
            self.endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=args.timeout)
            self.name = "TCP"
            if getattr(args, "tls", False):
                self.tls = tls_options.ClientTLS.from_args(args, host)
                self.endpoint = self.tls.wrap(self.endpoint)
        self.stop_word = args.stop_word.strip().encode()

    async def connect(self) -> None:
        try:
            self.conn = await endpoints.connectProtocol(
                self.endpoint, LineConnection() if self.tls is None else TLSLineConnection()
            )
        except Exception as e:
            raise dial_error(self.network, self.target, e) from None
        if self.tls is not None:
            await self._handshake()

    async def _handshake(self) -> None:
        d = self.conn.handshake
        d.addTimeout(self.args.timeout, self.reactor)
        handle = self.conn.transport.getHandle()
        try:
            await d
        except defer.TimeoutError:
            self.conn.transport.abortConnection()
            raise UserError(f"tls {self.target}: no handshake within {self.args.timeout:g}s") from None
        except Exception as e:
            raise self.tls.failure(self.target, e, handle) from None
        reason = self.tls.check(handle)
        if reason is not None:
            self.conn.transport.abortConnection()
            await self.conn.closed
            raise UserError(f"tls {self.target}: {reason}")

    async def exchange(self, line: bytes) -> bytes:
        """Send C{line} and return the reply (up to its LF)."""
        self.conn.send(line)
        d = self.conn.read_line()
        d.addTimeout(self.args.timeout, self.reactor)
        try:
            reply = await d
        except defer.TimeoutError:
            raise UserError(
                f"read {self.network} {self.target}: no reply within {self.args.timeout:g}s"
            ) from None
        except Exception as e:
            raise io_error("read", self.network, self.target, e) from None
        self.print(f"->: {_show(reply)}")
        return reply

    def print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def is_stop(self, line: bytes) -> bool:
        return bool(self.stop_word) and line.strip() == self.stop_word

    async def close(self) -> None:
        self.conn.transport.loseConnection()
        await self.conn.closed

    async def interactive(self) -> int:
        stdin = StdinLines(self.reactor)
        prompt = os.isatty(0)
        while True:
            if prompt:
                self.out.write(">> ")
                self.out.flush()
            line = await stdin.get()
            if line is None:
                if prompt:
                    self.out.write("\n")
                break
            if not line.endswith(b"\n"):
                line += b"\n"
            await self.exchange(line)
            if self.is_stop(line):
                self.print(f"{self.name} client exiting...")
                break
        return 0

    async def repeat(self) -> int:
        text = self.args.repeat.encode() + b"\n"
        sent = 0
        while True:
            await self.exchange(text)
            sent += 1
            if self.args.count and sent >= self.args.count:
                return 0
            await task.deferLater(self.reactor, self.args.interval, lambda: None)

    async def main(self) -> int:
        await self.connect()
        try:
            if self.args.message is not None:
                await self.exchange(self.args.message.encode() + b"\n")
                return 0
            if getattr(self.args, "repeat", None) is not None:
                return await self.repeat()
            return await self.interactive()
        finally:
            await self.close()


def _run(network: str):
    def run(args: argparse.Namespace) -> int:
        from netecho.cli.runner import run as run_on_reactor

        if network == "tcp":
            problem = tls_options.usage_problem(args)
            if problem:
                sys.stderr.write(f"netecho tcp: error: {problem}\n")
                return EXIT_USAGE
        elif getattr(args, "repeat", None) is None and (args.count or args.interval != 1.0):
            sys.stderr.write("netecho unix: error: --count and --interval go with --repeat TEXT\n")
            return EXIT_USAGE

        return run_on_reactor(lambda reactor: StreamClient(reactor, args, network).main())

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--message", "-m", metavar="TEXT",
                        help="send TEXT and a newline, print the reply, exit")
    parser.add_argument("--timeout", type=positive, default=10.0, metavar="S",
                        help="seconds to wait for the connection and for each reply (default 10)")
    parser.add_argument("--stop-word", default="STOP", metavar="WORD",
                        help="after sending a line equal to WORD (trimmed) and reading its "
                        "echo, exit (default STOP; empty: never)")


def register(sub) -> None:
    """Add the C{tcp} and C{unix} subcommands."""
    tcp = sub.add_parser(
        "tcp",
        help="line client for a TCP echo server",
        description="Send lines to a TCP echo server and print each reply as '->: reply'. "
        "Lines come from stdin (with a '>> ' prompt on a terminal) until end of input "
        "or the stop word; or use --message.",
    )
    tcp.add_argument("address", metavar="HOST:PORT", type=host_port, help="e.g. 127.0.0.1:1234, [::1]:1234, localhost:1234")
    _common(tcp)
    tls_options.add_options(tcp)
    tcp.set_defaults(run=_run("tcp"))

    unix = sub.add_parser(
        "unix",
        help="line client for a Unix-socket echo server",
        description="Like 'netecho tcp', over a Unix stream socket; --repeat sends the same "
        "text every --interval seconds (the classic socket client loop).",
    )
    unix.add_argument("path", metavar="PATH")
    _common(unix)
    unix.add_argument("--repeat", metavar="TEXT", help="send TEXT every --interval seconds, print each reply")
    unix.add_argument("--interval", type=positive, default=1.0, metavar="S",
                      help="seconds between --repeat messages (default 1)")
    unix.add_argument("--count", type=whole, default=0, metavar="N",
                      help="stop --repeat after N messages (default 0: until interrupted)")
    unix.set_defaults(run=_run("unix"))



