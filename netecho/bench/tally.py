"""
What a load loop counts (L{Tally}): round trips, errors by kind, latencies
in fixed-size histograms, and (with C{--interval}) one snapshot per
interval. Constant memory however long the run: nothing per round trip is
kept. A tally crosses a process boundary as L{Tally.to_wire}.
"""

from __future__ import annotations

from netecho.bench.histogram import Histogram

#: The error kinds, as reports name them.
CORRUPTED = "corrupted"  # a reply byte differs from what was sent (seen at once)
SHORT = "short"  # part of a reply came, the rest never did (timeout, close, end of run)
LONG = "long"  # bytes nobody asked for
TIMEOUT = "timeout"  # no byte of a reply within --timeout
LOST = "lost"  # UDP: no reply datagram within --timeout
CLOSED = "closed"  # the server closed the connection
RESET = "reset"  # the connection was reset (or another socket error)
REFUSED = "refused"
CONNECT = "connect"  # reopening a connection failed

#: Kinds that mean "no reply came at all" (what a rate limiter causes).
UNANSWERED = (TIMEOUT, LOST)


class Tally:
    """
    Counts of one loop. The loop records latencies into L{current}: the
    whole run's L{latency} without intervals, else a per-interval histogram
    folded into L{latency} at each interval's end.
    """

    def __init__(self, intervals: bool = False, connects: bool = False) -> None:
        self.round_trips = 0
        self.sent = 0
        self.errors: dict[str, int] = {}
        self.latency = Histogram()
        self.current = Histogram() if intervals else self.latency
        #: bench connect: connection set-up times.
        self.connect = Histogram() if connects else None
        self.elapsed = 0.0
        self._at = (0, 0)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def interval(self, k: int, start: float, end: float) -> tuple:
        """
        Close interval C{k} (C{start}..C{end}, seconds since measuring
        began): its snapshot for the parent, and the next one starts empty.
        """
        round_trips, errors = self.round_trips, self.error_count
        before_rt, before_err = self._at
        self._at = (round_trips, errors)
        wire = (k, start, end, round_trips - before_rt, errors - before_err, self.current.to_wire())
        if self.current is not self.latency:
            self.latency.add(self.current)
            self.current.clear()
        return wire

    def to_wire(self) -> tuple:
        """A picklable form for L{from_wire} (a worker's result)."""
        if self.current is not self.latency:
            self.latency.add(self.current)
            self.current.clear()
        return (self.round_trips, self.sent, dict(self.errors), self.latency.to_wire(),
                self.connect.to_wire() if self.connect is not None else None, self.elapsed)

    @classmethod
    def from_wire(cls, wire) -> "Tally":
        t = cls()
        t.round_trips, t.sent, t.errors, latency, connect, t.elapsed = wire
        t.latency = t.current = Histogram.from_wire(latency)
        t.connect = Histogram.from_wire(connect) if connect is not None else None
        return t


class Window:
    """
    When a loop counts: not during the warm-up, then for the duration, cut
    into intervals. A loop calls L{tick} at least every L{netecho.bench.plan.TICK}
    and L{finish} once it stops.
    """

    def __init__(self, plan, start: float, tally: Tally, channel) -> None:
        self.tally, self.channel = tally, channel
        self.measure_from = start + plan.warmup
        self.end = self.measure_from + plan.duration
        self.counting = plan.warmup == 0
        self.every = plan.interval
        self.k = 0
        self.next_cut = self.measure_from + plan.interval if plan.interval else float("inf")

    def tick(self, now: float) -> bool:
        """Count from now on if the warm-up is over, cut intervals; True once the run is over."""
        if not self.counting and now >= self.measure_from:
            self.counting = True
        if self.channel.stopped():
            self.end = min(self.end, max(now, self.measure_from))
        while now >= self.next_cut and self.next_cut <= self.end:
            self._cut(self.next_cut)
        self.channel.update(self.tally.round_trips, self.tally.error_count)
        return now >= self.end

    def _cut(self, at: float) -> None:
        start = self.k * self.every
        self.channel.interval(self.tally.interval(self.k, start, at - self.measure_from))
        self.k += 1
        self.next_cut = self.measure_from + (self.k + 1) * self.every

    def finish(self) -> None:
        """Record the time measured; send the last (partial) interval."""
        self.tally.elapsed = max(0.0, self.end - self.measure_from)
        if self.every and self.k * self.every < self.tally.elapsed - 1e-9:
            self._cut(self.end)
        self.channel.update(self.tally.round_trips, self.tally.error_count)
