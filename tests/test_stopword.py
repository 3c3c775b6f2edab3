from twisted.trial.unittest import SkipTest, SynchronousTestCase

from netecho import stopword
from tests import peers


def first_stop(chunks, word=b"STOP"):
    """(chunk index, end offset) of the first stop line, or None."""
    scanner = stopword.StopWordScanner(word)  # (looked up here: some tests patch it)
    for i, chunk in enumerate(chunks):
        end = scanner.feed(chunk)
        if end >= 0:
            return i, end
    return None


class StopWordScannerTests(SynchronousTestCase):
    def test_whole_line(self):
        self.assertEqual(first_stop([b"STOP\n"]), (0, 5))

    def test_trimmed_whitespace_and_crlf(self):
        self.assertEqual(first_stop([b" \t STOP \r\n"]), (0, 10))

    def test_split_across_chunks(self):
        self.assertEqual(first_stop([b"  ", b"  ST", b"OP ", b"   ", b"\n"]), (4, 1))

    def test_later_line_in_chunk(self):
        self.assertEqual(first_stop([b"a\nb\n  STOP\nrest"]), (0, 11))

    def test_line_after_chunk_boundary(self):
        self.assertEqual(first_stop([b"x\n", b"STOP\n"]), (1, 5))

    def test_not_a_stop_line(self):
        for chunks in ([b"xSTOP\n"], [b"STOPX\n"], [b"ST OP\n"], [b"STOP x\n"], [b"stop\n"],
                       [b"STOP "], [b"STOP"], [b"STOP ", b"X\n"]):
            self.assertIsNone(first_stop(chunks), chunks)

    def test_custom_word(self):
        self.assertEqual(first_stop([b"QUIT\n"], b"QUIT"), (0, 5))
        self.assertIsNone(first_stop([b"STOP\n"], b"QUIT"))

    def test_memory_bounded(self):
        """A never-ending line keeps at most len(word) bytes pending."""
        scanner = stopword.StopWordScanner(b"STOP")
        for _ in range(100):
            scanner.feed(b" " * 10000)
        scanner.feed(b"STO")
        self.assertEqual(scanner.pending, b"STO")
        scanner.feed(b"P" + b" " * 10000)
        self.assertEqual(scanner.pending, b"STOP")
        self.assertEqual(scanner.feed(b"\n"), 1)

    def test_empty_word_rejected(self):
        self.assertRaises(ValueError, stopword.StopWordScanner, b"")


def reference(chunks, word=b"STOP"):
    """The stop word found the slow way: every line of the joined stream, trimmed."""
    stream = b"".join(chunks)
    start = 0
    while True:
        end = stream.find(b"\n", start)
        if end < 0:
            return None
        if stream[start:end].strip() == word:
            break
        start = end + 1
    position = end + 1
    for i, chunk in enumerate(chunks):
        if position <= len(chunk):
            return i, position
        position -= len(chunk)
    raise AssertionError("unreachable")


class StopWordAgainstReferenceTests(SynchronousTestCase):
    def check_random(self, word, pieces, rounds=3000):
        import random

        rng = random.Random(862)
        found = 0
        for _ in range(rounds):
            stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
            cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 6))))
            chunks, previous = [], 0
            for cut in cuts + [len(stream)]:
                if cut > previous:
                    chunks.append(stream[previous:cut])
                    previous = cut
            expected = reference(chunks, word)
            found += expected is not None
            self.assertEqual(first_stop(chunks, word), expected, (word, chunks))
        # Both outcomes were exercised many times.
        self.assertGreater(found, rounds // 8)
        self.assertLess(found, rounds * 7 // 8)

    def test_random_streams_and_splits(self):
        """
        Thousands of random streams, built from pieces of the word, whitespace,
        newlines and other bytes, cut at random places: the scanner finds
        exactly the first stop line the slow reference finds.
        """
        self.check_random(b"STOP", [
            b"S", b"T", b"O", b"P", b"ST", b"OP", b"STOP", b"TOP", b" ", b"\t", b"\r", b"\x0b", b"\x0c",
            b"\n", b"\n", b"x", b"\x00", b"\xff", b"STOP\n", b"\nSTO", b"  STOP  \r\n", b"xx" * 20,
        ])

    def test_random_one_byte_and_spaced_words(self):
        self.check_random(b"Q", [b"Q", b"QQ", b" ", b"\t", b"\r", b"\n", b"\n", b"x", b"Q\n", b"\nQ \n"])
        self.check_random(b"GO AWAY", [
            b"GO", b" ", b"AWAY", b"GO AWAY", b"\n", b"\n", b"\r", b"GO  AWAY", b"x", b"GO AWAY\n", b"AW",
        ])

    def test_line_breaks_in_word_rejected(self):
        self.assertRaises(ValueError, stopword.StopWordScanner, b"A\nB")
        self.assertRaises(ValueError, stopword.StopWordScanner, b" STOP")


class CScannerTypeTests(StopWordScannerTests, StopWordAgainstReferenceTests):
    """The same tests with netecho._speedups.Scanner, the scanner the services use where it is built."""

    def setUp(self):
        if stopword._CScanner is None:
            raise SkipTest("netecho._speedups is not built (CScannerTests says whether that is allowed)")
        self.patch(stopword, "StopWordScanner", stopword._CScanner)

    def test_pending_is_the_same_as_python(self):
        """Chunk by chunk, the C scanner keeps the same pending text as the Python one."""
        import random

        rng = random.Random(7)
        pieces = [b"S", b"T", b"O", b"P", b"ST", b" ", b"\t", b"\n", b"x", b"STOP", b"  ", b"OP\n"]
        for _ in range(2000):
            c, py = stopword._CScanner(b"STOP"), PYTHON_SCANNER(b"STOP")
            for _ in range(rng.randint(1, 8)):
                chunk = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))
                found = c.feed(chunk)
                self.assertEqual(found, py.feed(chunk), chunk)
                if found >= 0:
                    break
                self.assertEqual(c.pending, py.pending, chunk)

    def test_uses_it(self):
        self.assertIs(stopword.Scanner, stopword._CScanner)


PYTHON_SCANNER = stopword.StopWordScanner


class CScannerTests(SynchronousTestCase):
    def test_built(self):
        """Where the suite's C extension was built (CI), the services use the C scanner."""
        if stopword._CScanner is None:
            peers.missing("netecho._speedups is not built (needs gcc and Python's headers; scripts/test builds it)")
        self.assertIs(stopword.Scanner, stopword._CScanner)
        self.assertIsNot(stopword.StopWordScanner, stopword._CScanner)  # the Python twin stays pure Python
