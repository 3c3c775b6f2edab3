"""
Running a load loop's coroutine on a Twisted reactor, one per process (the
PB and TLS loops: those protocols are Twisted's), and handing back what it
counted.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from netecho.bench.tally import Tally
from netecho.errors import UserError


def run_on_reactor(main: Callable[[], Awaitable[Tally]], title: str) -> Tally:
    """Run C{main()} on the reactor until it ends; its tally, or what it raised."""
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    outcome: list = []

    def begin() -> None:
        d = defer.ensureDeferred(main())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.callLater(0.05, reactor.stop))

    reactor.callWhenRunning(begin)
    reactor.run(installSignalHandlers=False)
    got = outcome[0] if outcome else UserError(f"{title}: the reactor stopped early")
    if isinstance(got, Failure):
        got.raiseException()
    if isinstance(got, Exception):
        raise got
    return got
