"""Recognising the stop word in a byte stream split at arbitrary places."""

from __future__ import annotations

import re
from functools import lru_cache

try:
    # The scanner in C (netecho/_speedups.c), when it could be built.
    from netecho._speedups import Scanner as _CScanner
except ImportError:  # pragma: no cover - depends on the build
    _CScanner = None

#: What bytes.strip() trims, as a set and as a regular expression (less
#: the line feed, which ends a line and so is never inside one).
_BLANK = frozenset(b" \t\n\r\x0b\x0c")
_BLANKS = rb"[ \t\r\x0b\x0c]*"


def _candidate(text: bytes, word: bytes) -> bytes | None:
    """
    What is worth keeping of an unfinished line: C{None} once the line can no
    longer equal C{word} after trimming, else at most C{len(word)} bytes.
    """
    text = text.lstrip()
    if word.startswith(text):
        return text  # (a word with a space inside may continue after one)
    # Past the word: only whitespace may follow it.
    return word if text.rstrip() == word else None


@lru_cache(maxsize=16)
def _inner_line(word: bytes):
    """
    The search for a stop line with a line feed on both sides: one pass of
    the regular expression engine over the chunk (about twice as fast as
    C{word in data} on binary data, whose bytes.find cannot skip far with a
    short needle; the C scanner jumps from line feed to line feed with memchr).
    """
    return re.compile(b"\n" + _BLANKS + re.escape(word) + _BLANKS + b"(?=\n)").search


def is_stop_datagram(data: bytes, word: bytes) -> bool:
    """Whether a datagram is the stop word: its text, trimmed, equals C{word}."""
    return data.strip() == word


class StopWordScanner:
    """
    Finds the first line whose whitespace-trimmed text equals the stop word.

    Lines end with LF (a CR before it is whitespace, so CRLF works too). The
    scanner keeps at most C{len(word)} bytes between calls, however long the
    lines are, so it costs no memory on a stream of megabytes.
    """

    def __init__(self, word: bytes) -> None:
        if not word or word != word.strip():
            raise ValueError("the stop word must be non-empty, without surrounding whitespace")
        if b"\n" in word:
            raise ValueError("the stop word must be one line")
        self.word = word
        self._search = _inner_line(word)
        #: The unfinished line's text, as far as it can still become the
        #: word (None once it cannot): the scanner's whole state.
        self.pending: bytes | None = b""

    def feed(self, data: bytes) -> int:
        """
        Scan the next chunk of the stream.

        @return: the index just past the LF that ends the first stop line in
            C{data}, or -1 if no line ends with the stop word in this chunk.
        """
        word = self.word
        pending = self.pending
        first = data.find(b"\n")
        if first < 0:
            if pending is not None:
                self.pending = _candidate(pending + data, word)
            return -1
        # The line that was unfinished at the end of the last chunk.
        if pending is not None and _candidate(pending + data[:first], word) == word:
            return first + 1
        # Lines wholly inside this chunk.
        last = data.rfind(b"\n")
        if first < last:
            found = self._search(data, first, last + 1)
            if found is not None:
                return found.end() + 1
        # The unfinished last line. A candidate is whitespace, then at most
        # len(word) non-blank bytes, then (only after the whole word)
        # whitespace: if the last byte and the one len(word) before it are
        # both non-blank, it is none of that, and nothing need be copied.
        n = len(word)
        if len(data) - last - 1 > n and data[-1] not in _BLANK and data[-n - 1] not in _BLANK:
            self.pending = None
        else:
            self.pending = _candidate(data[last + 1 :], word)
        return -1


#: The scanner the services use: the C one (netecho._speedups.Scanner, the
#: same state and answers, one call a chunk) where it was built; the Python
#: StopWordScanner above is its twin (tests/test_stopword.py compares them).
Scanner = _CScanner if _CScanner is not None else StopWordScanner
