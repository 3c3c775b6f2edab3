from twisted.trial.unittest import SynchronousTestCase

from netecho.stopword import StopWordScanner


def first_stop(chunks, word=b"STOP"):
    """(chunk index, end offset) of the first stop line, or None."""
    scanner = StopWordScanner(word)
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
        scanner = StopWordScanner(b"STOP")
        for _ in range(100):
            scanner.feed(b" " * 10000)
        scanner.feed(b"STO")
        self.assertEqual(scanner._pending, b"STO")
        scanner.feed(b"P" + b" " * 10000)
        self.assertEqual(scanner._pending, b"STOP")
        self.assertEqual(scanner.feed(b"\n"), 1)

    def test_empty_word_rejected(self):
        self.assertRaises(ValueError, StopWordScanner, b"")
