"""Running one client coroutine on the reactor, with the CLI's exit rules."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, Coroutine

from twisted.internet import defer, fdesc
from twisted.python.failure import Failure

from netecho.errors import EXIT_FAILURE, UserError


#: Exit status after stdout's reader went away (EPIPE): 128 + SIGPIPE, what
#: a shell reports for a tool that SIGPIPE ended (C{yes | head -1}).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE

#: Seconds the work has, after Ctrl-C, to clean up (close sockets, clear
#: the progress bar) before the reactor stops anyway.
CANCEL_GRACE = 2.0


def silence_stdout() -> None:
    # The reader of stdout is gone: what is still buffered, and Python's
    # flush at exit, would fail again; send it to /dev/null instead.
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


class _StdoutGuard:
    """
    sys.stdout while the reactor runs: the first write or flush that finds
    its reader gone (EPIPE) sends stdout to /dev/null and calls C{broken}
    once, wherever it happens (in the command's coroutine or in a protocol
    callback, where the reactor would only log it and go on).
    """

    def __init__(self, stream, broken: Callable[[], None]) -> None:
        self._stream = stream
        self._broken = broken
        self.gone = False

    def _lost(self) -> None:
        if not self.gone:
            self.gone = True
            silence_stdout()
            self._broken()

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._lost()
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lost()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def run(main: Callable[[Any], Coroutine[Any, Any, int]], reactor=None) -> int:
    """
    Run C{main(reactor)} to completion; return its exit status. A
    L{UserError} becomes one line on stderr and status 100; Ctrl-C cancels
    the work (its C{finally} blocks run while the reactor still does, for
    at most L{CANCEL_GRACE} seconds) and ends quietly with status 130 (128 +
    SIGINT, as shells report it); a closed stdout (C{netecho ... | head -1})
    ends quietly with status 141 (L{EXIT_BROKEN_PIPE}); nothing prints a
    traceback but a bug.
    """
    if reactor is None:
        from twisted.internet import reactor
    outcome: list = []
    interrupted: list = []
    running: list[defer.Deferred] = []

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    def start() -> None:
        # maybeDeferred: what main() raises before its coroutine even starts
        # (a bad --ca file, say) is reported like the rest, not logged by
        # the reactor while it runs on.
        d = defer.maybeDeferred(lambda: defer.ensureDeferred(main(reactor)))
        running.append(d)

        def done(result):
            outcome.append(result)
            stop()

        d.addBoth(done)

    def cancel() -> None:
        if len(interrupted) > 1 or not running:
            stop()  # a second Ctrl-C, or nothing started: stop at once
            return
        reactor.callLater(CANCEL_GRACE, stop)
        running[0].cancel()

    def on_interrupt(signum, frame) -> None:
        # Ctrl-C: cancel the work and leave quietly (the reactor would log a
        # KeyboardInterrupt). Signal context: hand it to the reactor.
        interrupted.append(signum)
        reactor.callFromThread(cancel)

    def broken() -> None:
        # stdout's reader is gone: end the work (as Ctrl-C does), quietly.
        if running:
            reactor.callLater(CANCEL_GRACE, stop)
            running[0].cancel()
        else:
            stop()

    reactor.callWhenRunning(start)
    previous = signal.signal(signal.SIGINT, on_interrupt)
    stdout = sys.stdout
    guard = sys.stdout = _StdoutGuard(stdout, lambda: reactor.callLater(0, broken))
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        sys.stdout = stdout
        signal.signal(signal.SIGINT, previous)
        # Reading stdin made it non-blocking; give the shell its terminal back.
        try:
            fdesc.setBlocking(0)
        except OSError:
            pass
    result = outcome[0] if outcome else None
    if guard.gone or isinstance(result, Failure) and result.check(BrokenPipeError):
        silence_stdout()
        return EXIT_BROKEN_PIPE
    if interrupted or not outcome:
        print(file=sys.stderr)
        return 130
    if isinstance(result, Failure):
        if result.check(UserError):
            print(str(result.value), file=sys.stderr)
            return EXIT_FAILURE
        if result.check(KeyboardInterrupt):
            return 130
        result.raiseException()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return EXIT_BROKEN_PIPE
    return int(result or 0)
