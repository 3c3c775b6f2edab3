"""
``netecho lookup TYPE NAME``: DNS lookups printed as ``dig +short`` does,
with dig's options that matter here (EDNS, DO, DNS over TLS, ``--stats``),
and ``--file`` for many names at once. The lookups are L{netecho.dns.api}'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Iterable, Iterator

from twisted.internet import defer, task

from netecho.address import is_ip, split_host_port
from netecho.cli.tls import add_trust_options
from netecho.cli.types import positive, whole
from netecho.dns import api
from netecho.dns.text import stats_lines
from netecho.errors import UserError

#: The pseudo-types: C{ip} (names of an address) and C{host} (addresses of a name).
PSEUDO = {"ip": api.IP, "host": api.HOST}

DEFAULT_CONCURRENCY = 50
#: UDP sockets per server that a C{--file} run shares (each query takes one at random).
BULK_SOCKETS = 8
#: How many results may wait for an earlier, slower one before no new name is started.
WINDOW_PER_LOOKUP = 8
DNS_PORT = 53
DOT_PORT = 853


def record_type(value: str) -> str:
    """argparse type for TYPE: C{ip}, C{host}, a type's name (C{mx}, C{https}) or C{TYPEnnn}."""
    if value.lower() in PSEUDO:
        return value.lower()
    try:
        api.parse_type(value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).replace("lookup: ", "")) from None
    return value.upper()


def server_address(value: str) -> tuple[str, int | None]:
    """
    argparse type for C{--server}: C{IP}, C{IP:PORT}, C{[IPv6]:PORT};
    the port is None when not given (53, or 853 with C{--tls}).
    """
    if is_ip(value):
        return value, None
    if value.startswith("[") and value.endswith("]") and is_ip(value[1:-1]):
        return value[1:-1], None
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


def _bufsize(value: str) -> int:
    size = whole(value, 0)
    if size > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is more than 65535")
    return size


def servers(args: argparse.Namespace) -> list[tuple[str, int]] | None:
    """
    C{--server}s with their ports (53, or 853 with C{--tls}, where none was
    given); without any, None (the system's resolver), or with C{--tls}
    resolv.conf's servers on port 853 (as dig +tls; the hosts file is not
    an encrypted answer).
    """
    if args.server is None:
        if args.tls:
            return [(host, DOT_PORT) for host, _ in api.system_servers()]
        return None
    default = DOT_PORT if args.tls else DNS_PORT
    return [(host, default if port is None else port) for host, port in args.server]


def tls_settings(args: argparse.Namespace, err: IO[str]):
    """With C{--tls}: a callable giving the TLS settings for a server's IP (warns once if insecure)."""
    if not args.tls:
        return None
    from netecho.cli.tls import ClientTLS

    made: dict[str, ClientTLS] = {}

    def settings(host: str) -> ClientTLS:
        if host not in made:
            made[host] = ClientTLS.from_args(args, host, warn=err, sni_option="--tls-name", warned=bool(made))
        return made[host]

    return settings


def _options(args: argparse.Namespace, err: IO[str]) -> dict:
    return {
        "servers": servers(args),
        "tcp": args.tcp,
        "timeout": args.timeout,
        "retries": args.retries,
        "edns": None if args.no_edns else api.DEFAULT_BUFSIZE if args.bufsize is None else args.bufsize,
        "dnssec": args.dnssec,
        "tls": tls_settings(args, err),
    }


def _rrtype(kind: str) -> str:
    return PSEUDO.get(kind, kind)


def print_stats(result: api.Result, err: IO[str]) -> None:
    """dig's closing lines for each reply of C{result} (C{;; Query time: ...})."""
    if not result.exchanges:
        err.write(f";; SERVER: {result.server} (hosts file)\n")
    for e in result.exchanges:
        err.writelines(line + "\n" for line in stats_lines(e.query_time, e.server, e.transport, e.size, e.when))
    err.flush()


async def one(reactor, args: argparse.Namespace, out: IO[str], err: IO[str] | None = None) -> int:
    """Look up C{args.name}; print its answers (or its JSON object) on C{out}, C{--stats} on C{err}."""
    err = sys.stderr if err is None else err
    try:
        result = await api.query(reactor, args.name, _rrtype(args.kind), **_options(args, err))
    except api.NegativeAnswer as e:
        # The server's "nothing" is an answer too: shown (rcode, authority),
        # then the error line and its status.
        if args.json:
            out.write(json.dumps(e.result.as_json(), ensure_ascii=False) + "\n")
            out.flush()
        if args.stats:
            print_stats(e.result, err)
        raise
    if args.json:
        out.write(json.dumps(result.as_json(), ensure_ascii=False) + "\n")
    else:
        out.writelines(line + "\n" for line in result.lines())
    out.flush()
    if args.stats:
        print_stats(result, err)
    return 0


class Progress:
    """
    tqdm's bar on C{err} (only when it is a terminal): count, rate, ETA
    (when the total is known) and failures, redrawn at most ten times a
    second. Result lines for a terminal C{out} wait for the next redraw, so
    that they never tear the bar.
    """

    INTERVAL = 0.1

    def __init__(self, reactor, total: int | None, out: IO[str], err: IO[str]) -> None:
        self.reactor = reactor
        self.out = out
        self.active = err.isatty()
        self.hold = self.active and out.isatty()
        self.pending: list[str] = []
        self.done = 0
        self.failed = 0
        self.last = reactor.seconds()
        self.draws = 0
        self.bar = None
        if self.active:
            from tqdm import tqdm  # only for a terminal (its import costs every command 40 ms)

            class Bar(tqdm):
                monitor_interval = 0  # no monitor thread: the reactor's thread draws

            self.bar = Bar(total=total, file=err, leave=False, unit=" lookups", mininterval=self.INTERVAL,
                           smoothing=0, dynamic_ncols=True)
            self.bar.set_postfix_str("failed=0", refresh=False)
            self.bar.refresh()

    def line(self, text: str) -> None:
        """A result line for C{out}."""
        if self.hold:
            self.pending.append(text)
        else:
            self.out.write(text)

    def step(self, failed: bool) -> None:
        """One lookup done (C{failed} or not)."""
        self.done += 1
        self.failed += failed
        self.tick()

    def tick(self) -> None:
        """Redraw if the last redraw is C{INTERVAL} old (also called by a timer, for stalls)."""
        now = self.reactor.seconds()
        if now - self.last >= self.INTERVAL:
            self.last = now
            self.draw()

    def draw(self) -> None:
        if self.pending:
            self.bar.clear()
            self.out.writelines(self.pending)
            self.pending.clear()
        self.out.flush()
        if self.active:
            # Drawn here only (tqdm's own timing is not asked): at most one
            # redraw per INTERVAL; the rate is the average since the start.
            self.bar.n = self.done
            self.bar.set_postfix_str(f"failed={self.failed}", refresh=False)
            self.bar.refresh()
            self.draws += 1

    def close(self) -> None:
        if self.active:
            self.draw()  # the final count, failures and rate
            self.bar.close()
        if self.pending:
            self.out.writelines(self.pending)
            self.pending.clear()
        self.out.flush()


def read_names(source: Iterable[str]) -> Iterator[str]:
    """The names in a C{--file}, as they are read: one a line; blank lines and C{#} comments skipped."""
    for line in source:
        name = line.strip()
        if name and not name.startswith("#"):
            yield name


def count_names(path: str) -> int | None:
    """How many names a regular file holds (one streaming pass), for the ETA; None if not a file."""
    try:
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return sum(1 for _ in read_names(f))
    except OSError:
        return None


def bulk_line(name: str, outcome, as_json: bool, rrtype: str) -> str:
    """
    One name's result line: C{NAME ANSWER ANSWER...} or C{NAME error:
    MESSAGE}; with C{--json} its object, with C{"error"} added for a
    negative answer, or C{{"query", "type", "error"}} when none came.
    """
    if isinstance(outcome, api.Result):
        if as_json:
            return json.dumps(outcome.as_json(), ensure_ascii=False)
        return " ".join([name, *outcome.lines()])
    if as_json:
        if isinstance(outcome, api.NegativeAnswer):  # the reply (rcode, authority) and the error
            return json.dumps({**outcome.result.as_json(), "error": str(outcome)}, ensure_ascii=False)
        return json.dumps({"query": name, "type": api.type_label(rrtype), "error": str(outcome)},
                          ensure_ascii=False)
    return f"{name} error: {outcome}"


async def many(reactor, args: argparse.Namespace, names: Iterable[str], out: IO[str], err: IO[str],
               total: int | None = None) -> int:
    """
    Look up C{names} (read as they are needed), C{--concurrency} at a time
    over a few shared sockets; print results in input order as they come.
    At most C{WINDOW_PER_LOOKUP} results a lookup wait for a slower earlier
    one, so memory stays flat however many names there are.
    """
    rrtype = _rrtype(args.kind)
    options = _options(args, err)
    upstreams = options["upstreams"] = api.Upstreams(reactor, size=BULK_SOCKETS, keep=True)
    progress = Progress(reactor, total, out, err)
    source = enumerate(names)
    window = args.concurrency * WINDOW_PER_LOOKUP
    outcomes: dict[int, tuple[str, object]] = {}
    state = {"printed": 0, "started": 0, "failed": 0}
    waiting: list[defer.Deferred] = []
    start = reactor.seconds()
    ticker = None
    if progress.active:
        # The bar moves (elapsed time, rate) even while every lookup waits.
        ticker = task.LoopingCall(progress.tick)
        ticker.clock = reactor
        ticker.start(Progress.INTERVAL, now=False)

    def flush() -> None:
        printed = state["printed"]
        while printed in outcomes:
            name, outcome = outcomes.pop(printed)
            progress.line(bulk_line(name, outcome, args.json, rrtype) + "\n")
            printed += 1
        state["printed"] = printed
        while waiting:
            waiting.pop().callback(None)

    async def worker() -> None:
        while True:
            while state["started"] - state["printed"] >= window:
                d: defer.Deferred = defer.Deferred()
                waiting.append(d)
                await d
            try:
                index, name = next(source)
            except StopIteration:
                return
            state["started"] += 1
            try:
                outcome = await api.query(reactor, name, rrtype, **options)
                failed = False
            except UserError as e:
                outcome = e
                failed = True
                state["failed"] += 1
            outcomes[index] = (name, outcome)
            progress.step(failed)
            if index == state["printed"]:
                flush()

    workers = [defer.ensureDeferred(worker()) for _ in range(args.concurrency)]
    try:
        await defer.gatherResults(workers, consumeErrors=True).addErrback(lambda f: f.value.subFailure)
    finally:
        # After a failure (stdout closed) or Ctrl-C: no worker goes on.
        for w in workers:
            w.cancel()
        try:
            if ticker is not None and ticker.running:
                ticker.stop()
            progress.close()
        finally:
            await upstreams.close()
    count, failed = state["started"], state["failed"]
    if args.stats:
        elapsed = max(reactor.seconds() - start, 1e-9)
        err.write(f";; {count} lookups in {elapsed:.3f} s ({count / elapsed:.1f} lookups/s), {failed} failed\n")
        err.flush()
    if failed:
        raise UserError(f"{failed} of {count} lookups failed")
    return 0


def usage_problem(args: argparse.Namespace) -> str | None:
    """A combination of options that makes no sense, as a sentence; or None."""
    if (args.name is None) == (args.file is None):
        return "give either NAME or --file FILE"
    given = [f"--{n.replace('_', '-')}" for n in ("ca", "insecure", "tls_name") if getattr(args, n)]
    if given and not args.tls:
        return f"{' '.join(given)} needs --tls"
    if args.insecure and args.ca:
        return "--insecure and --ca exclude each other"
    if args.no_edns and (args.dnssec or args.bufsize is not None):
        return "--no-edns excludes --bufsize and --dnssec (both need EDNS)"
    return None


def run(args: argparse.Namespace) -> int:
    """Run the lookup(s) of parsed C{args} on the reactor; return the exit status."""
    from netecho.cli.runner import run as run_on_reactor

    problem = usage_problem(args)
    if problem:
        args.lookup_parser.error(problem)
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        # A name that is not UTF-8 (read with surrogateescape) must not end the run.
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.file is None:
        return run_on_reactor(lambda reactor: one(reactor, args, sys.stdout, sys.stderr))
    total = None
    try:
        if args.file == "-":
            sys.stdin.reconfigure(errors="surrogateescape")
            source = sys.stdin
        else:
            source = open(args.file, encoding="utf-8", errors="surrogateescape")
            if sys.stderr.isatty():
                total = count_names(args.file)
    except OSError as e:
        raise UserError(f"open {args.file}: {(e.strerror or str(e)).lower()}") from None
    with source:
        return run_on_reactor(lambda reactor: many(reactor, args, read_names(source), sys.stdout, sys.stderr, total))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommand's arguments (shared by C{netecho lookup} and L{main})."""
    p.add_argument("kind", metavar="TYPE", type=record_type,
                   help="ip (names of an address), host (addresses of a name), any record type by name "
                   "(a, aaaa, mx, txt, caa, https, ds, dnskey, ...), TYPEnnn by number, or any")
    p.add_argument("name", metavar="NAME", nargs="?",
                   help="the name (dig's escapes \\. and \\DDD accepted; an address for ip; "
                   "an address or a reverse name for ptr)")
    p.add_argument("--server", metavar="IP[:PORT]", type=server_address, action="append",
                   help="ask only this server (repeatable; [IPv6]:PORT for IPv6; port 53 if none, 853 with "
                   "--tls). Default: the system's resolver (hosts file, then resolv.conf's servers)")
    p.add_argument("--tcp", action="store_true", help="ask over TCP (UDP otherwise, TCP when truncated)")
    p.add_argument("--timeout", type=positive, default=api.DEFAULT_TIMEOUT, metavar="S",
                   help="seconds to wait for each try (default 2)")
    p.add_argument("--retries", type=whole, default=api.DEFAULT_RETRIES, metavar="N",
                   help="extra tries when a server is silent (default 2)")
    edns = p.add_argument_group("EDNS")
    edns.add_argument("--no-edns", action="store_true", help="send no EDNS0 OPT record")
    edns.add_argument("--bufsize", type=_bufsize, metavar="N",
                      help=f"EDNS0 UDP payload size to advertise (default {api.DEFAULT_BUFSIZE})")
    edns.add_argument("--dnssec", action="store_true", help="set the DO bit and show the answers' RRSIGs")
    tls = p.add_argument_group("DNS over TLS")
    tls.add_argument("--tls", action="store_true", help="ask over TLS (RFC 7858; port 853 unless given)")
    add_trust_options(tls)
    tls.add_argument("--tls-name", metavar="NAME",
                     help="name to send (SNI) and to verify the certificate against (default: the server's IP)")
    p.add_argument("--json", action="store_true",
                   help='print {"query", "type", "server", "rcode", "flags", "answers", "authority", '
                   '"additional", "query_time_ms"}; records as {"name", "type", "ttl", "data"}')
    p.add_argument("--stats", action="store_true",
                   help="print dig's ;; Query time, SERVER, WHEN and MSG SIZE lines on stderr "
                   "(with --file: one summary line)")
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
    p = sub.add_parser("lookup", help="DNS lookups (ip, host, any record type) as dig +short prints them",
                       description=_DESCRIPTION)
    add_arguments(p)
