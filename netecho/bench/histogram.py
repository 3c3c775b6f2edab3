"""
A fixed-size log-linear latency histogram, after HdrHistogram (the
``hdrhistogram`` package is not a dependency): constant memory however long
a run lasts, values to about 0.1 % (three significant digits), mergeable
across worker processes by adding counts.

Values are whole nanoseconds. Below 2,048 ns every value has its own
bucket; above, each power of two is split into 1,024 equal buckets. Values
above L{HIGHEST} (an hour) are counted as L{HIGHEST}; the true maximum is
kept on the side.
"""

from __future__ import annotations

from array import array

#: Sub-buckets in each power of two (a relative error of at most 1/1024).
SUB_BITS = 10
_HALF = 1 << SUB_BITS
_LINEAR = _HALF << 1
#: The highest value told apart from larger ones: an hour, in nanoseconds.
HIGHEST = 3600 * 10**9


def index_of(value: int) -> int:
    """The bucket of C{value} (a non-negative whole number of nanoseconds)."""
    if value < _LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - SUB_BITS - 1
    return (shift << SUB_BITS) + (value >> shift)


def highest_in(index: int) -> int:
    """The largest value counted in bucket C{index}."""
    if index < _LINEAR:
        return index
    shift = (index >> SUB_BITS) - 1
    low = (index - (shift << SUB_BITS)) << shift
    return low + (1 << shift) - 1


BUCKETS = index_of(HIGHEST) + 1


class Histogram:
    """
    Counts of latencies in nanoseconds, in L{BUCKETS} fixed buckets.

    @ivar count: values recorded.
    @ivar max: the largest value recorded (exact, even above L{HIGHEST}).
    @ivar min: the smallest value recorded (0 when none).
    """

    __slots__ = ("counts", "count", "max", "min")

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * BUCKETS))
        self.count = 0
        self.max = 0
        self.min = 0

    def record(self, value: int) -> None:
        """Count one value (nanoseconds; negative counts as 0)."""
        if value < _LINEAR:
            if value < 0:
                value = 0
            self.counts[value] += 1
        else:
            top = value if value < HIGHEST else HIGHEST
            shift = top.bit_length() - SUB_BITS - 1
            self.counts[(shift << SUB_BITS) + (top >> shift)] += 1
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1

    def add(self, other: "Histogram") -> None:
        """Add C{other}'s counts to these (merging workers, or intervals into the whole)."""
        if not other.count:
            return
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.min = other.min if not self.count else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count

    def clear(self) -> None:
        """Forget every value (the buckets are reused, not reallocated)."""
        if self.count:
            self.counts[:] = array("q", bytes(8 * BUCKETS))
        self.count = self.max = self.min = 0

    def percentile(self, q: float) -> int:
        """
        The value at or below which C{q} percent of the values lie (the
        highest value of its bucket, never above L{max}); 0 when empty.
        """
        return self.percentiles((q,))[q]

    def percentiles(self, qs: tuple[float, ...]) -> dict[float, int]:
        """Several percentiles in one pass over the buckets."""
        out: dict[float, int] = {}
        if not self.count:
            return {q: 0 for q in qs}
        wanted = sorted(qs)
        ranks = [max(1, int(-(-self.count * q // 100))) if q < 100 else self.count for q in wanted]
        seen, k = 0, 0
        for i, n in enumerate(self.counts):
            if not n:
                continue
            seen += n
            while k < len(wanted) and seen >= ranks[k]:
                out[wanted[k]] = min(highest_in(i), self.max)
                k += 1
            if k == len(wanted):
                break
        for q in wanted[k:]:
            out[q] = self.max
        return out

    def to_wire(self) -> tuple[int, int, int, list[tuple[int, int]]]:
        """A compact picklable form (only the buckets in use), for L{from_wire}."""
        return self.count, self.min, self.max, [(i, n) for i, n in enumerate(self.counts) if n]

    @classmethod
    def from_wire(cls, wire) -> "Histogram":
        """The histogram L{to_wire} described."""
        h = cls()
        h.count, h.min, h.max, used = wire
        for i, n in used:
            h.counts[i] = n
        return h
