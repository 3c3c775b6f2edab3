"""
The live progress line on stderr: drawn only when stderr is a terminal,
at most ten times a second, with the live rate and the errors so far.
"""

from __future__ import annotations

import time
from typing import IO, Callable

from netecho.bench.plan import Plan

#: The least time between two redraws (ten a second at most).
REDRAW = 0.1


class Progress:
    """Called with running totals as often as the caller likes; draws at most every L{REDRAW}."""

    def __init__(self, plan: Plan, out: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.plan, self.out, self.clock = plan, out, clock
        self.began = clock()
        self.last = float("-inf")
        self.last_total = 0
        self.drawn = False

    def __call__(self, round_trips: int, errors: int) -> None:
        now = self.clock()
        if now - self.last < REDRAW:
            return
        rate = (round_trips - self.last_total) / (now - self.last) if self.drawn else 0.0
        self.last, self.last_total = now, round_trips
        spent = now - self.began
        total = self.plan.warmup + self.plan.duration
        phase = "warmup" if spent < self.plan.warmup else "measuring"
        self.out.write(f"\r{phase} {min(spent, total):5.1f}/{total:g}s  {rate:>10,.0f}/s  "
                       f"done {round_trips:,}  errors {errors:,}   ")
        self.out.flush()
        self.drawn = True

    def clear(self) -> None:
        """Erase the line (before the report is printed)."""
        if self.drawn:
            self.out.write("\r\033[K")
            self.out.flush()
            self.drawn = False
