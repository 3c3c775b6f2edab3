"""
The UDP echo's read loop in C (netecho._speedups.echo_datagrams, behind
DatagramEcho._doReadInC) against the Python one (_doReadBatches), on real
loopback sockets: the same datagrams from the same kinds of senders must
get the same echoes, refusals, counts and stop-word calls.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import address
from twisted.trial.unittest import TestCase

from netecho import datagram, limits
from netecho.stats import Stats

from tests import peers


class Port:
    """What DatagramEcho uses of a udp.Port, around a real socket."""

    maxThroughput = 256 * 1024

    def __init__(self, sock: socket.socket):
        self.socket = sock

    def fileno(self) -> int:
        return self.socket.fileno()

    def getHost(self):
        host, port = self.socket.getsockname()
        return address.IPv4Address("UDP", host, port)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(s: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(s.recv(65536))
        except BlockingIOError:
            return got


class ReadLoopInCTests(TestCase):
    def setUp(self):
        if datagram.echo_datagrams is None or limits.RateWindow is limits.PyRateWindow:
            peers.missing("netecho._speedups is not built (needs gcc and Python's headers; scripts/test builds it)")

    def open(self, port: int = 0, host: str = "127.0.0.1") -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.opened.append(s)
        s.bind((host, port))
        s.setblocking(False)
        return s

    def run_scenario(self, read: str) -> dict:
        """Send a fixed mix of datagrams, read them with C{read}, say what happened."""
        self.opened: list[socket.socket] = []
        try:
            return self.scenario(read)
        finally:
            for s in self.opened:
                s.close()

    def scenario(self, read: str) -> dict:
        clock = Clock()
        stats = Stats()
        stops = []
        proto = datagram.DatagramEcho(
            stats, set(), stop_word=b"STOP", on_stop_word=lambda: stops.append(1),
            rate=limits.RateWindow(8, clock=clock),
            global_rate=limits.RateWindow(11, size=1, clock=clock),
        )
        server = self.open()
        proto.makeConnection(Port(server))
        target = server.getsockname()
        # Two networks (rate-limited apart): 127.0.0.0/24 and 127.0.1.0/24.
        clients = [self.open(), self.open(), self.open(host="127.0.1.1")]
        own = self.open()
        proto.own_ports.add(own.getsockname()[1])
        privileged = None
        if os.geteuid() == 0:
            privileged = self.open(999)
        sends = [(clients[0], b"a"), (clients[1], b"b"), (own, b"own port"), (server, b"to itself"),
                 (clients[0], b" STOP\r\n"), (clients[2], b"x" * 65507), (clients[1], b""),
                 (clients[0], b"STOPPED")]
        if privileged is not None:
            sends.append((privileged, b"from port 999"))
        # More than a batch (16), and past the per-network rate (8) and the global one (11).
        sends += [(clients[i % 3], b"burst %d" % i) for i in range(14)]
        for s, payload in sends:
            s.sendto(payload, target)
        getattr(proto, read)()
        first = [drain(c) for c in clients]
        clock.now += 1.0  # a new window
        for i, c in enumerate(clients):
            c.sendto(b"later %d" % i, target)
        getattr(proto, read)()
        return {
            "echoes": first,
            "later": [drain(c) for c in clients],
            "own": drain(own),
            "server": drain(server),
            "privileged": drain(privileged) if privileged is not None else None,
            "dropped": stats.dropped,
            "echoed": (stats.datagrams_echoed, stats.bytes_echoed, stats.udp_peers),
            "stops": len(stops),
        }

    def test_same_as_python(self):
        python = self.run_scenario("_doReadBatches")
        c = self.run_scenario("_doReadInC")
        self.assertEqual(c, python)
        # And what that is: whole echoes in order, each refusal counted once.
        self.assertEqual(c["echoes"][0][:3], [b"a", b" STOP\r\n", b"STOPPED"])
        self.assertEqual(c["echoes"][2][0], b"x" * 65507)
        self.assertEqual(c["echoes"][1][:2], [b"b", b""])
        self.assertEqual(c["later"], [[b"later 0"], [b"later 1"], [b"later 2"]])
        self.assertEqual((c["own"], c["server"]), ([], []))
        dropped = dict(c["dropped"])
        self.assertEqual(dropped.pop("udp_own_service_port"), 1)
        self.assertEqual(dropped.pop("udp_own_address"), 1)
        if c["privileged"] is not None:
            self.assertEqual((c["privileged"], dropped.pop("udp_privileged_source_port")), ([], 1))
        # 20 datagrams from the clients: 15 from one network, 5 from the other;
        # 13 pass the per-network windows, the global one lets 11 through.
        echoed = sum(map(len, c["echoes"]))
        self.assertEqual(echoed, 11)
        self.assertGreater(dropped["udp_rate_limited"], 0)
        self.assertGreater(dropped["udp_global_rate_limited"], 0)
        self.assertEqual(dropped, {"udp_rate_limited": 7, "udp_global_rate_limited": 2})
        self.assertEqual(c["echoed"][0], 11 + 3)
        self.assertEqual(c["stops"], 1)

    def test_daemon_ports_read_in_c(self):
        """A plain IPv4 port of the daemon reads through the C loop; --log-data keeps Python's."""
        from twisted.internet import reactor

        for log_data, method in ((False, "_doReadInC"), (True, "_doReadBatches")):
            proto = datagram.DatagramEcho(Stats(), set(), log_data=log_data,
                                          rate=limits.RateWindow(100), global_rate=limits.RateWindow(100, size=1))
            port = reactor.listenUDP(0, proto, interface="127.0.0.1", maxPacketSize=datagram.MAX_DATAGRAM)
            self.addCleanup(port.stopListening)
            self.assertEqual(port.doRead, getattr(proto, method))
