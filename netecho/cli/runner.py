"""Running one client coroutine on the reactor, with the CLI's exit rules."""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable, Coroutine

from twisted.internet import defer, fdesc
from twisted.python.failure import Failure

from netecho.errors import EXIT_FAILURE, UserError


def run(main: Callable[[Any], Coroutine[Any, Any, int]], reactor=None) -> int:
    """
    Run C{main(reactor)} to completion; return its exit status. A
    L{UserError} becomes one line on stderr and status 100; Ctrl-C ends
    quietly with status 130 (128 + SIGINT, as shells report it); nothing
    prints a traceback but a bug.
    """
    if reactor is None:
        from twisted.internet import reactor
    outcome: list = []
    interrupted: list = []

    def start() -> None:
        # maybeDeferred: what main() raises before its coroutine even starts
        # (a bad --ca file, say) is reported like the rest, not logged by
        # the reactor while it runs on.
        d = defer.maybeDeferred(lambda: defer.ensureDeferred(main(reactor)))

        def done(result):
            outcome.append(result)
            if not interrupted:
                reactor.stop()

        d.addBoth(done)

    def on_interrupt(signum, frame) -> None:
        # Ctrl-C: leave quietly (the reactor would log a KeyboardInterrupt).
        interrupted.append(signum)
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(start)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        signal.signal(signal.SIGINT, previous)
        # Reading stdin made it non-blocking; give the shell its terminal back.
        try:
            fdesc.setBlocking(0)
        except OSError:
            pass
    if interrupted or not outcome:
        print(file=sys.stderr)
        return 130
    result = outcome[0]
    if isinstance(result, Failure):
        if result.check(UserError):
            print(str(result.value), file=sys.stderr)
            return EXIT_FAILURE
        if result.check(KeyboardInterrupt):
            return 130
        result.raiseException()
    return int(result or 0)
