"""
The report: the workers' tallies merged into one dict (what C{--json}
prints), the plain table, the interval lines, and the verdict (the exit
status and the one line on stderr when the run failed).
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Callable

from netecho.bench.histogram import Histogram
from netecho.bench.plan import Plan
from netecho.bench.tally import UNANSWERED, Tally
from netecho.errors import EXIT_FAILURE, EXIT_OK

#: The latency percentiles reported, and their names.
PERCENTILES = ((50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p99.9"), (99.99, "p99.99"))


def latency_ms(h: Histogram) -> dict[str, float]:
    """p50 ... p99.99 and max of C{h}, in milliseconds."""
    values = h.percentiles(tuple(q for q, _ in PERCENTILES))
    out = {name: round(values[q] / 1e6, 4) for q, name in PERCENTILES}
    out["max"] = round(h.max / 1e6, 4)
    return out


class RateWatch:
    """
    Notices replies that come at a flat rate while requests go unanswered:
    what a rate limiter in the server looks like from outside. Fed the
    running total of round trips; keeps the last minute of one-second counts.
    """

    def __init__(self, measure_from: float, bins: int = 60) -> None:
        self.next_cut = measure_from + 1.0
        self.last = 0
        self.counts: deque[int] = deque(maxlen=bins)

    def sample(self, now: float, round_trips: int) -> None:
        if now < self.next_cut:
            return
        self.counts.append(round_trips - self.last)
        self.last = round_trips
        # A late sample closes one bin; skipped seconds are not made up.
        self.next_cut = max(self.next_cut + 1.0, now + 0.5)

    def capped_near(self, round_trips: int, unanswered: int, stalled: float) -> float | None:
        """
        The rate replies seem capped at, or None. Only when requests went
        unanswered for a good part of the time (C{stalled}: the share of
        the in-flight slots' time spent waiting for replies that never came,
        or of the requests sent, in open loop, at least 0.2) and the
        one-second counts (two or more) agree within 20 %.
        """
        if round_trips == 0 or unanswered == 0 or stalled < 0.2:
            return None
        counts = list(self.counts)
        if len(counts) < 2:
            return None
        middle = statistics.median(counts)
        if middle <= 0 or sum(abs(c - middle) <= 0.2 * middle for c in counts) < 0.75 * len(counts):
            return None
        return float(middle)


def nice(rate: float) -> str:
    """C{1000} for 987.3: two significant digits, one if within 5 %."""
    for digits in (1, 2):
        rounded = float(f"{rate:.{digits}g}")
        if abs(rounded - rate) <= 0.05 * rate:
            return f"{rounded:g}" if rounded < 1e6 else f"{rounded:.0f}"
    return f"{rate:.0f}"


class Intervals:
    """
    Interval snapshots from C{sources} loops, merged and handed to C{emit}
    once every loop has sent interval k; kept for the JSON report.
    """

    def __init__(self, plan: Plan, sources: int, emit: Callable[[dict], None] | None = None) -> None:
        self.plan, self.sources, self.emit = plan, sources, emit
        self.pending: dict[int, list] = {}
        self.done: list[dict] = []

    def add(self, wire: tuple) -> None:
        k = wire[0]
        parts = self.pending.setdefault(k, [])
        parts.append(wire)
        if len(parts) == self.sources:
            del self.pending[k]
            self._merge(parts)

    def flush(self) -> None:
        """Merge what came of intervals not every loop sent (a loop that ended early)."""
        for k in sorted(self.pending):
            self._merge(self.pending.pop(k))

    def _merge(self, parts: list) -> None:
        _, start, end, _, _, _ = parts[0]
        end = max(p[2] for p in parts)
        h = Histogram()
        for p in parts:
            h.add(Histogram.from_wire(p[5]))
        round_trips = sum(p[3] for p in parts)
        span = max(end - start, 1e-9)
        line = {
            "start": round(start, 3),
            "end": round(end, 3),
            "round_trips": round_trips,
            "round_trips_per_s": round(round_trips / span, 1),
            "mb_per_s": round(round_trips * payload_bytes(self.plan) / span / 1e6, 3),
            "p99_ms": round(h.percentile(99) / 1e6, 4),
            "errors": sum(p[4] for p in parts),
        }
        self.done.append(line)
        if self.emit is not None:
            self.emit(line)


def payload_bytes(plan: Plan) -> int:
    """Message bytes echoed per round trip (none for PB add() calls)."""
    return 0 if plan.transport == "pb" and plan.pb_call == "add" else plan.size


def format_interval(line: dict) -> str:
    """One interval line, as iperf3 -i prints them."""
    return (f"[{line['start']:6.1f}-{line['end']:6.1f} s]  rt/s {line['round_trips_per_s']:>10.1f}  "
            f"MB/s {line['mb_per_s']:>9.3f}  p99_ms {line['p99_ms']:>8.3f}  errors {line['errors']}")


def build(plan: Plan, tallies: list[Tally], intervals: Intervals | None = None,
          watch: RateWatch | None = None) -> dict:
    """The report of a run: the tallies of every loop merged."""
    round_trips = sum(t.round_trips for t in tallies)
    sent = sum(t.sent for t in tallies)
    errors: dict[str, int] = {}
    latency = Histogram()
    connect = Histogram()
    for t in tallies:
        for kind, n in t.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        latency.add(t.latency)
        if t.connect is not None:
            connect.add(t.connect)
    elapsed = max((t.elapsed for t in tallies), default=0.0) or plan.duration
    report = {
        "transport": plan.transport,
        "target": plan.target,
        "connections": plan.connections,
        "size": plan.size,
        "duration": plan.duration,
        "warmup": plan.warmup,
        "processes": plan.processes,
        "pipeline": plan.pipeline,
        **({"call": plan.pb_call} if plan.transport == "pb" else {}),
        **({"network": plan.network} if plan.transport == "connect" else {}),
        "elapsed": round(elapsed, 3),
        "round_trips": round_trips,
        "round_trips_per_s": round(round_trips / elapsed, 1),
        "mb_per_s": round(round_trips * payload_bytes(plan) / elapsed / 1e6, 3),
        "latency_ms": latency_ms(latency),
        "latency_from": "scheduled send" if plan.rate is not None else "send",
        "errors": sum(errors.values()),
        "error_kinds": dict(sorted(errors.items())),
        "warnings": [],
    }
    if plan.rate is not None:
        report["rate"] = {"target": plan.rate, "sent_per_s": round(sent / elapsed, 1),
                          "achieved": report["round_trips_per_s"]}
    if plan.transport == "connect":
        report["connections_per_s"] = report["round_trips_per_s"]
        report["connect_ms"] = latency_ms(connect)
    if intervals is not None:
        intervals.flush()
        report["intervals"] = intervals.done
    if watch is not None:
        unanswered = sum(errors.get(kind, 0) for kind in UNANSWERED)
        if plan.rate is not None:
            stalled = unanswered / max(1, sent)
        else:
            stalled = unanswered * plan.timeout / (plan.connections * plan.pipeline * elapsed)
        cap = watch.capped_near(round_trips, unanswered, stalled)
        if cap is not None:
            report["warnings"].append(f"replies capped near {nice(cap)}/s: is the server rate-limiting?")
    return report


def columns(report: dict) -> tuple:
    """The plain table's columns: (header, value, format)."""
    lat = report["latency_ms"]
    first = (("conns", report["round_trips"], "{:d}"), ("conn/s", report["round_trips_per_s"], "{:.1f}")) \
        if report["transport"] == "connect" else \
        (("round-trips", report["round_trips"], "{:d}"), ("rt/s", report["round_trips_per_s"], "{:.1f}"),
         ("MB/s", report["mb_per_s"], "{:.3f}"))
    if report["transport"] == "connect":
        lat = report["connect_ms"]
        names = ("connect_p50", "connect_p99", "connect_p99.9", "connect_max")
        keys = ("p50", "p99", "p99.9", "max")
    else:
        names = ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "p99.99_ms", "max_ms")
        keys = ("p50", "p90", "p99", "p99.9", "p99.99", "max")
    return (*first, *((n, lat[k], "{:.3f}") for n, k in zip(names, keys)), ("errors", report["errors"], "{:d}"))


def format_table(report: dict) -> str:
    """The plain output: a title line, a header and one row, then errors, rate and warnings."""
    n = report["connections"]
    if report["transport"] == "connect":
        what = f"connect, {report['size']} B echo, close"
    else:
        what = {"echo": f"{report['size']} B echo() calls", "add": "add() calls"}.get(
            report.get("call"), f"{report['size']} B echo")
    mode = f", open loop at {report['rate']['target']:g} rt/s" if "rate" in report else ""
    if report["pipeline"] > 1:
        mode += f", {report['pipeline']} in flight each"
    measured = f"{report['duration']:g} s measured"
    if report["elapsed"] < report["duration"] - 0.01:
        measured = f"{report['elapsed']:g} s measured (stopped early)"
    title = (f"{report['transport']} {report['target']}: {n} connection{'s' if n != 1 else ''}, "
             f"{what}{mode}, {measured} after {report['warmup']:g} s "
             f"warmup, {report['processes']} process{'es' if report['processes'] != 1 else ''}")
    cols = columns(report)
    cells = [fmt.format(value) for _, value, fmt in cols]
    widths = [max(len(h), len(c)) for (h, _, _), c in zip(cols, cells)]
    lines = [
        title,
        "  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths)),
        "  ".join(c.rjust(w) for c, w in zip(cells, widths)),
    ]
    if report["error_kinds"]:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in report["error_kinds"].items()))
    if "rate" in report:
        r = report["rate"]
        lines.append(f"rate: target {r['target']:g}/s, sent {r['sent_per_s']:g}/s, achieved {r['achieved']:g}/s "
                     "(latency from each message's scheduled send time)")
    return "\n".join(lines)


def verdict(report: dict) -> tuple[int, str | None]:
    """
    The exit status and the line for stderr: 100 if no round trip completed
    or any failed, naming the server's rate limit when it looks like one.
    """
    title = f"bench {report['transport']} {report['target']}"
    kinds = ", ".join(f"{v} {k}" for k, v in report["error_kinds"].items())
    hints = "".join(f"; {w}" for w in report["warnings"])
    one, many = ("connection", "connections") if report["transport"] == "connect" else ("round trip", "round trips")
    if report["round_trips"] == 0:
        tail = f": {kinds}" if kinds else ""
        return EXIT_FAILURE, f"{title}: no {one} completed in {min(report['duration'], report['elapsed']):g} s{tail}{hints}"
    if report["errors"]:
        total = report["errors"] + report["round_trips"]
        return EXIT_FAILURE, f"{title}: {report['errors']} of {total} {many} failed ({kinds}){hints}"
    if hints:
        return EXIT_OK, f"{title}{hints}"
    return EXIT_OK, None
