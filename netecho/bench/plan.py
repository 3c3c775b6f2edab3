"""
What one benchmark run does (L{Plan}), and what every load loop shares:
the target's socket address, the messages and their sequence stamps, the
open-loop schedule.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, replace

from netecho.address import join_host_port
from netecho.errors import UserError

#: How often a loop looks at the clock for deadlines, timeouts, progress.
TICK = 0.05
#: The bytes of a message that carry its sequence number.
STAMP = 8


@dataclass(frozen=True)
class Plan:
    """
    One run, as every worker process sees it.

    @ivar transport: C{tcp}, C{udp}, C{unix}, C{pb} or C{connect}.
    @ivar network: what the sockets are: C{tcp}, C{udp} or C{unix}.
    @ivar rate: open loop: round trips a second in all (this worker's share
        once L{share} has been applied); None for closed loop.
    @ivar pipeline: messages in flight per connection (closed loop).
    @ivar interval: seconds per interval line; None for none.
    @ivar tls: with C{--tls}, L{netecho.cli.tls.ClientTLS}'s settings (they
        cross to worker processes; the TLS objects are made there).
    """

    transport: str
    network: str
    family: int
    sockaddr: object
    target: str
    connections: int = 10
    size: int = 1024
    duration: float = 5.0
    warmup: float = 1.0
    timeout: float = 5.0
    processes: int = 1
    pb_call: str = "echo"
    rate: float | None = None
    pipeline: int = 1
    interval: float | None = None
    #: tcp --tls: the TLS settings (host, ca, insecure, sni, cert, key), or None.
    tls: dict | None = None

    def share(self, count: int) -> "Plan":
        """This plan for a worker with C{count} of the connections (its part of the rate)."""
        if self.rate is None:
            return replace(self, connections=count)
        return replace(self, connections=count, rate=self.rate * count / self.connections)

    @property
    def title(self) -> str:
        """C{bench tcp 127.0.0.1:1234}: how errors about this run begin."""
        return f"bench {self.transport} {self.target}"


def payload(size: int, seed: int) -> bytes:
    """
    Random-looking bytes, different per connection: a server mixing up
    connections or bytes is caught by the comparison.
    """
    return random.Random(seed).randbytes(size)


def stamped(body: bytes, seq: int) -> bytes:
    """C{body} with C{seq} in its first bytes (so stale or reordered echoes differ)."""
    n = min(STAMP, len(body))
    return (seq & ((1 << (8 * n)) - 1)).to_bytes(n, "little") + body[n:]


def resolve(network: str, address) -> tuple[int, object]:
    """(family, sockaddr) to connect to; a one-line L{UserError} if none."""
    if network == "unix":
        return socket.AF_UNIX, address
    host, port = address
    kind = socket.SOCK_DGRAM if network == "udp" else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(host, port, 0, kind)
    except socket.gaierror:
        raise UserError(f"dial {network}: lookup {host}: no such host") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def target_text(network: str, address) -> str:
    """The target as users write it: C{HOST:PORT} or the socket's path."""
    return address if network == "unix" else join_host_port(*address)


class Schedule:
    """
    Open loop: when each message is due. Message C{j} is due at
    C{start + j / rate} on connection C{j % connections}, whether or not
    replies came (as wrk2 sends), so a stalled reply cannot hold back the
    requests behind it and its wait shows in their latencies.
    """

    __slots__ = ("start", "rate", "connections", "sent", "due")

    def __init__(self, start: float, rate: float, connections: int) -> None:
        self.start, self.rate, self.connections = start, rate, connections
        self.sent = 0
        self.due = start

    def take(self) -> tuple[int, float]:
        """The connection and scheduled time of the next message; advances."""
        j, due = self.sent, self.due
        self.sent = j + 1
        self.due = self.start + self.sent / self.rate
        return j % self.connections, due


def lead_time(left: float) -> float:
    """
    How long an open loop may wait in epoll for its next send, C{left}
    seconds away. epoll counts whole milliseconds: the last 2 ms are spun
    through (a wait of 0), so messages leave on time, not up to 1 ms late.
    """
    if left < 0.002:
        return 0.0
    return min(TICK, left - 0.0015)
