"""The random-number service: every line received gets a random number."""

from __future__ import annotations

import random

from netecho.echo import StreamFactory, StreamSession

#: Answers are uniform in [0, RANDOM_LIMIT), like Go's rand.Int31.
RANDOM_LIMIT = 2**31


class RandomNumber(StreamSession):
    """
    Answers each received line (LF-terminated, whatever its length or
    content, the stop line included) with a random number and a newline.
    Only line ends are counted, so a long line costs no memory.
    """

    def answer(self, data: bytes) -> None:
        lines = data.count(b"\n")
        if not lines:
            return
        below = self.factory.rng.randrange
        reply = "".join([f"{below(RANDOM_LIMIT)}\n" for _ in range(lines)]).encode("ascii")
        self.transport.write(reply)
        self.sent += len(reply)


class RandomNumberFactory(StreamFactory):
    """Builds L{RandomNumber} protocols; C{rng} may be seeded for tests."""

    protocol = RandomNumber
    service = "random"

    def __init__(self, *args: object, rng: random.Random | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.rng = rng if rng is not None else random.Random()
