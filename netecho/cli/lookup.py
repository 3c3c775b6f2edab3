"""``netecho lookup TYPE NAME``: DNS lookups printed as ``dig +short`` does."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Sequence

from twisted.internet import defer

from netecho import lookup
from netecho.address import is_ip, split_host_port
from netecho.cli.types import positive, whole
from netecho.errors import UserError

#: The subcommand's types: DNS record types, plus C{ip} (names of an
#: address) and C{host} (addresses of a name).
KINDS = ("ip", "host", "ns", "mx", "txt", "cname", "soa", "srv", "ptr", "a", "aaaa")

DEFAULT_CONCURRENCY = 50


def server_address(value: str) -> tuple[str, int]:
    """argparse type for C{--server}: C{IP}, C{IP:PORT}, C{[IPv6]:PORT} (port 53 if none)."""
    if is_ip(value):
        return value, 53
    if value.startswith("[") and value.endswith("]") and is_ip(value[1:-1]):
        return value[1:-1], 53
    if ":" not in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address (IP, IP:PORT or [IPv6]:PORT)")
    try:
        host, port = split_host_port(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not is_ip(host):
        raise argparse.ArgumentTypeError(f"{host!r} is not an IP address (IP, IP:PORT or [IPv6]:PORT)")
    if port == 0:
        raise argparse.ArgumentTypeError(f"{value!r}: port 0 cannot be asked")
    return host, port


def _rrtype(kind: str) -> str:
    return {"ip": lookup.IP, "host": lookup.HOST}.get(kind, kind.upper())


def _options(args: argparse.Namespace) -> dict:
    return {
        "servers": args.server,
        "tcp": args.tcp,
        "timeout": args.timeout,
        "retries": args.retries,
    }


async def one(reactor, args: argparse.Namespace, out: IO[str]) -> int:
    """Look up C{args.name}; print its answers (or its JSON object)."""
    result = await lookup.query(reactor, args.name, _rrtype(args.kind), **_options(args))
    if args.json:
        out.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
    else:
        out.writelines(line + "\n" for line in result.lines())
    out.flush()
    return 0


class Progress:
    """C{[#####-----] 12/50} redrawn on stderr (only when it is a terminal)."""

    WIDTH = 30

    def __init__(self, reactor, total: int, err: IO[str]) -> None:
        self.reactor = reactor
        self.total = total
        self.done = 0
        self.err = err
        self.active = err.isatty()
        self.last = 0.0

    def step(self) -> None:
        self.done += 1
        # At most ten redraws a second: a terminal is slower than the lookups.
        now = self.reactor.seconds()
        if self.done == self.total or now - self.last >= 0.1:
            self.last = now
            self.draw()

    def draw(self) -> None:
        if self.active:
            filled = self.WIDTH * self.done // max(self.total, 1)
            self.err.write(f"\r[{'#' * filled}{'-' * (self.WIDTH - filled)}] {self.done}/{self.total}")
            self.err.flush()

    def clear(self) -> None:
        if self.active:
            self.err.write("\r\x1b[K")
            self.err.flush()


def read_names(source: IO[str]) -> list[str]:
    """The names in a C{--file}: one a line; blank lines and C{#} comments skipped."""
    names = []
    for line in source:
        name = line.strip()
        if name and not name.startswith("#"):
            names.append(name)
    return names


def bulk_line(name: str, outcome, as_json: bool, rrtype: str) -> str:
    """
    One name's result line: C{NAME ANSWER ANSWER...} or C{NAME error:
    MESSAGE}; with C{--json} its object, or C{{"query", "type", "error"}}.
    """
    if isinstance(outcome, lookup.Result):
        if as_json:
            return json.dumps(outcome.as_json(), ensure_ascii=False)
        return " ".join([name, *outcome.lines()])
    if as_json:
        shown = {lookup.HOST: "A,AAAA", lookup.IP: "PTR"}.get(rrtype, rrtype)
        return json.dumps({"query": name, "type": shown, "error": str(outcome)}, ensure_ascii=False)
    return f"{name} error: {outcome}"


async def many(reactor, args: argparse.Namespace, names: Sequence[str], out: IO[str], err: IO[str]) -> int:
    """Look up C{names}, C{--concurrency} at a time; print results in input order."""
    rrtype = _rrtype(args.kind)
    options = _options(args)
    limit = defer.DeferredSemaphore(args.concurrency)
    progress = Progress(reactor, len(names), err)
    outcomes: dict[int, object] = {}
    printed = 0
    failed = 0

    def flush() -> None:
        nonlocal printed
        if printed in outcomes:
            progress.clear()
            while printed in outcomes:
                out.write(bulk_line(names[printed], outcomes.pop(printed), args.json, rrtype) + "\n")
                printed += 1
            out.flush()
            progress.draw()

    async def one_name(index: int, name: str) -> None:
        nonlocal failed
        try:
            outcomes[index] = await lookup.query(reactor, name, rrtype, **options)
        except UserError as e:
            outcomes[index] = e
            failed += 1
        progress.step()
        flush()

    progress.draw()
    await defer.gatherResults(
        [limit.run(lambda i=i, n=n: defer.ensureDeferred(one_name(i, n))) for i, n in enumerate(names)],
        consumeErrors=True,
    ).addErrback(lambda f: f.value.subFailure)
    progress.clear()
    if failed:
        raise UserError(f"{failed} of {len(names)} lookups failed")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the lookup(s) of parsed C{args} on the reactor; return the exit status."""
    from netecho.cli.runner import run as run_on_reactor

    parser = args.lookup_parser
    if (args.name is None) == (args.file is None):
        parser.error("give either NAME or --file FILE")
    if args.file is None:
        return run_on_reactor(lambda reactor: one(reactor, args, sys.stdout))
    try:
        if args.file == "-":
            names = read_names(sys.stdin)
        else:
            with open(args.file, encoding="utf-8", errors="surrogateescape") as f:
                names = read_names(f)
    except OSError as e:
        print(f"open {args.file}: {(e.strerror or str(e)).lower()}", file=sys.stderr)
        return 100
    return run_on_reactor(lambda reactor: many(reactor, args, names, sys.stdout, sys.stderr))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommand's arguments (shared by C{netecho lookup} and L{main})."""
    p.add_argument("kind", metavar="TYPE", choices=KINDS,
                   help="ip (names of an address), host (addresses of a name), "
                   "or a record type: " + ", ".join(KINDS[2:]))
    p.add_argument("name", metavar="NAME", nargs="?",
                   help="the name (an address for ip; an address or a reverse name for ptr)")
    p.add_argument("--server", metavar="IP[:PORT]", type=server_address, action="append",
                   help="ask only this server (repeatable; [IPv6]:PORT for IPv6; port 53 if none). "
                   "Default: the system's resolver (hosts file, then resolv.conf's servers)")
    p.add_argument("--tcp", action="store_true", help="ask over TCP (UDP otherwise, TCP when truncated)")
    p.add_argument("--timeout", type=positive, default=lookup.DEFAULT_TIMEOUT, metavar="S",
                   help="seconds to wait for each try (default 2)")
    p.add_argument("--retries", type=whole, default=lookup.DEFAULT_RETRIES, metavar="N",
                   help="extra tries when a server is silent (default 2)")
    p.add_argument("--json", action="store_true",
                   help='print {"query", "type", "server", "answers": [{"name", "type", "ttl", "data"}]}')
    p.add_argument("--file", metavar="FILE",
                   help="look up every name in FILE (one a line; - for stdin), one result line each")
    p.add_argument("--concurrency", type=lambda v: whole(v, 1), default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"lookups at once with --file (default {DEFAULT_CONCURRENCY})")
    p.set_defaults(run=run, lookup_parser=p)


_DESCRIPTION = (
    "Look a name up through twisted.names and print the answers as 'dig +short' does. "
    "Errors are one line on stderr with exit status 100 ('lookup NAME: no such host', "
    "'lookup NAME: no MX record', 'Not a valid IP address!', '... timed out ...')."
)


def register(sub) -> None:
    """Add the C{lookup} subcommand."""
    p = sub.add_parser("lookup", help="DNS lookups (ip, host, ns, mx, txt, ...) as dig +short prints them",
                       description=_DESCRIPTION)
    add_arguments(p)
