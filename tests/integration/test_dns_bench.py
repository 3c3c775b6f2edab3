"""benchmarks/dns.py: dnsperf and netecho lookup --file, side by side, print a well-formed table."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from tests import peers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DNSBenchmarkTests(TestCase):
    def test_table(self):
        peers.require("dnsperf", "dnsperf")
        peers.require("nsd", "nsd")
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, "benchmarks", "dns.py"), "--names", "2000", "--repeat", "2",
             "--concurrency", "20"],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertTrue(lines[0].startswith("2000 A queries a run, 20 in flight"), lines)
        rows = [line.split() for line in lines[2:]]
        self.assertEqual([r[0] for r in rows], ["1", "2", "median"])
        for row in rows:
            perf, ours, ratio = (float(v.replace(",", "")) for v in row[1:4])
            self.assertGreater(perf, 0)
            self.assertGreater(ours, 0)
            self.assertLess(abs(ratio - ours / perf), 0.002)
        for row in rows[:2]:
            self.assertRegex(row[4], r"^\d+/\d+$")  # lost (dnsperf) / failed (netecho): counted, not judged
