"""
The Perspective Broker load: anonymous logins calling C{echo(S bytes)} or
C{add(seq, 1, False, False)} in a loop, C{--pipeline} calls in flight per
login, on a Twisted reactor (PB is Twisted's protocol), one per process.
Each reply is checked against what it must be.
"""

from __future__ import annotations

import time

from netecho.bench.plan import TICK, Plan, payload, stamped
from netecho.bench.reactorloop import run_on_reactor
from netecho.bench.tally import CLOSED, CORRUPTED, TIMEOUT, Tally, Window
from netecho.errors import UserError, dial_error

REMOTE_ERROR = "remote error"


def pb_loop(plan: Plan, first: int, channel) -> Tally:
    """Run C{plan.connections} logins; return what was counted."""
    from twisted.cred import credentials
    from twisted.internet import defer, reactor
    from twisted.spread import pb

    timeout, target = plan.timeout, plan.target
    host, port = plan.sockaddr[:2]
    tally = Tally(intervals=plan.interval is not None)
    monotonic = time.monotonic
    window: list[Window] = []

    async def connect():
        factory = pb.PBClientFactory()
        reactor.connectTCP(host, port, factory, timeout=min(timeout, 5.0))
        login = factory.login(credentials.Anonymous())
        login.addTimeout(timeout, reactor)
        try:
            avatar = await login
        except defer.TimeoutError:
            factory.disconnect()
            raise UserError(f"pb login {target}: no reply within {timeout:g}s (is this a PB port?)") from None
        except pb.RemoteError as e:
            factory.disconnect()
            raise UserError(f"rpc {target}: login refused: {e}") from None
        except Exception as e:
            factory.disconnect()
            raise dial_error("tcp", target, e) from None
        return factory, avatar

    async def calls(avatar, body: bytes, seqs) -> None:
        w = window[0]
        record = tally.current.record
        while True:
            sent = monotonic()
            if sent >= w.end:
                return
            seq = next(seqs)
            if plan.pb_call == "add":
                expect = seq + 1
                d = avatar.callRemote("add", seq, 1, False, False)
            else:
                expect = stamped(body, seq)
                d = avatar.callRemote("echo", expect)
            if w.counting:
                tally.sent += 1
            d.addTimeout(timeout, reactor)
            try:
                reply = await d
            except defer.TimeoutError:
                if w.counting:
                    tally.error(TIMEOUT)
                continue
            except pb.PBConnectionLost:
                if w.counting:
                    tally.error(CLOSED)
                return
            except Exception:
                if w.counting:
                    tally.error(REMOTE_ERROR)
                continue
            if reply != expect:
                if w.counting:
                    tally.error(CORRUPTED)
                continue
            now = monotonic()
            if w.counting and now < w.end:
                tally.round_trips += 1
                record(int((now - sent) * 1e9))

    async def main():
        made = []
        try:
            for _ in range(plan.connections):
                made.append(await connect())
            start = channel.ready()
            w = Window(plan, start, tally, channel)
            window.append(w)

            def tick():
                if not w.tick(monotonic()):
                    reactor.callLater(TICK, tick)

            tick()
            loops = []
            for i, (_, avatar) in enumerate(made):
                body, seqs = payload(plan.size, first + i), iter(range(1, 1 << 62))
                loops += [defer.ensureDeferred(calls(avatar, body, seqs)) for _ in range(plan.pipeline)]
            await defer.gatherResults(loops, consumeErrors=True)
            w.finish()
        finally:
            for factory, _ in made:
                factory.disconnect()
        return tally

    return run_on_reactor(main, f"bench pb {target}")
