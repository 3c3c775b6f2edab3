"""The counters every service shares, and the summary line printed on stop."""

from __future__ import annotations

import time
from typing import Callable

#: Distinct UDP peers are remembered only up to this many addresses, so a
#: flood of spoofed sources cannot grow the daemon's memory without bound.
MAX_TRACKED_UDP_PEERS = 65536


class Stats:
    """
    Live counters of one daemon.

    Protocols bump the plain integer attributes directly: that is the cheapest
    thing to do on the echo path, and the attributes are the public interface.
    The one exception is C{bytes_echoed}: stream echoes that netecho's reactor
    serves in C (netecho/reactor.py) count there, and reading the property
    first adds what they counted (see L{count_elsewhere}); writers bump
    C{bytes_counted}.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        #: Stream clients by transport: TCP and Unix (echo and random alike).
        self.tcp = 0
        self.unix = 0
        self.pb = 0
        #: Bytes echoed, as counted so far by the Python code.
        self.bytes_counted = 0
        self._elsewhere: set[Callable[[], None]] = set()
        self.datagrams_echoed = 0
        self.rpc_calls = 0
        #: RPC calls by method name.
        self.rpc_by_method: dict[str, int] = {}
        #: RPC calls by (method, outcome), outcome being ok or error.
        self.rpc_outcomes: dict[tuple[str, str], int] = {}
        #: lookup() calls served by the daemon, by outcome (ok, error).
        self.lookups: dict[str, int] = {}
        #: Stream connections accepted and open now, by service label
        #: (tcp, unix, random, pb).
        self.opened: dict[str, int] = {}
        self.active: dict[str, int] = {}
        #: Bytes echoed by connections that have closed, by label.
        self.closed_bytes: dict[str, int] = {}
        #: Refusals and drops by reason, e.g. ``{"udp_low_port": 3}``.
        self.dropped: dict[str, int] = {}
        self._udp_peers: set[tuple[str, int]] = set()

    @property
    def bytes_echoed(self) -> int:
        """Bytes echoed back (stream and datagram), up to this moment."""
        for bring in list(self._elsewhere):
            bring()
        return self.bytes_counted

    @bytes_echoed.setter
    def bytes_echoed(self, value: int) -> None:
        self.bytes_counted = value

    def count_elsewhere(self, bring: Callable[[], None]) -> None:
        """
        Some echoes are counted outside these attributes: C{bring()} adds
        what they have counted to C{bytes_counted} (and to the sessions'
        own counters); L{bytes_echoed} calls it before it answers.
        """
        self._elsewhere.add(bring)

    @property
    def clients_served(self) -> int:
        """Stream clients of the echo and random services (TCP and Unix)."""
        return self.tcp + self.unix

    @property
    def udp_peers(self) -> int:
        """Distinct UDP source addresses echoed to (exact up to a bound)."""
        return len(self._udp_peers)

    def udp_peer(self, addr: tuple[str, int]) -> None:
        """Remember a UDP peer that got an echo."""
        peers = self._udp_peers
        if len(peers) < MAX_TRACKED_UDP_PEERS:
            peers.add(addr)

    def udp_peer_table(self) -> tuple[set, int]:
        """The set L{udp_peer} adds to and its bound (for netecho's C read loop)."""
        return self._udp_peers, MAX_TRACKED_UDP_PEERS

    def drop(self, reason: str) -> None:
        """Count one refused connection or dropped datagram."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def uptime(self) -> float:
        """Seconds since the counters were created."""
        return self._clock() - self.started

    def as_dict(self) -> dict:
        """The live counters as plain data (for the RPC C{stats()} call)."""
        return {
            "clients_served": self.clients_served,
            "tcp": self.tcp,
            "unix": self.unix,
            "udp_peers": self.udp_peers,
            "pb": self.pb,
            "bytes_echoed": self.bytes_echoed,
            "datagrams_echoed": self.datagrams_echoed,
            "rpc_calls": self.rpc_calls,
            "rpc_calls_by_method": dict(self.rpc_by_method),
            "lookups": dict(self.lookups),
            "dropped": dict(self.dropped),
            "uptime_s": round(self.uptime(), 3),
        }

    def summary(self) -> str:
        """The one-line ``key=value`` summary logged when the daemon stops."""
        fields = [
            ("clients_served", self.clients_served),
            ("tcp", self.tcp),
            ("unix", self.unix),
            ("udp_peers", self.udp_peers),
            ("pb", self.pb),
            ("bytes_echoed", self.bytes_echoed),
            ("datagrams_echoed", self.datagrams_echoed),
            ("rpc_calls", self.rpc_calls),
            ("uptime_s", int(self.uptime())),
        ]
        return "summary: " + " ".join(f"{k}={v}" for k, v in fields)
