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

Where netecho's C extension is built, the reactor also keeps an
C{EchoTable} (netecho/_speedups.c): the stream echoes (netecho/echo.py)
that can run in C put themselves in it, and the reactor's wait on epoll
serves their plain read events in C, waiting again (within the timeout
Twisted asked for) until an event comes that Python code must see. An echo
leaves the table when its descriptor stops being read (Twisted removes a
reader before it closes its socket), and for any turn C cannot finish
(a partial send, the stop word, end of file, an error), which goes back
to the echo in Python (C{Echo._tableTurn}).
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.python import log

try:
    from netecho._speedups import EchoTable
except ImportError:  # pragma: no cover - depends on the build
    EchoTable = None


class DirectEPollReactor(epollreactor.EPollReactor):
    """L{EPollReactor} without the per-event legacy log context."""

    def __init__(self) -> None:
        self._echoes = EchoTable() if EchoTable is not None else None
        super().__init__()

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1
        echoes = self._echoes
        try:
            if echoes is None:
                events = self._poller.poll(timeout, len(self._selectables))
            else:
                events, turns = echoes.poll(self._poller.fileno(), len(self._selectables), timeout)
                if turns:
                    self._tableTurns(turns)
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

    def _tableTurns(self, turns) -> None:
        """Finish, in Python, the echo turns the table handed back."""
        selectables = self._selectables
        for fd, session, turn in turns:
            selectable = selectables.get(fd)
            if selectable is None:  # pragma: no cover - closed in between
                continue
            try:
                why = session._tableTurn(turn)
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
            if why:
                self._disconnectSelectable(selectable, why, True)

    def removeReader(self, reader) -> None:
        echoes = self._echoes
        if echoes:
            fd = reader.fileno()
            if fd == -1:
                fd = next((fd for fd, known in self._selectables.items() if known is reader), -1)
            gone = echoes.remove(fd) if fd >= 0 else None
            if gone is not None:
                session, unsynced, pending = gone
                session._leftTable(unsynced, pending)
        super().removeReader(reader)

    def _countEchoes(self) -> None:
        """Add what the table's echoes have echoed to their counters."""
        if self._echoes:
            for session, n in self._echoes.flush():
                session._count(n)

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
