"""
``netecho bench tcp|udp|unix|pb|connect TARGET``: the command line of the
load generator in L{netecho.bench} (options, output, exit status).

``netecho bench tcp --tls`` takes the TLS options every client shares
(netecho/cli/tls.py) and runs the TLS loop (netecho/bench/tlsstreams.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from netecho.address import split_host_port
from netecho.bench import TRANSPORTS, measure
from netecho.bench.report import format_interval, format_table, verdict
from netecho.cli import tls as tls_options
from netecho.cli.types import int_in, positive, seconds, size
from netecho.errors import EXIT_FAILURE, UserError

__all__ = ["measure", "register", "run"]

MAX_UDP = 65507
#: Banana refuses strings over 640 KiB; stay clear of it.
MAX_PB = 600 * 1024
MAX_STREAM = 64 * 1024 * 1024
DEFAULT_SIZE = 1024
DEFAULT_CONNECT_SIZE = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("transport", choices=TRANSPORTS, help="tcp, udp, unix, pb, or connect (connection rate)")
    p.add_argument("target", metavar="TARGET",
                   help="HOST:PORT (tcp, udp, pb), PATH (unix), HOST:PORT or PATH (connect)")
    p.add_argument("--connections", "-c", type=int_in(1, 10000), default=10, metavar="C",
                   help="connections (UDP: flows, each its own socket; connect: concurrent loops) "
                   "at once (default 10)")
    p.add_argument("--size", "-s", type=size, default=None, metavar="S",
                   help="bytes per message, K/M suffixes allowed (default 1K, connect 64; UDP at most 65507)")
    p.add_argument("--duration", "-d", type=seconds(), default=5.0, metavar="D",
                   help="seconds measured (default 5)")
    p.add_argument("--warmup", "-w", type=seconds(allow_zero=True), default=1.0, metavar="W",
                   help="seconds run first and not counted (default 1)")
    p.add_argument("--timeout", type=seconds(), default=None, metavar="S",
                   help="a reply not whole within S seconds is an error (UDP: lost); the connection is "
                   "reopened (default 5; UDP 1)")
    p.add_argument("--processes", "-p", type=int_in(1, 256), default=1, metavar="N",
                   help="spread the connections over N worker processes (default 1)")
    p.add_argument("--rate", "-R", type=positive, default=None, metavar="N",
                   help="open loop: N round trips a second in all, spread over the connections and "
                   "sent on schedule whether or not replies came; latency from the scheduled send "
                   "time (tcp, udp, unix)")
    p.add_argument("--pipeline", "-k", type=int_in(1, 1024), default=1, metavar="K",
                   help="closed loop: K messages in flight per connection (default 1)")
    p.add_argument("--interval", "-i", type=seconds(), default=None, metavar="S",
                   help="a line every S seconds (rt/s, MB/s, p99, errors); in --json an 'intervals' list")
    p.add_argument("--pb-call", choices=("echo", "add"), default="echo",
                   help="pb: call echo(S bytes) (default) or add(seq, 1, False, False), a tiny call")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    tls_options.add_options(p)


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What argparse types cannot see alone: the target's form, sizes and modes per transport."""
    transport = args.transport
    if transport == "connect" and ("/" in args.target or args.target.startswith("unix:")):
        args.address = args.target[5:] if args.target.startswith("unix:") else args.target
    elif transport == "unix":
        if not args.target:
            parser.error("argument TARGET: empty path")
        args.address = args.target
    else:
        try:
            args.address = split_host_port(args.target)
        except ValueError as e:
            hint = " (or a Unix socket PATH)" if transport == "connect" else ""
            parser.error(f"argument TARGET: {e}{hint}")
        if args.address[1] == 0:
            parser.error(f"argument TARGET: port 0 in {args.target!r}")
    if args.size is None:
        args.size = DEFAULT_CONNECT_SIZE if transport == "connect" else DEFAULT_SIZE
    if transport == "udp" and args.size > MAX_UDP:
        parser.error(f"argument --size: UDP datagrams hold at most {MAX_UDP} bytes, not {args.size}")
    if transport == "pb" and args.size > MAX_PB:
        parser.error(f"argument --size: pb sends at most {MAX_PB} bytes per call, not {args.size}")
    if args.size > MAX_STREAM:
        parser.error(f"argument --size: at most {MAX_STREAM} bytes")
    if args.processes > args.connections:
        parser.error(f"argument --processes: {args.processes} processes for {args.connections} connections")
    if args.rate is not None and transport in ("pb", "connect"):
        parser.error(f"argument --rate: not for {transport} (tcp, udp and unix only)")
    if args.rate is not None and args.pipeline > 1:
        parser.error("argument --pipeline: closed loop only (--rate sends on schedule, however many are in flight)")
    if args.pipeline > 1 and transport == "connect":
        parser.error("argument --pipeline: connect sends one message per connection")
    if args.timeout is None:
        args.timeout = 1.0 if transport == "udp" else 5.0
    problem = tls_options.usage_problem(args)
    if problem:
        parser.error(problem)
    if args.tls and transport != "tcp":
        parser.error("argument --tls: tcp only")
    if args.tls and (args.rate is not None or args.pipeline > 1):
        parser.error("argument --tls: closed loop, one message in flight per connection (no --rate, --pipeline)")


def _tls_settings(args: argparse.Namespace) -> dict | None:
    """--tls and its options as ClientTLS's arguments (checked now: a bad file is one line before the run)."""
    if not args.tls:
        return None
    host = args.address[0]
    tls_options.ClientTLS.from_args(args, host)  # (warns for --insecure; raises UserError for bad files)
    return dict(host=host, ca=args.ca, insecure=args.insecure, sni=args.sni, cert=args.cert, key=args.key)


def run(args: argparse.Namespace) -> int:
    """Run parsed C{args}; return the exit status (100 if no round trip completed or any failed)."""
    _check(args, args.bench_parser)

    def print_interval(line: dict) -> None:
        print(format_interval(line), flush=True)

    try:
        tls = _tls_settings(args)
        report = measure(
            args.transport, args.address, connections=args.connections, size=args.size,
            duration=args.duration, warmup=args.warmup, timeout=args.timeout,
            processes=args.processes, pb_call=args.pb_call, progress=os.isatty(2),
            rate=args.rate, pipeline=args.pipeline, interval=args.interval,
            on_interval=None if args.json else print_interval,
            tls=tls,
        )
    except UserError as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # before the loops began (they stop early and report)
        print(f"bench {args.transport} {args.target}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(report) if args.json else format_table(report), flush=True)
    status, line = verdict(report)
    if line:
        print(line, file=sys.stderr)
    return status


DESCRIPTION = (
    "Load an echo server: each connection sends S bytes, checks the echo byte for byte as it "
    "arrives, and sends the next (closed loop; --pipeline K in flight), or sends on a schedule "
    "(open loop, --rate N). Reports round-trips/s, MB/s (message bytes echoed), latency "
    "p50/p90/p99/p99.9/p99.99/max and errors by kind (corrupted at the first wrong byte; short, "
    "timeout, lost, closed, reset: never counted as round trips). 'connect' measures connections "
    "a second (connect, one echo, close). Exit status 0; 100 if the target cannot be reached, no "
    "round trip completed or any failed (the report is printed first, then one line on stderr); "
    "2 for usage errors."
)


def register(sub) -> None:
    """Add the C{bench} subcommand."""
    p = sub.add_parser("bench", help="load generator: round-trips/s and latency of an echo server",
                       description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(run=run, bench_parser=p)
