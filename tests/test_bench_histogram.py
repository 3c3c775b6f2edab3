"""netecho.bench.histogram: the fixed-size log-linear latency histogram."""

from __future__ import annotations

import pickle
import random

from twisted.trial.unittest import SynchronousTestCase

from netecho.bench.histogram import BUCKETS, HIGHEST, Histogram, highest_in, index_of


class BucketTests(SynchronousTestCase):
    def test_buckets_cover_values_in_order(self) -> None:
        """Every value falls in a bucket whose top is at least it and within 0.1 % of it."""
        rng = random.Random(1)
        values = list(range(5000)) + [rng.randrange(1, HIGHEST) for _ in range(20000)] + [HIGHEST]
        for v in values:
            i = index_of(v)
            self.assertTrue(0 <= i < BUCKETS, v)
            top = highest_in(i)
            self.assertGreaterEqual(top, v)
            self.assertLessEqual(top - v, max(0, v) / 1024 + 1, v)
        last = -1
        for v in sorted(values):
            i = index_of(v)
            self.assertGreaterEqual(i, last)
            last = i

    def test_fixed_size(self) -> None:
        """A million values later the histogram takes the same memory."""
        h = Histogram()
        size = h.counts.buffer_info()[1]
        rng = random.Random(2)
        for _ in range(100_000):
            h.record(rng.randrange(10_000, 50_000_000))
        h.record(HIGHEST * 10)  # beyond the top: counted at the top, max exact
        self.assertEqual(h.counts.buffer_info()[1], size)
        self.assertEqual(h.max, HIGHEST * 10)
        self.assertEqual(h.count, 100_001)


class PercentileTests(SynchronousTestCase):
    def test_percentiles(self) -> None:
        h = Histogram()
        for v in range(1, 100_001):  # 1 .. 100,000 ns
            h.record(v * 1000)
        got = h.percentiles((50, 90, 99, 99.9, 99.99))
        for q, exact in ((50, 50_000_000), (90, 90_000_000), (99, 99_000_000), (99.9, 99_900_000),
                         (99.99, 99_990_000)):
            self.assertLessEqual(abs(got[q] / exact - 1), 0.001, q)
        self.assertEqual(h.percentile(100), 100_000_000)
        self.assertEqual((h.min, h.max), (1000, 100_000_000))

    def test_empty(self) -> None:
        h = Histogram()
        self.assertEqual(h.percentile(99), 0)
        self.assertEqual(h.percentiles((50, 99)), {50: 0, 99: 0})

    def test_small_counts(self) -> None:
        """With few values, the top percentiles are the largest value, never above max."""
        h = Histogram()
        for v in (10, 20, 300_001):
            h.record(v)
        self.assertEqual(h.percentile(50), 20)
        self.assertEqual(h.percentile(99.99), 300_001)
        self.assertEqual(h.percentile(1), 10)


class MergeTests(SynchronousTestCase):
    def test_add_and_wire(self) -> None:
        """Merging two halves (as workers' histograms are) equals recording all in one."""
        rng = random.Random(3)
        values = [rng.randrange(1, 10**9) for _ in range(20_000)]
        whole, a, b = Histogram(), Histogram(), Histogram()
        for i, v in enumerate(values):
            whole.record(v)
            (a if i % 2 else b).record(v)
        merged = Histogram.from_wire(pickle.loads(pickle.dumps(a.to_wire())))
        merged.add(Histogram.from_wire(b.to_wire()))
        self.assertEqual(list(merged.counts), list(whole.counts))
        self.assertEqual((merged.count, merged.min, merged.max), (whole.count, whole.min, whole.max))
        qs = (50, 90, 99, 99.9, 99.99)
        self.assertEqual(merged.percentiles(qs), whole.percentiles(qs))

    def test_clear(self) -> None:
        h = Histogram()
        h.record(5)
        h.clear()
        self.assertEqual((h.count, h.max, sum(h.counts)), (0, 0, 0))
        h.record(7)
        self.assertEqual((h.min, h.max), (7, 7))
