"""
An epoll reactor for busy echo daemons: ``twistd --reactor netecho-epoll netecho``.

Twisted's epoll reactor wraps every readiness event in
C{log.callWithLogger}, which pushes and pops a legacy logging context so
that old-style C{log.msg} lines carry the connection's prefix. On an echo
path that is one context switch per message and about a tenth of the
daemon's CPU under load (benchmarks/RESULTS.md). This reactor dispatches
events directly; the only difference is that legacy log lines written
during an event show C{[-]} instead of the connection's prefix
(twisted.logger namespaces, which netecho uses, are unaffected).
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.internet.main import installReactor


class DirectEPollReactor(epollreactor.EPollReactor):
    """L{EPollReactor} without the per-event legacy log context."""

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        dispatch = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> DirectEPollReactor:
    """Install L{DirectEPollReactor} as the global reactor."""
    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor
