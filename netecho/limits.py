"""Abuse limits shared by the services: per-source token buckets in a bounded table."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Hashable


class TokenBuckets:
    """
    One token bucket per key (a source address), C{rate} tokens a second up
    to C{burst}. The table keeps at most C{size} keys, forgetting the least
    recently seen, so a flood of spoofed sources cannot grow it (NSD's
    rate-limit table works the same way).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._clock = clock
        self._table: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def _level(self, key: Hashable, now: float) -> float:
        entry = self._table.get(key)
        if entry is None:
            return self.burst
        tokens, then = entry
        return min(self.burst, tokens + (now - then) * self.rate)

    def allowed(self, key: Hashable) -> bool:
        """True if C{key} has a token left (without taking one)."""
        return self._level(key, self._clock()) >= 1

    def take(self, key: Hashable) -> bool:
        """Take a token for C{key}; False (and nothing taken) if it has none."""
        now = self._clock()
        tokens = self._level(key, now)
        ok = tokens >= 1
        if ok:
            tokens -= 1
        table = self._table
        table[key] = (tokens, now)
        table.move_to_end(key)
        if len(table) > self.size:
            table.popitem(last=False)
        return ok
