"""
argparse types for numbers, sizes, durations and addresses, shared by the
subcommands so that every one words a bad value the same way.

Each is a callable taking the option's text and returning the value, or
raising C{argparse.ArgumentTypeError} with a sentence (argparse prefixes the
option's name and exits 2).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from netecho.address import split_host_port

#: The longest duration any option takes (a day).
MAX_SECONDS = 86400.0


def positive(value: str) -> float:
    """A number more than 0 (seconds, a rate): C{2}, C{0.5}."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be more than 0")
    return number


def whole(value: str, least: int = 0) -> int:
    """A whole number of at least C{least} (decimal digits only)."""
    if not (value.isascii() and value.isdigit()) or int(value) < least:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= {least}")
    return int(value)


def int_in(low: int, high: int | None = None, what: str = "a whole number") -> Callable[[str], int]:
    """A type for a whole number from C{low} to C{high} (inclusive; None: no bound)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if number < low or (high is not None and number > high):
            bound = f"{low}-{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value!r} is out of range ({bound})")
        return number

    return parse


def size(value: str) -> int:
    """Bytes, with an optional K/M suffix (KiB, MiB): C{64}, C{1K}, C{16k}, C{1M}."""
    text = value.strip()
    factor = 1
    if text[-1:] in ("k", "K"):
        factor, text = 1024, text[:-1]
    elif text[-1:] in ("m", "M"):
        factor, text = 1024 * 1024, text[:-1]
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r} is not a size in bytes (e.g. 64, 1K, 16K)")
    number = int(text) * factor
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1 byte")
    return number


def seconds(allow_zero: bool = False, most: float = MAX_SECONDS) -> Callable[[str], float]:
    """A type for a duration in seconds: more than 0 (or >= 0), at most C{most}."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{value!r} must be {'>= 0' if allow_zero else 'more than 0'}")
        if number > most:
            raise argparse.ArgumentTypeError(
                f"{value!r} is more than a day" if most == MAX_SECONDS else f"{value!r} is more than {most:g} s")
        return number

    return parse


def host_port(value: str) -> tuple[str, int]:
    """C{HOST:PORT} or C{[IPv6]:PORT}, as a (host, port) tuple."""
    try:
        return split_host_port(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
