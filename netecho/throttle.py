"""Log lines about garbage and abuse, at most one per reason per interval."""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.logger import Logger


class ThrottledLog:
    """
    Emits a warning for an event unless one for the same reason was emitted
    less than C{interval} seconds ago; the next line says how many were held
    back. An attacker therefore cannot flood the log.
    """

    def __init__(
        self,
        log: Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, reason: str, fmt: str, /, **kw: Any) -> None:
        """Log C{fmt} (a twisted.logger format) unless C{reason} was just logged."""
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._last[reason] = now
        held = self._held.pop(reason, 0)
        suffix = f" ({held} more like this not logged)" if held else ""
        self._log.warn(fmt + "{_suffix}", _suffix=suffix, **kw)
