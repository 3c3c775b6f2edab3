"""
The load generator behind ``netecho bench``: L{measure} runs one benchmark
and returns its report (the dict C{--json} prints).

One module per concern: L{plan} (what a run does, messages, the open-loop
schedule), L{histogram} (fixed-size latency histogram), L{tally} (what a
loop counts, and when), L{streams} (TCP and Unix), L{tlsstreams} (TCP
over TLS, on Twisted's TLS), L{datagrams} (UDP),
L{connects} (connection rate), L{pb} (Perspective Broker), L{workers}
(worker processes), L{progress} (the terminal line) and L{report} (the
report, its table and the verdict).
"""

from __future__ import annotations

import sys
from typing import Callable

from netecho.bench import report as _report
from netecho.bench.datagrams import probe
from netecho.bench.plan import Plan, resolve, target_text
from netecho.bench.progress import Progress
from netecho.bench.streams import connect
from netecho.bench.workers import Board, run

TRANSPORTS = ("tcp", "udp", "unix", "pb", "connect")


def network_of(transport: str, address) -> str:
    """What the sockets of C{transport} are: C{tcp}, C{udp} or C{unix}."""
    if transport == "connect":
        return "unix" if isinstance(address, str) else "tcp"
    return "tcp" if transport == "pb" else transport


def measure(transport: str, address, *, connections: int = 10, size: int = 1024,
            duration: float = 5.0, warmup: float = 1.0, timeout: float | None = None,
            processes: int = 1, pb_call: str = "echo", progress: bool = False,
            rate: float | None = None, pipeline: int = 1, interval: float | None = None,
            on_interval: Callable[[dict], None] | None = None, tls: dict | None = None) -> dict:
    """
    Run one benchmark; return the report as a dict (what C{--json} prints).
    C{address} is C{(host, port)} or a Unix socket path.

    @param rate: open loop: round trips a second in all; None: closed loop.
    @param pipeline: messages in flight per connection (closed loop).
    @param interval: seconds per interval (the report's C{intervals} list),
        each also handed to C{on_interval} as it ends.
    @param progress: draw a progress line on stderr (the caller checks it
        is a terminal).
    @param tls: tcp over TLS: C{netecho.cli.tls.ClientTLS}'s arguments
        (C{host}, C{ca}, C{insecure}, C{sni}, C{cert}, C{key}).
    @raise UserError: the target cannot be reached (one line for the user).
    """
    network = network_of(transport, address)
    if timeout is None:
        timeout = 1.0 if network == "udp" else 5.0
    family, sockaddr = resolve(network, address)
    plan = Plan(transport=transport, network=network, family=family, sockaddr=sockaddr,
                target=target_text(network, address), connections=connections, size=size,
                duration=duration, warmup=warmup, timeout=timeout, processes=processes,
                pb_call=pb_call, rate=rate, pipeline=pipeline, interval=interval, tls=tls)
    if network == "udp":
        probe(plan)
    elif transport == "connect" or tls is not None:
        connect(plan, min(timeout, 5.0)).close()  # an unreachable target is one line
    drawer = Progress(plan, sys.stderr) if progress else None

    def emit(line: dict) -> None:
        if drawer is not None:
            drawer.clear()
        if on_interval is not None:
            on_interval(line)

    intervals = _report.Intervals(plan, processes, emit) if interval else None
    board = Board(plan, drawer, intervals)
    try:
        tallies = run(plan, board)
    finally:
        if drawer is not None:
            drawer.clear()
    return _report.build(plan, tallies, intervals, board.watch)
