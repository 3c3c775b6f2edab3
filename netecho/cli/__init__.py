"""``netecho SUBCOMMAND``: the command-line clients.

Exit status: 0 success, 2 usage error, 100 any other failure.
"""

from __future__ import annotations

import argparse
import sys

from netecho import __version__


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="netecho",
        description="Clients for netecho's services. The daemon itself runs "
        "as 'twistd -n netecho' (see 'twistd netecho --help').",
    )
    parser.add_argument("--version", action="version", version=f"netecho {__version__}")
    parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return args.run(args)
