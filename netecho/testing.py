"""
In-process netecho services for other projects' tests.

In a trial TestCase (C{ask} stands for the client under test)::

    from netecho.testing import tcp_echo

    class ClientTests(unittest.TestCase):
        async def test_roundtrip(self):
            server = tcp_echo(self)            # listening now, on 127.0.0.1
            reply = await threads.deferToThread(ask, (server.host, server.port), b"hi\\n")
            self.assertEqual(reply, b"hi\\n")
            # cleanup (through addCleanup) waits for every connection to close

Each service listens on loopback on a free port (or a Unix socket in a fresh
temporary directory) with the daemon's behaviour: byte-exact echo, the stop
word, half-close, UDP guards. A pytest plugin offers the same as fixtures:
see L{netecho.pytest_plugin}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer

from netecho.address import join_host_port
from netecho.datagram import MAX_DATAGRAM, DatagramGuard
from netecho.echo import DatagramEcho, EchoFactory
from netecho.faults import Faults
from netecho.policies import Served, ServedDatagrams
from netecho.randomnum import RandomNumberFactory
from netecho.stats import Stats


@dataclass
class RunningService:
    """
    A service started by this module.

    @ivar host: C{"127.0.0.1"} (None for Unix sockets).
    @ivar port: the port it got (None for Unix sockets).
    @ivar path: the Unix socket's path (None otherwise).
    @ivar stats: its live counters (L{netecho.stats.Stats}).
    @ivar faults: its faults (L{netecho.faults.Faults}): C{.set("drop=0.2")},
        C{.clear()} while the test runs (a stream connection takes the
        faults in force when it connects; datagrams at once).
    """

    kind: str
    host: str | None
    port: int | None
    path: str | None
    stats: Stats
    stop: Callable[[], defer.Deferred] = field(repr=False)
    faults: Faults | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """C{HOST:PORT}, or the socket's path: what netecho's clients take."""
        return self.path if self.path is not None else join_host_port(self.host, self.port)


def track_connections(factory: Served) -> Callable[[], defer.Deferred]:
    """
    Make C{factory} remember its live connections; return a function that
    drops them all and fires once each has gone (no dirty reactor).
    """
    live: dict = {}

    class Tracked(factory.protocol):
        def makeConnection(self, transport):
            live[self] = defer.Deferred()
            super().makeConnection(transport)

        def connectionLost(self, reason=None):
            super().connectionLost(reason)
            live.pop(self).callback(None)

    factory.protocol = Tracked

    def drop_all() -> defer.Deferred:
        waiting = list(live.values())
        for session in list(live):
            session.transport.abortConnection()
        return defer.gatherResults(waiting)

    return drop_all


def start(kind: str, reactor=None, stop_word: str = "STOP", faults: str = "") -> RunningService:
    """
    Start a C{kind} service (C{tcp}, C{udp}, C{unix} or C{random}) on loopback.
    The caller must call (and wait for) C{.stop()}; L{tcp_echo} and friends
    do that through C{addCleanup}.

    @param faults: a C{--faults} SPEC (C{"delay=50ms,slice=4"}; see the
        README), empty for none; changeable later through C{.faults}.
    @raise ValueError: an unknown service or a bad SPEC.
    """
    if reactor is None:
        from twisted.internet import reactor
    stats = Stats()
    word = stop_word.encode()
    trouble = Faults(stats, faults, reactor)
    if kind == "udp":
        own_ports: set[int] = set()
        served = ServedDatagrams(DatagramEcho(), stats, guard=DatagramGuard(stats, own_ports), faults=trouble)
        port = reactor.listenUDP(0, served, interface="127.0.0.1", maxPacketSize=MAX_DATAGRAM)
        own_ports.add(port.getHost().port)

        def stop_udp() -> defer.Deferred:
            trouble.cancel()
            return defer.maybeDeferred(port.stopListening)

        return RunningService("udp", "127.0.0.1", port.getHost().port, None, stats, stop_udp, trouble)
    if kind not in ("tcp", "unix", "random"):
        raise ValueError(f"unknown service {kind!r} (tcp, udp, unix, random)")
    if kind == "random":
        factory = Served(RandomNumberFactory(), stats, "random", stop_word=word)  # (faults: echoes only, as the daemon)
    else:
        factory = Served(EchoFactory(), stats, "echo", stop_word=word, faults=trouble)
    drop_all = track_connections(factory)
    if kind == "unix":
        directory = tempfile.mkdtemp(prefix="netecho-")
        path = os.path.join(directory, "echo.sock")
        port = reactor.listenUNIX(path, factory, mode=0o600)
        host = number = None
    else:
        directory = path = None
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        host, number = "127.0.0.1", port.getHost().port

    def stop() -> defer.Deferred:
        d = defer.gatherResults([defer.maybeDeferred(port.stopListening), drop_all()])
        if directory is not None:
            d.addBoth(lambda result: (shutil.rmtree(directory, ignore_errors=True), result)[1])
        return d

    return RunningService(kind, host, number, path, stats, stop, trouble)


def _for_testcase(kind: str):
    def starter(testcase, reactor=None, stop_word: str = "STOP", faults: str = "") -> RunningService:
        service = start(kind, reactor, stop_word, faults)
        testcase.addCleanup(service.stop)
        return service

    starter.__name__ = f"{kind}_service"
    starter.__doc__ = (
        f"Start a {kind} service for C{{testcase}} (a trial TestCase); it is "
        "stopped by C{addCleanup}, after every connection to it has closed."
    )
    return starter


tcp_echo = _for_testcase("tcp")
udp_echo = _for_testcase("udp")
unix_echo = _for_testcase("unix")
random_numbers = _for_testcase("random")
