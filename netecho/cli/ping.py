"""``netecho ping tcp|udp|unix|tls TARGET``: round-trip probes with ping's output."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from netecho.address import split_host_port
from netecho.cli import tls as tls_options
from netecho.cli.types import positive, whole
from netecho.errors import EXIT_USAGE
from netecho.ping import MAX_STREAM_SIZE, MAX_UDP_SIZE, MIN_INTERVAL, MIN_SIZE, TRANSPORTS, Event, Pinger, Statistics


def _ms(value: float) -> str:
    return f"{value:.3f}"


class Output:
    """ping's lines on C{out}: a header, one line a probe, the summary."""

    def __init__(self, args: argparse.Namespace, out=None) -> None:
        self.args = args
        self.out = out or sys.stdout
        self.lines = not (args.quiet or args.json)

    def write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def header(self, target: str) -> None:
        if self.lines:
            self.write(f"PING {self.args.transport} {target}: {self.args.size} bytes")

    def event(self, pinger: Pinger, event: Event) -> None:
        if not self.lines:
            return
        target = pinger.target
        if event.kind == "timeout":
            self.write(f"seq={event.seq} timeout ({event.reason})")
        elif event.kind == "error":
            self.write(f"seq={event.seq} error: {event.reason}")
        else:
            connect = f" connect={_ms(event.connect_ms)} ms" if event.connect_ms is not None else ""
            time = f" time={_ms(event.rtt_ms)} ms" if event.rtt_ms is not None else ""
            mark = {"reply": "", "late": " (late)", "duplicate": " (DUP!)"}[event.kind]
            self.write(f"{event.size} bytes from {target}: seq={event.seq}{connect}{time}{mark}")

    def summary(self, stats: Statistics) -> None:
        if self.args.json:
            self.write(json.dumps(stats.as_json(connect=self.args.connect)))
            return
        self.write(f"--- {stats.target} ping statistics ---")
        extra = "".join(
            f", {n} {what}" for n, what in ((stats.duplicates, "duplicates"), (stats.late, "late"),
                                            (stats.reordered, "reordered")) if n
        )
        self.write(
            f"{stats.sent} probes sent, {stats.received} replies, {stats.loss_pct:.1f}% loss, "
            f"{stats.errors} errors{extra}, time {stats.elapsed_ms:.0f} ms"
        )
        for name, summary in (("connect", stats.connect() if self.args.connect else None), ("rtt", stats.rtt())):
            if summary:
                values = "/".join(_ms(summary[k]) for k in ("min", "avg", "max", "mdev"))
                self.write(f"{name} min/avg/max/mdev = {values} ms")


def _target(args: argparse.Namespace):
    if args.transport == "unix":
        return args.target
    try:
        return split_host_port(args.target)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def usage_problem(args: argparse.Namespace) -> str | None:
    """A usage error the parser cannot see alone, as a sentence, or None."""
    limit = MAX_UDP_SIZE if args.transport == "udp" else MAX_STREAM_SIZE
    if not MIN_SIZE <= args.size <= limit:
        return f"--size {args.size}: from {MIN_SIZE} to {limit} bytes for {args.transport}"
    if args.interval < MIN_INTERVAL:
        return f"--interval {args.interval:g}: at least {MIN_INTERVAL:g} s"
    if args.connect and args.transport not in ("tcp", "tls"):
        return "--connect is for tcp and tls"
    return tls_options.usage_problem(args, tls=args.transport == "tls")


async def main(reactor, args: argparse.Namespace, out=None) -> int:
    """Run the probes; print as ping does; return the exit status."""
    output = Output(args, out)
    target = _target(args)
    tls = tls_options.ClientTLS.from_args(args, target[0]) if args.transport == "tls" else None
    pinger = Pinger(
        reactor, args.transport, target, count=args.count, interval=args.interval, size=args.size,
        timeout=args.timeout, connect=args.connect, tls=tls,
        report=lambda event: output.event(pinger, event),
    )
    output.header(pinger.target)

    def interrupted(signum, frame) -> None:
        reactor.callFromThread(pinger.stop)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        stats = await pinger.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    output.summary(stats)
    return stats.exit_status()


def run(args: argparse.Namespace) -> int:
    problem = None
    try:
        _target(args)
    except argparse.ArgumentTypeError as e:
        problem = str(e)
    problem = problem or usage_problem(args)
    if problem:
        sys.stderr.write(f"netecho ping: error: {problem}\n")
        return EXIT_USAGE
    from netecho.cli.runner import run as run_on_reactor

    return run_on_reactor(lambda reactor: main(reactor, args))


def register(sub) -> None:
    """Add the C{ping} subcommand."""
    p = sub.add_parser(
        "ping",
        help="time round trips to an echo server (tcp, udp, unix, tls)",
        description="Send numbered probes to an echo server and time each round trip, as ping does. "
        "Exit 0 when every probe was answered, 1 when some were, 100 when none were or the "
        "server could not be reached, 2 for a usage error. Ctrl-C prints the summary.",
    )
    p.add_argument("transport", choices=TRANSPORTS, metavar="TRANSPORT", help="tcp, udp, unix or tls")
    p.add_argument("target", metavar="TARGET", help="HOST:PORT ([IPv6]:PORT), or a socket path for unix")
    p.add_argument("-c", "--count", type=whole, default=5, metavar="N",
                   help="probes to send (default 5; 0: until Ctrl-C)")
    p.add_argument("-i", "--interval", type=positive, default=1.0, metavar="S",
                   help="seconds between probes, at least 0.001; probe k leaves at start + k*S (default 1)")
    p.add_argument("-s", "--size", type=whole, default=64, metavar="BYTES",
                   help=f"bytes in each probe, newline included (default 64; {MIN_SIZE} to "
                   f"{MAX_UDP_SIZE} for udp)")
    p.add_argument("-W", "--timeout", type=positive, default=1.0, metavar="S",
                   help="seconds to wait for each reply, and for each connection (default 1)")
    p.add_argument("--connect", action="store_true",
                   help="tcp, tls: a new connection for each probe, its connect time shown apart")
    p.add_argument("-q", "--quiet", action="store_true", help="print the summary only")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end, nothing else")
    tls_options.add_options(p, switch=False)
    p.set_defaults(run=run)
