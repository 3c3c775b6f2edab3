"""
The epoll reactor netecho runs on: ``twistd netecho`` uses it unless
C{--reactor} picks another (C{twistd --reactor epoll netecho} is Twisted's
own); C{twistd --reactor netecho-epoll} picks it for any application.

It is Twisted's epoll reactor with two differences, both below the
protocols, so every Twisted protocol gains from them:

 - its listeners make netecho's transports and ports
   (L{netecho.transports}): eager stream writes, C{recv()} on Unix
   streams, batched UDP reads;
 - it dispatches readiness events directly. Twisted wraps every event in
   C{log.callWithLogger}, which pushes and pops a legacy logging context so
   that old-style C{log.msg} lines carry the connection's prefix: about 2
   of the 5 microseconds of Python an echo costs. The only visible
   difference: legacy log lines written during an event show C{[-]}
   (twisted.logger namespaces, which netecho uses, are unaffected). Where
   netecho's C extension is built, the wait and the dispatch of plain read
   events are one C call (C{poll_dispatch}): it calls C{doRead()}, or for
   netecho's own stream transports does what their C{doRead()} does (recv,
   then the protocol's C{dataReceived}); everything else (writes, errors,
   hang-ups, what a read returned or raised) goes through Twisted's code as
   before.

Private Twisted API used here (bounded in setup.cfg): C{_poller} and
C{_selectables} (EPollReactor's state), C{_doReadOrWrite} and
C{_disconnectSelectable} (its dispatch, for what C{poll_dispatch} hands
back), and the ports' C{_fromListeningDescriptor} (what Twisted's own
C{adoptStreamPort}/C{adoptDatagramPort} call, here with netecho's ports).
"""

from __future__ import annotations

import errno
import socket
import sys
from select import EPOLLIN

from twisted.internet import epollreactor, error, main
from twisted.internet.main import installReactor
from twisted.python import failure, log

from netecho.transports import DIRECT_READS, DatagramPort, TCPPort, UNIXPort

try:
    # The wait and the read dispatch in C (netecho/_speedups.c), if built.
    from netecho._speedups import poll_dispatch
except ImportError:  # pragma: no cover - depends on the build
    poll_dispatch = None


class DirectEPollReactor(epollreactor.EPollReactor):
    """L{EPollReactor} with netecho's transports and no per-event legacy log context."""

    def listenTCP(self, port, factory, backlog=50, interface=""):
        p = TCPPort(port, factory, backlog, interface, self)
        p.startListening()
        return p

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        p = UNIXPort(address, factory, backlog, mode, self, wantPID)
        p.startListening()
        return p

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        p = DatagramPort(port, protocol, interface, maxPacketSize, self)
        p.startListening()
        return p

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        if addressFamily == socket.AF_UNIX:
            p = UNIXPort._fromListeningDescriptor(self, fileDescriptor, factory)
        elif addressFamily in (socket.AF_INET, socket.AF_INET6):
            p = TCPPort._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        else:
            raise error.UnsupportedAddressFamily(addressFamily)
        p.startListening()
        return p

    def adoptDatagramPort(self, fileDescriptor, addressFamily, protocol, maxPacketSize=8192):
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            raise error.UnsupportedAddressFamily(addressFamily)
        p = DatagramPort._fromListeningDescriptor(
            self, fileDescriptor, addressFamily, protocol, maxPacketSize=maxPacketSize
        )
        p.startListening()
        return p

    def doPoll(self, timeout):
        if poll_dispatch is not None:
            # Private: _poller and _selectables are EPollReactor's state.
            later = poll_dispatch(self._poller.fileno(), len(self._selectables), timeout, self._selectables,
                                  DIRECT_READS, main.CONNECTION_DONE, main.CONNECTION_LOST)
            for fd, event, outcome in later:
                selectable = self._selectables.get(fd)
                if selectable is None:
                    continue
                if event > 0:
                    self._doReadOrWrite(selectable, fd, event)
                    continue
                if event < 0:  # doRead() raised outcome
                    log.err(failure.Failure(outcome))
                self._disconnectSelectable(selectable, outcome, True)
            return
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
