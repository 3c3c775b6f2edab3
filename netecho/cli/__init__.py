"""``netecho SUBCOMMAND``: the command-line clients.

Exit status: 0 success, 2 usage error, 100 any other failure.
"""

from __future__ import annotations

import argparse
import os
import sys

from netecho import __version__
from netecho.errors import EXIT_FAILURE, UserError
from netecho.cli import bench, lookup, ping, rpc, setup_cmds, stream, udp


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="netecho",
        allow_abbrev=False,
        description="Clients for netecho's services. The daemon itself runs "
        "as 'twistd -n netecho' (see 'twistd netecho --help').",
    )
    parser.add_argument("--version", action="version", version=f"netecho {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    stream.register(sub)
    udp.register(sub)
    rpc.register(sub)
    lookup.register(sub)
    bench.register(sub)
    setup_cmds.register(sub)
    ping.register(sub)
    # No abbreviations: argparse would take --password for --password-file
    # and print the secret in its error.
    for p in (parser, *sub.choices.values()):
        p.allow_abbrev = False
        if p is not parser:
            p.set_defaults(parser=p)  # its usage line for its errors
    return parser


def _ensure_standard_fds() -> None:
    # A closed stdin/stdout (e.g. "<&-") would let the next socket take fd 0
    # or 1; keep them taken by /dev/null instead.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    _ensure_standard_fds()
    parser = build_parser()
    # parse_known_args: a subcommand may take words that follow its options
    # (netecho rpc HOST:PORT --user u add 1 2); the others refuse extras.
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra:
        take_extra = getattr(args, "take_extra", None)
        if take_extra is None:
            # The subcommand's own usage line, not the top-level one.
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
        take_extra(args, extra, parser)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except UserError as e:  # (the reactor's subcommands report theirs in netecho.cli.runner)
        print(str(e), file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:  # stdout's reader went away (| head): quietly, as the runner does
        from netecho.cli.runner import EXIT_BROKEN_PIPE, silence_stdout

        silence_stdout()
        return EXIT_BROKEN_PIPE
