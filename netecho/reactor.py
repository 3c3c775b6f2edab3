"""
The epoll reactor netecho runs on: ``twistd netecho`` uses it unless
C{--reactor} picks another (C{twistd --reactor epoll netecho} is Twisted's
own); C{twistd --reactor netecho-epoll} picks it for any application.

Twisted's epoll reactor wraps every readiness event in
C{log.callWithLogger}, which pushes and pops a legacy logging context so
that old-style C{log.msg} lines carry the connection's prefix. On an echo
path that is a context push and pop per message, about 2 of the 5
microseconds of Python an echo costs (benchmarks/RESULTS.md). This reactor dispatches
events directly; the only difference is that legacy log lines written
during an event show C{[-]} instead of the connection's prefix
(twisted.logger namespaces, which netecho uses, are unaffected).
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.python import log


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
            if selectable is None:
                continue
            if event == EPOLLIN:
                # The common case, readable and nothing else: what
                # _doReadOrWrite does for it, minus its other branches and
                # its fileno() == -1 check (epoll reports nothing for a
                # closed descriptor).
                try:
                    why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    self._disconnectSelectable(selectable, why, True)
            else:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def for_netecho():
    """
    The reactor netecho's service runs on: the installed one if there is
    one (twistd's C{--reactor}, trial, an application's own choice), else
    L{DirectEPollReactor}, installed now. (Where there is no epoll this
    module cannot be imported, and netecho takes Twisted's default.)
    """
    if "twisted.internet.reactor" not in sys.modules:
        install()
    from twisted.internet import reactor

    return reactor


def install() -> DirectEPollReactor:
    """Install L{DirectEPollReactor} as the global reactor."""
    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor
