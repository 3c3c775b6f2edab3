"""
netecho.bench's pure parts: the report and its verdict, the rate-limit
hint, intervals merged across workers, the open-loop schedule, and the
argparse types of netecho/cli/types.py.
"""

from __future__ import annotations

import argparse
import socket

from twisted.trial.unittest import SynchronousTestCase

from netecho.bench.plan import Plan, Schedule, lead_time, stamped
from netecho.bench.report import Intervals, RateWatch, build, format_table, nice, verdict
from netecho.bench.tally import Tally
from netecho.cli import types
from netecho.errors import EXIT_FAILURE, EXIT_OK

PLAN = Plan(transport="tcp", network="tcp", family=socket.AF_INET, sockaddr=("127.0.0.1", 7),
            target="127.0.0.1:7", connections=2, size=100, duration=2.0, warmup=0.0, timeout=1.0)


def tally(round_trips: int = 0, errors: dict | None = None, latencies=(), elapsed: float = 2.0) -> Tally:
    t = Tally()
    t.round_trips = round_trips
    t.errors = dict(errors or {})
    for v in latencies:
        t.latency.record(v)
    t.elapsed = elapsed
    return t


class VerdictTests(SynchronousTestCase):
    def test_clean(self) -> None:
        report = build(PLAN, [tally(100, latencies=[1000] * 100), tally(100, latencies=[3000] * 100)])
        self.assertEqual(report["round_trips"], 200)
        self.assertEqual(report["round_trips_per_s"], 100.0)
        self.assertEqual(report["mb_per_s"], round(200 * 100 / 2 / 1e6, 3))
        self.assertEqual(report["latency_ms"]["p50"], 0.001)
        self.assertEqual(report["latency_ms"]["max"], 0.003)
        self.assertEqual(set(report["latency_ms"]), {"p50", "p90", "p99", "p99.9", "p99.99", "max"})
        self.assertEqual(verdict(report), (EXIT_OK, None))

    def test_nothing_completed(self) -> None:
        report = build(PLAN, [tally(), tally()])
        self.assertEqual(verdict(report), (EXIT_FAILURE, "bench tcp 127.0.0.1:7: no round trip completed in 2 s"))
        report = build(PLAN, [tally(errors={"corrupted": 3}), tally(errors={"corrupted": 1, "short": 2})])
        self.assertEqual(report["error_kinds"], {"corrupted": 4, "short": 2})
        self.assertEqual(verdict(report), (EXIT_FAILURE, "bench tcp 127.0.0.1:7: no round trip completed in 2 s: "
                                                         "4 corrupted, 2 short"))

    def test_some_failed(self) -> None:
        report = build(PLAN, [tally(10, {"closed": 2}, [1000] * 10)])
        self.assertEqual(verdict(report), (EXIT_FAILURE, "bench tcp 127.0.0.1:7: 2 of 12 round trips failed (2 closed)"))
        self.assertIn("errors: closed=2", format_table(report))


class RateWatchTests(SynchronousTestCase):
    def watch(self, per_second) -> RateWatch:
        w = RateWatch(100.0)
        total = 0
        for i, n in enumerate(per_second):
            total += n
            w.sample(101.0 + i, total)
        return w

    def test_flat_with_losses(self) -> None:
        w = self.watch([1000, 1000, 990, 1010])
        self.assertEqual(w.capped_near(4000, unanswered=40, stalled=1.0), 1000.0)

    def test_no_hint(self) -> None:
        flat = self.watch([1000, 1000, 1000])
        self.assertIsNone(flat.capped_near(3000, unanswered=0, stalled=0.0))  # nothing lost
        self.assertIsNone(flat.capped_near(3000, unanswered=1, stalled=0.01))  # one loss in a long run
        self.assertIsNone(self.watch([1000, 300, 2000]).capped_near(3300, 30, 1.0))  # not flat
        self.assertIsNone(self.watch([1000]).capped_near(1000, 10, 1.0))  # too short to tell

    def test_in_report(self) -> None:
        plan = Plan(**{**PLAN.__dict__, "transport": "udp", "network": "udp", "connections": 10})
        report = build(plan, [tally(2000, {"lost": 20}, [1000] * 10)], watch=self.watch([1000, 1000]))
        self.assertEqual(report["warnings"], ["replies capped near 1000/s: is the server rate-limiting?"])
        status, line = verdict(report)
        self.assertEqual(status, EXIT_FAILURE)
        self.assertEqual(line, "bench udp 127.0.0.1:7: 20 of 2020 round trips failed (20 lost); "
                               "replies capped near 1000/s: is the server rate-limiting?")

    def test_nice(self) -> None:
        self.assertEqual(nice(987.3), "1000")
        self.assertEqual(nice(1000), "1000")
        self.assertEqual(nice(300), "300")
        self.assertEqual(nice(150), "150")
        self.assertEqual(nice(1234), "1200")


class IntervalTests(SynchronousTestCase):
    def test_merged_across_workers(self) -> None:
        lines = []
        iv = Intervals(PLAN, 2, lines.append)
        a, b = Tally(intervals=True), Tally(intervals=True)
        a.round_trips, b.round_trips = 10, 30
        a.current.record(1_000_000)
        b.current.record(5_000_000)
        iv.add(a.interval(0, 0.0, 1.0))
        self.assertEqual(lines, [])  # waits for every worker
        iv.add(b.interval(0, 0.0, 1.0))
        self.assertEqual(lines, [{"start": 0.0, "end": 1.0, "round_trips": 40, "round_trips_per_s": 40.0,
                                  "mb_per_s": 0.004, "p99_ms": 5.0, "errors": 0}])
        # The interval's latencies went into the whole run's, and the next starts empty.
        self.assertEqual((a.latency.count, a.current.count), (1, 0))
        a.round_trips = 15
        self.assertEqual(a.interval(1, 1.0, 2.0)[3], 5)


class ScheduleTests(SynchronousTestCase):
    def test_round_robin_on_time(self) -> None:
        s = Schedule(10.0, 4.0, 3)
        taken = [s.take() for _ in range(5)]
        self.assertEqual(taken, [(0, 10.0), (1, 10.25), (2, 10.5), (0, 10.75), (1, 11.0)])

    def test_lead_time(self) -> None:
        self.assertEqual(lead_time(-1), 0.0)
        self.assertEqual(lead_time(0.0015), 0.0)
        self.assertAlmostEqual(lead_time(0.01), 0.0085)
        self.assertEqual(lead_time(5), 0.05)

    def test_share(self) -> None:
        plan = Plan(**{**PLAN.__dict__, "connections": 10, "rate": 1000.0})
        self.assertEqual(plan.share(3).rate, 300.0)
        self.assertEqual(plan.share(3).connections, 3)
        self.assertIsNone(PLAN.share(1).rate)

    def test_stamped(self) -> None:
        self.assertEqual(stamped(b"x" * 10, 258), b"\x02\x01" + b"\x00" * 6 + b"xx")
        self.assertEqual(stamped(b"abc", 1), b"\x01\x00\x00")


class TypesTests(SynchronousTestCase):
    def bad(self, parse, value: str, words: str) -> None:
        with self.assertRaises(argparse.ArgumentTypeError) as e:
            parse(value)
        self.assertIn(words, str(e.exception))

    def test_size(self) -> None:
        self.assertEqual([types.size(v) for v in ("64", "1K", "16k", "2M")], [64, 1024, 16384, 2 * 1024 * 1024])
        self.bad(types.size, "0", "at least 1 byte")
        self.bad(types.size, "1.5K", "not a size")
        self.bad(types.size, "-1", "not a size")

    def test_numbers(self) -> None:
        self.assertEqual(types.int_in(1, 10)("10"), 10)
        self.bad(types.int_in(1, 10), "11", "out of range (1-10)")
        self.bad(types.int_in(1), "x", "not a whole number")
        self.assertEqual(types.whole("3"), 3)
        self.bad(types.whole, "-3", "not a whole number >= 0")
        self.assertEqual(types.positive("0.5"), 0.5)
        self.bad(types.positive, "0", "must be more than 0")

    def test_seconds(self) -> None:
        self.assertEqual(types.seconds(allow_zero=True)("0"), 0.0)
        self.bad(types.seconds(), "0", "more than 0")
        self.bad(types.seconds(), "nan", "more than 0")
        self.bad(types.seconds(), "90000", "more than a day")

    def test_host_port(self) -> None:
        self.assertEqual(types.host_port("[::1]:7"), ("::1", 7))
        self.bad(types.host_port, "localhost", "HOST:PORT")
