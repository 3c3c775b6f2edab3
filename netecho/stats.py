"""The counters every service shares, and the summary line printed on stop."""

from __future__ import annotations

import time
from typing import Callable

#: Distinct UDP peers are remembered only up to this many addresses, so a
#: flood of spoofed sources cannot grow the daemon's memory without bound.
MAX_TRACKED_UDP_PEERS = 65536

#: The labels whose bytes are echoes (the random service and PB are not).
ECHO_LABELS = ("tcp", "unix", "udp")


class Stats:
    """
    Live counters of one daemon. The services push into them through the
    small methods below (L{netecho.policies} calls them); readers (the
    summary, the RPC C{stats()} call, the metrics) read the attributes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.datagrams_echoed = 0
        self.rpc_calls = 0
        #: RPC calls by method name.
        self.rpc_by_method: dict[str, int] = {}
        #: RPC calls by (method, outcome), outcome being ok or error.
        self.rpc_outcomes: dict[tuple[str, str], int] = {}
        #: lookup() calls served by the daemon, by outcome (ok, error).
        self.lookups: dict[str, int] = {}
        #: Stream connections accepted and open now, by label (tcp, unix:
        #: the echo over TCP and Unix sockets; random; pb), as the metrics'
        #: service label says.
        self.opened: dict[str, int] = {}
        self.active: dict[str, int] = {}
        #: Bytes sent, by label (tcp, unix, udp, random, pb).
        self.bytes_sent: dict[str, int] = dict.fromkeys(ECHO_LABELS, 0)
        #: Faults injected on purpose (--faults), by kind.
        self.faults: dict[str, int] = {}
        #: Refusals and drops by reason, e.g. ``{"udp_privileged_source_port": 3}``.
        self.dropped: dict[str, int] = {}
        self._udp_peers: set[tuple[str, int]] = set()

    # What the services push.

    def connection_opened(self, label: str, client: bool = True) -> None:
        """
        A stream connection was accepted: C{label} as in L{opened}. It is
        active until L{connection_closed}; it counts as a client served
        unless C{client} is false (until L{client_counted}).
        """
        if client:
            self.opened[label] = self.opened.get(label, 0) + 1
        self.active[label] = self.active.get(label, 0) + 1

    def client_counted(self, label: str) -> None:
        """A connection opened with C{client=False} turned out to be a client after all."""
        self.opened[label] = self.opened.get(label, 0) + 1

    def connection_closed(self, label: str) -> None:
        """A stream connection accepted with C{label} has closed."""
        self.active[label] -= 1

    def sent(self, label: str, n: int) -> None:
        """C{n} more bytes sent on a C{label} stream."""
        sent = self.bytes_sent
        sent[label] = sent.get(label, 0) + n

    def datagram_sent(self, n: int, addr: tuple[str, int]) -> None:
        """A datagram of C{n} bytes was echoed to C{addr}."""
        self.datagrams_echoed += 1
        self.bytes_sent["udp"] += n
        peers = self._udp_peers
        if len(peers) < MAX_TRACKED_UDP_PEERS:
            peers.add(addr)

    def rpc_call(self, method: str) -> None:
        """A PB call of C{method} arrived."""
        self.rpc_calls += 1
        self.rpc_by_method[method] = self.rpc_by_method.get(method, 0) + 1

    def rpc_done(self, method: str, outcome: str) -> None:
        """A PB call of C{method} ended with C{outcome} (ok, error)."""
        key = (method, outcome)
        self.rpc_outcomes[key] = self.rpc_outcomes.get(key, 0) + 1

    def lookup_done(self, outcome: str) -> None:
        """A lookup() served over PB ended with C{outcome} (ok, error)."""
        self.lookups[outcome] = self.lookups.get(outcome, 0) + 1

    def fault(self, kind: str, n: int = 1) -> None:
        """C{n} faults of C{kind} injected on purpose (netecho.faults)."""
        self.faults[kind] = self.faults.get(kind, 0) + n

    def datagram_unsent(self, n: int) -> None:
        """A datagram of C{n} bytes counted by L{datagram_sent} could not be sent after all."""
        self.datagrams_echoed -= 1
        self.bytes_sent["udp"] -= n

    def drop(self, reason: str, n: int = 1) -> None:
        """Count C{n} refused connections or dropped datagrams."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    # What readers see.

    @property
    def bytes_echoed(self) -> int:
        """Bytes echoed back, stream and datagram."""
        sent = self.bytes_sent
        return sent["tcp"] + sent["unix"] + sent["udp"]

    @property
    def tcp(self) -> int:
        """Clients of the TCP echo."""
        return self.opened.get("tcp", 0)

    @property
    def unix(self) -> int:
        """Clients of the Unix socket echo."""
        return self.opened.get("unix", 0)

    @property
    def random(self) -> int:
        """Clients of the random-number service."""
        return self.opened.get("random", 0)

    @property
    def pb(self) -> int:
        """PB connections."""
        return self.opened.get("pb", 0)

    @property
    def clients_served(self) -> int:
        """Stream clients of the echo and random services (TCP and Unix)."""
        return self.tcp + self.unix + self.random

    @property
    def udp_peers(self) -> int:
        """Distinct UDP source addresses echoed to (exact up to a bound)."""
        return len(self._udp_peers)

    def combined(self) -> "Stats":
        """The counters of the whole daemon (with --workers, summed over its processes)."""
        return self

    def by_worker(self) -> dict[str, "Stats"]:
        """Each worker process's counters, by worker number (none without --workers)."""
        return {}

    def uptime(self) -> float:
        """Seconds since the counters were created."""
        return self._clock() - self.started

    def as_dict(self) -> dict:
        """The live counters as plain data (for the RPC C{stats()} call)."""
        return {
            "clients_served": self.clients_served,
            "tcp": self.tcp,
            "unix": self.unix,
            "random": self.random,
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
            *((("random", self.random),) if self.random else ()),
            ("udp_peers", self.udp_peers),
            ("pb", self.pb),
            ("bytes_echoed", self.bytes_echoed),
            ("datagrams_echoed", self.datagrams_echoed),
            ("rpc_calls", self.rpc_calls),
            ("uptime_s", int(self.uptime())),
        ]
        return "summary: " + " ".join(f"{k}={v}" for k, v in fields)
