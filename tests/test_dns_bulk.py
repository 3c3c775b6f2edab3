"""
netecho lookup --file (netecho.cli.lookup.many and Progress): a few shared
sockets with random source ports and IDs, input read as it is needed, and
a progress bar redrawn at most ten times a second.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile

from twisted.internet import reactor, task
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho.cli import lookup as cli
from tests.test_lookup import TTYBuffer, a_records, reply_to, serve


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args([*argv, "--timeout", "1", "--retries", "1"])


class BulkTests(TestCase):
    async def test_shared_pool_random_ports_and_ids(self):
        server, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        names = [f"n{i}.example" for i in range(400)]
        out = io.StringIO()
        args = parse("a", "--file", "-", "--server", f"127.0.0.1:{address[1]}", "--concurrency", "40")
        self.assertEqual(await cli.many(reactor, args, iter(names), out, io.StringIO()), 0)
        self.assertEqual(out.getvalue().splitlines(), [f"{n} 192.0.2.1" for n in names])
        ports = {addr[1] for addr in server.sources}
        # A few sockets, not one per query, and more than one: the port is drawn per query.
        self.assertTrue(1 < len(ports) <= cli.BULK_SOCKETS, ports)
        ids = [q.id for q in server.queries]
        self.assertGreater(len(set(ids)), 350)  # 16 random bits each: few collisions in 400

    async def test_input_read_as_needed(self):
        """However many names, only a window of them is held: memory stays flat."""
        _, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        out = io.StringIO()
        args = parse("a", "--file", "-", "--server", f"127.0.0.1:{address[1]}", "--concurrency", "4")
        window = 4 * cli.WINDOW_PER_LOOKUP
        ahead = []

        def names():
            for i in range(3000):
                ahead.append(i - out.getvalue().count("\n"))
                yield f"n{i}.example"

        self.assertEqual(await cli.many(reactor, args, names(), out, io.StringIO()), 0)
        self.assertEqual(len(out.getvalue().splitlines()), 3000)
        self.assertLessEqual(max(ahead), window + 4)

    async def test_slow_first_answer_holds_the_rest_in_order(self):
        def behave(q):
            if q.queries[0].name.name == b"slow.example":
                return []  # silent on the first try: answered on the retry
            return [reply_to(q, a_records(q, "192.0.2.1"))]
        server, address = serve(self, behave)
        original = server.behave
        seen = []

        def once_silent(q):
            seen.append(q.queries[0].name.name)
            if q.queries[0].name.name == b"slow.example" and seen.count(b"slow.example") > 1:
                return [reply_to(q, a_records(q, "192.0.2.9"))]
            return original(q)
        server.behave = once_silent
        names = ["slow.example"] + [f"n{i}.example" for i in range(100)]
        out = io.StringIO()
        args = parse("a", "--file", "-", "--server", f"127.0.0.1:{address[1]}", "--concurrency", "2")
        args.timeout = 0.3
        self.assertEqual(await cli.many(reactor, args, iter(names), out, io.StringIO()), 0)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[0], "slow.example 192.0.2.9")
        self.assertEqual(lines[1:], [f"n{i}.example 192.0.2.1" for i in range(100)])

    async def test_stats_summary_line(self):
        _, address = serve(self, lambda q: [reply_to(q, rcode=dns.ENAME)] if b"nx" in q.queries[0].name.name
                           else [reply_to(q, a_records(q, "192.0.2.1"))])
        err = io.StringIO()
        args = parse("a", "--file", "-", "--server", f"127.0.0.1:{address[1]}", "--stats")
        with self.assertRaises(Exception):
            await cli.many(reactor, args, iter(["a.example", "nx.example"]), io.StringIO(), err)
        self.assertRegex(err.getvalue(), r"^;; 2 lookups in \d+\.\d{3} s \([\d.]+ lookups/s\), 1 failed\n$")


class ProgressTests(SynchronousTestCase):
    def test_at_most_ten_redraws_a_second(self):
        clock = task.Clock()
        err = TTYBuffer()
        progress = cli.Progress(clock, 2000, io.StringIO(), err)
        for i in range(2000):  # two seconds of lookups, one a millisecond
            clock.advance(0.001)
            progress.step(failed=i % 100 == 0)
        self.assertLessEqual(progress.draws, 21)
        self.assertGreaterEqual(progress.draws, 15)
        progress.close()
        text = err.getvalue()
        self.assertIn("2000/2000", text)
        self.assertIn("failed=20", text)
        self.assertIn("lookups/s", text)
        self.assertRegex(text, r"\d\d:\d\d<\d\d:\d\d")  # elapsed<ETA

    def test_nothing_drawn_off_a_terminal(self):
        err = io.StringIO()
        progress = cli.Progress(task.Clock(), 10, io.StringIO(), err)
        progress.step(False)
        progress.close()
        self.assertEqual(err.getvalue(), "")

    def test_lines_for_a_terminal_wait_for_the_redraw(self):
        clock = task.Clock()
        out, err = TTYBuffer(), TTYBuffer()
        progress = cli.Progress(clock, 3, out, err)
        progress.line("a 192.0.2.1\n")
        progress.step(False)
        self.assertEqual(out.getvalue(), "")  # not yet: it would tear the bar
        clock.advance(0.2)
        progress.step(False)
        self.assertEqual(out.getvalue(), "a 192.0.2.1\n")
        progress.close()

    def test_count_names_streams_a_regular_file(self):
        directory = tempfile.mkdtemp(prefix="netecho-bulk-")
        path = os.path.join(directory, "names")
        with open(path, "w") as f:
            f.write("a\n# c\n\nb\n")
        self.assertEqual(cli.count_names(path), 2)
        self.assertIsNone(cli.count_names(directory))
