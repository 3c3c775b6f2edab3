"""Recognising the stop word in a byte stream split at arbitrary places."""

from __future__ import annotations


def _candidate(text: bytes, word: bytes) -> bytes | None:
    """
    What is worth keeping of an unfinished line: C{None} once the line can no
    longer equal C{word} after trimming, else at most C{len(word)} bytes.
    """
    text = text.lstrip()
    core = text.rstrip()
    if len(core) != len(text):
        # Trailing whitespace: nothing after it can join the word.
        return word if core == word else None
    return text if word.startswith(text) else None


class StopWordScanner:
    """
    Finds the first line whose whitespace-trimmed text equals the stop word.

    Lines end with LF (a CR before it is whitespace, so CRLF works too). The
    scanner keeps at most C{len(word)} bytes between calls, however long the
    lines are, so it costs no memory on a stream of megabytes.
    """

    def __init__(self, word: bytes) -> None:
        if not word:
            raise ValueError("the stop word must not be empty")
        self.word = word
        self._pending: bytes | None = b""

    def feed(self, data: bytes) -> int:
        """
        Scan the next chunk of the stream.

        @return: the index just past the LF that ends the first stop line in
            C{data}, or -1 if no line ends with the stop word in this chunk.
        """
        word = self.word
        first = data.find(b"\n")
        if first < 0:
            if self._pending is not None:
                self._pending = _candidate(self._pending + data, word)
            return -1
        if self._pending is not None and _candidate(self._pending + data[:first], word) == word:
            return first + 1
        last = data.rfind(b"\n")
        if first < last and data.find(word, first + 1, last) >= 0:
            start = first + 1
            while start <= last:
                end = data.index(b"\n", start)
                if data[start:end].strip() == word:
                    return end + 1
                start = end + 1
        self._pending = _candidate(data[last + 1 :], word)
        return -1
