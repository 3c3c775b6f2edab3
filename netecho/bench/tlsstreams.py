"""
``netecho bench tcp --tls``: the closed loop of L{netecho.bench.streams} over
TLS, on a Twisted reactor (Twisted's TLS, as every netecho client uses it:
L{netecho.cli.tls.ClientTLS}), one per process. Each connection sends a
message, checks the echo byte for byte as it arrives, and sends the next.
"""

from __future__ import annotations

import time

from twisted.internet import interfaces
from zope.interface import implementer

from netecho.bench.plan import TICK, Plan, payload, stamped
from netecho.bench.reactorloop import run_on_reactor
from netecho.bench.tally import CLOSED, CORRUPTED, LONG, SHORT, TIMEOUT, Tally, Window
from netecho.errors import UserError


def tls_loop(plan: Plan, first: int, channel) -> Tally:
    """Run C{plan.connections} TLS connections; return what was counted."""
    from twisted.internet import defer, endpoints, protocol, reactor

    from netecho.cli.tls import ClientTLS

    host, port = plan.sockaddr[:2]
    settings = dict(plan.tls)
    tls = ClientTLS(settings.pop("host"), **settings)
    tally = Tally(intervals=plan.interval is not None)
    monotonic = time.monotonic
    window: list[Window] = []

    @implementer(interfaces.IHandshakeListener)
    class Connection(protocol.Protocol):
        """Collects echoes; wakes the loop when the message is whole or wrong."""

        def __init__(self) -> None:
            self.handshake = defer.Deferred()
            self.expect = b""
            self.got = 0
            self.reply: defer.Deferred | None = None
            self.lost = None

        def handshakeCompleted(self) -> None:
            self.handshake.callback(None)

        def dataReceived(self, data: bytes) -> None:
            if self.reply is None:
                return self._done(LONG)  # bytes nobody asked for
            start = self.got
            if data != self.expect[start : start + len(data)]:
                return self._done(CORRUPTED if start + len(data) <= len(self.expect) else LONG)
            self.got += len(data)
            if self.got == len(self.expect):
                self._done(None)

        def _done(self, error) -> None:
            d, self.reply = self.reply, None
            if d is not None:
                d.callback(error)
            elif error is not None:
                self.transport.abortConnection()

        def connectionLost(self, reason) -> None:
            self.lost = reason
            if not self.handshake.called:
                self.handshake.errback(reason)
            self._done(SHORT if self.got else CLOSED)

    async def connect() -> Connection:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=min(plan.timeout, 5.0))
        if ":" in host:
            endpoint = endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=min(plan.timeout, 5.0))
        conn = None
        try:
            conn = await tls.wrap(endpoint).connect(protocol.Factory.forProtocol(Connection))
            await conn.handshake.addTimeout(plan.timeout, reactor)
        except Exception as e:
            handle = None
            if conn is not None and conn.transport is not None:
                conn.transport.abortConnection()
                handle = conn.transport.getHandle()
            raise tls.failure(plan.target, e, handle) from None
        problem = tls.check(conn.transport.getHandle())
        if problem:
            conn.transport.abortConnection()
            raise UserError(f"tls {plan.target}: {problem}")
        return conn

    async def loop(conn: Connection, body: bytes) -> None:
        w = window[0]
        record = tally.current.record
        seq = 0
        while monotonic() < w.end:
            if conn.lost is not None:
                try:
                    conn = await connect()
                except UserError:
                    return
            seq += 1
            conn.expect, conn.got = stamped(body, seq), 0
            conn.reply = reply = defer.Deferred()
            sent = monotonic()
            if w.counting:
                tally.sent += 1
            conn.transport.write(conn.expect)
            reply.addTimeout(plan.timeout, reactor, onTimeoutCancel=lambda *_: SHORT if conn.got else TIMEOUT)
            error = await reply
            now = monotonic()
            if error is not None:
                if w.counting:
                    tally.error(error)
                conn.reply = None
                conn.transport.abortConnection()
                conn.lost = conn.lost or error
                continue
            if w.counting and now < w.end:
                tally.round_trips += 1
                record(int((now - sent) * 1e9))
        conn.transport.loseConnection()

    async def main():
        made = [await connect() for _ in range(plan.connections)]
        w = Window(plan, channel.ready(), tally, channel)
        window.append(w)

        def tick():
            if not w.tick(monotonic()):
                reactor.callLater(TICK, tick)

        tick()
        loops = [defer.ensureDeferred(loop(conn, payload(plan.size, first + i))) for i, conn in enumerate(made)]
        await defer.gatherResults(loops, consumeErrors=True)
        w.finish()
        return tally

    return run_on_reactor(main, plan.title)
