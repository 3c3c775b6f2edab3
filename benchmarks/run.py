#!/usr/bin/env python3
"""
netecho against stock Twisted, asyncio, uvloop and C echo servers, in one
interleaved run on this machine. See benchmarks/README.md.

    .venv/bin/python benchmarks/run.py                 # the full table (about 27 cells x 5 servers x 3)
    .venv/bin/python benchmarks/run.py --quick --duration 0.3 --repeat 1
    .venv/bin/python benchmarks/run.py --cells 'tcp/10/*,udp/10/1024' --servers netecho,asyncio

The servers run on one core and the load generator (netecho's own bench
loop, imported from this checkout) on another when the machine has two. The
netecho under test is the one installed in the virtualenv of the Python
running this script (its twistd), started from a temporary directory.
"""

from __future__ import annotations

import argparse
import ctypes
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from netecho.bench import measure  # noqa: E402  (the checkout's load generator)
from netecho.errors import UserError  # noqa: E402

SERVERS = ("netecho", "netecho-twisted-reactor", "twisted", "asyncio", "uvloop", "c")
TRANSPORTS = ("tcp", "udp", "unix")
CONNECTIONS = (1, 10, 100)
SIZES = (64, 1024, 16384)
QUICK = ("tcp/10/1024", "udp/10/1024", "unix/10/1024")
#: Big enough never to refuse the load generator, so the checks still run on
#: every datagram and connection (0 would switch them off altogether).
NETECHO_LIMITS = ("--udp-rate", "1000000000", "--udp-global-rate", "1000000000", "--max-per-ip", "100000")
START_TIMEOUT = 20.0
LISTENING = re.compile(r"(--\S+ \S+): listening on (\S+)$")
DNS_NAMES = ("www.netecho.test", "netecho.test", "mail.netecho.test", "v4only.netecho.test", "alias.netecho.test")


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --- CPUs ----------------------------------------------------------------------


def choose_cpus() -> tuple[int | None, int | None]:
    """(server CPU, client CPU): two different ones when there are two, else no pinning."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _child_setup(cpu: int | None):
    """For Popen(preexec_fn=...): pin to C{cpu}, die with this script (PR_SET_PDEATHSIG)."""

    def setup() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


# --- servers -------------------------------------------------------------------


class Server:
    """One echo server process: started, waited for, measured, killed."""

    def __init__(self, name: str, command: list[str], cwd: str, cpu: int | None, netecho: bool = False):
        self.name = name
        self.command = command
        self.cwd = cwd
        self.cpu = cpu
        self.netecho = netecho
        self.addresses: dict[str, object] = {}
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=_child_setup(self.cpu),
        )
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(START_TIMEOUT) or not self.addresses:
            tail = "\n".join(self.lines[-15:])
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT:g}s:\n{tail}")

    def _drain(self) -> None:
        # Read everything (netecho logs every closed connection): a full pipe would stall it.
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if len(self.lines) < 400:
                self.lines.append(line)
            if self.ready.is_set():
                continue
            if self.netecho:
                m = LISTENING.search(line)
                if m:
                    option, where = m.group(1).split(" ", 1)[0][2:], m.group(2)
                    if where.startswith("unix:"):
                        self.addresses[option] = where[5:]
                    else:
                        host, _, port = where.rpartition(":")
                        host = host.strip("[]")
                        # A bare --tcp/--udp PORT listens on every interface
                        # (dual stack): the load goes to loopback.
                        if host in ("::", "0.0.0.0"):
                            host = "127.0.0.1"
                        self.addresses[option] = (host, int(port))
                if "netecho ready" in line:
                    self.ready.set()
            elif line.startswith("READY"):
                for item in line.split()[1:]:
                    key, _, value = item.partition("=")
                    self.addresses[key] = value if key == "unix" else ("127.0.0.1", int(value))
                self.ready.set()
        self.ready.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User plus system CPU time used by the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def twistd_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def has_uvloop() -> bool:
    out = subprocess.run([sys.executable, "-c", "import uvloop"], capture_output=True, timeout=30)
    return out.returncode == 0


def build_c(tmp: str, source: str = "echo.c") -> tuple[str | None, str]:
    """Compile servers/SOURCE into C{tmp}; (path, '') or (None, why not)."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler (cc)"
    exe = os.path.join(tmp, source[:-2] + "-c")
    out = subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "servers", source)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return None, f"cc failed: {out.stderr.strip().splitlines()[-1:] or out.returncode}"
    return exe, ""


def make_servers(names: list[str], tmp: str, cpu: int | None,
                 netecho_args: tuple[str, ...] = ()) -> tuple[list[Server], dict[str, str]]:
    """The servers to run (not started yet), and the ones skipped with why."""
    servers, skipped = [], {}
    for name in names:
        sock = os.path.join(tmp, f"{name}.sock")
        if name in ("netecho", "netecho-twisted-reactor"):
            # netecho runs on its own epoll reactor (netecho/reactor.py) unless
            # told otherwise; the second row is the same daemon on Twisted's.
            reactor = ["--reactor", "epoll"] if name == "netecho-twisted-reactor" else []
            # The default listener forms, as users start it: a bare PORT is
            # dual stack ([::], IPv4 peers too); the load comes from 127.0.0.1.
            command = [*twistd_command(), *reactor, "--nodaemon", "--pidfile=", "netecho",
                       "--tcp", "0", "--udp", "0", "--unix", sock, "--pb", "0",
                       *NETECHO_LIMITS, *netecho_args]
            servers.append(Server(name, command, tmp, cpu, netecho=True))
            continue
        listen = ["--tcp", "0", "--udp", "0", "--unix", sock]
        if name == "twisted":
            command = [sys.executable, os.path.join(HERE, "servers", "twisted_echo.py"), *listen]
        elif name == "asyncio":
            command = [sys.executable, os.path.join(HERE, "servers", "asyncio_echo.py"), *listen]
        elif name == "uvloop":
            if not has_uvloop():
                skipped[name] = "uvloop not installed (pip install uvloop)"
                continue
            command = [sys.executable, os.path.join(HERE, "servers", "asyncio_echo.py"), "--uvloop", *listen]
        elif name == "c":
            exe, why = build_c(tmp)
            if exe is None:
                skipped[name] = why
                continue
            command = [exe, *listen]
        else:
            raise ValueError(name)
        servers.append(Server(name, command, tmp, cpu))
    return servers, skipped


# --- measurements --------------------------------------------------------------


def cells_for(args) -> list[tuple[str, int, int]]:
    every = [(t, c, s) for t in TRANSPORTS for c in CONNECTIONS for s in SIZES]
    patterns = [p.strip() for p in args.cells.split(",") if p.strip()] if args.cells else None
    if patterns is None and args.quick:
        patterns = list(QUICK)
    if patterns is None:
        return every
    return [cell for cell in every if any(fnmatch.fnmatchcase(f"{cell[0]}/{cell[1]}/{cell[2]}", p) for p in patterns)]


def one_cell(server: Server, transport: str, conns: int, size: int, args) -> dict:
    address = server.addresses.get(transport)
    if address is None:
        return {"error": f"{server.name} has no {transport} listener"}
    if not server.alive():
        return {"error": f"{server.name} is not running"}
    cpu_before, wall_before = server.cpu_seconds(), time.monotonic()
    if args.load_exe:
        report = c_load(args.load_exe, transport, address, conns, size, args)
    else:
        try:
            report = measure(transport, address, connections=conns, size=size, duration=args.duration,
                             warmup=args.warmup, timeout=0.5 if transport == "udp" else 5.0)
        except UserError as e:
            return {"error": str(e)}
    if "error" not in report and report["round_trips_per_s"] > 0:
        # The server's CPU time (user + system) per round trip, from its
        # share of a CPU over the whole run: a measure that other load on the
        # machine disturbs less than round trips per second do.
        busy = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        report["server_cpu_us"] = round(busy * 1e6 / report["round_trips_per_s"], 2)
    return report


def c_load(exe: str, transport: str, address, conns: int, size: int, args) -> dict:
    """One measurement by the C load generator (servers/load.c), same report as netecho bench."""
    where = [address] if transport == "unix" else [str(address[0]), str(address[1])]
    command = [exe, transport, *where, "--connections", str(conns), "--size", str(size),
               "--duration", str(args.duration), "--warmup", str(args.warmup),
               "--timeout", "0.5" if transport == "udp" else "5"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60 + args.duration + args.warmup)
    except subprocess.TimeoutExpired:
        return {"error": "the C load generator did not finish in time"}
    if out.returncode != 0 or not out.stdout.strip():
        return {"error": (out.stderr.strip().splitlines() or [f"load exited {out.returncode}"])[-1]}
    return json.loads(out.stdout)


def warm_up(server: Server, transport: str, count: int = 5) -> None:
    """
    A few whole connections (connect, one echo, close) before anything is
    measured: a stream server that has run for a while has seen connections
    come and go. (Until it has, a fresh asyncio server takes every 256 KiB
    read buffer from mmap(); see RESULTS.md.)
    """
    address = server.addresses[transport]
    for _ in range(count):
        if transport == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(address)
        else:
            s = socket.create_connection(address, timeout=5)
        with s:
            s.sendall(b"warm-up\n")
            got = b""
            while len(got) < 8:
                chunk = s.recv(64)
                if not chunk:
                    break
                got += chunk


def idle_memory(server: Server, count: int) -> dict:
    """RSS before and after C{count} idle TCP connections (warmed with a few first)."""
    host, port = server.addresses["tcp"]
    socks: list[socket.socket] = []
    try:
        for _ in range(5):  # warm the accept and close paths once
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"x")
                s.recv(1)
        deadline = time.monotonic() + 10
        base_fds = server.fd_count()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            fds = server.fd_count()
            if fds == base_fds:
                break
            base_fds = fds
        before = server.rss_kib()
        for _ in range(count):
            socks.append(socket.create_connection((host, port), timeout=5))
        deadline = time.monotonic() + 15
        while server.fd_count() < base_fds + count and time.monotonic() < deadline:
            time.sleep(0.05)
        accepted = server.fd_count() - base_fds
        time.sleep(0.3)
        after = server.rss_kib()
    finally:
        for s in socks:
            s.close()
    # Let the server see the closes before anything is measured again.
    deadline = time.monotonic() + 10
    while server.fd_count() > base_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"connections": count, "accepted": accepted, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / count, 2)}


def bench_subprocess(*argv: str, timeout: float) -> dict:
    """C{netecho bench ...} from this checkout in a process of its own (pb needs a reactor)."""
    code = "import sys; from netecho.cli import main; raise SystemExit(main(['bench', *sys.argv[1:]]))"
    out = subprocess.run([sys.executable, "-c", code, *argv, "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))
    if out.stdout.strip():
        return json.loads(out.stdout.strip().splitlines()[-1])
    return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}


def pb_calls(netecho: Server, args) -> list[dict]:
    address = netecho.addresses.get("pb")
    if address is None:
        return []
    target = f"{address[0]}:{address[1]}"
    results = []
    calls = (("echo", 64),) if args.quick else (("echo", 64), ("echo", 1024), ("add", 64))
    for call, size in calls:
        report = bench_subprocess("pb", target, "--connections", "10", "--size", str(size), "--pb-call", call,
                                  "--duration", str(args.duration), "--warmup", str(args.warmup),
                                  timeout=60 + args.duration)
        report.setdefault("call", call)
        report.setdefault("size", size)
        results.append(report)
        log(f"pb {call}({size if call == 'echo' else ''}): {report.get('round_trips_per_s', report.get('error'))}")
    return results


def _free_port_udp_and_tcp() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


def dns_lookups(tmp: str, cpu: int | None, count: int) -> dict:
    """netecho lookup --file against NSD (as tests/integration/test_lookup_dns.py starts it)."""
    nsd = shutil.which("nsd") or ("/usr/sbin/nsd" if os.path.exists("/usr/sbin/nsd") else None)
    if nsd is None:
        return {"skipped": "nsd not installed"}
    zones = os.path.join(ROOT, "tests", "zones")
    zone_files = {"netecho.test": "netecho.test.zone"}
    work = os.path.join(tmp, "nsd")
    os.mkdir(work)
    port = _free_port_udp_and_tcp()
    conf = os.path.join(work, "nsd.conf")
    with open(conf, "w") as f:
        f.write(
            "server:\n    ip-address: 127.0.0.1\n"
            f"    port: {port}\n    do-ip6: no\n"
            '    username: ""\n    chroot: ""\n    database: ""\n'
            f'    zonesdir: "{work}"\n    pidfile: "{work}/nsd.pid"\n'
            f'    xfrdfile: "{work}/xfrd.state"\n    zonelistfile: "{work}/zone.list"\n'
            f'    logfile: "{work}/nsd.log"\n    server-count: 1\n    verbosity: 1\n'
            # Response rate limiting (on by default, 200 a second per source
            # network) would measure NSD's limit, not the client.
            "    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n"
            "remote-control:\n    control-enable: no\n"
            + "".join(f"zone:\n    name: {n}\n    zonefile: {os.path.join(zones, z)}\n" for n, z in zone_files.items())
        )
    with open(os.path.join(work, "stderr.log"), "wb") as errlog:
        proc = subprocess.Popen([nsd, "-d", "-c", conf], stdout=errlog, stderr=errlog,
                                preexec_fn=_child_setup(cpu))
    try:
        names = os.path.join(work, "names.txt")
        with open(names, "w") as f:
            f.writelines(DNS_NAMES[i % len(DNS_NAMES)] + "\n" for i in range(count))
        # Wait until NSD answers (bounded).
        deadline = time.monotonic() + 15
        while True:
            probe = _lookup_run(["a", "www.netecho.test", "--server", f"127.0.0.1:{port}",
                                 "--timeout", "0.5", "--retries", "0"], timeout=30)
            if probe[0] == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"error": f"nsd did not answer: {probe[2][-300:]}"}
            time.sleep(0.2)
        code, elapsed, err = _lookup_run(["a", "--file", names, "--server", f"127.0.0.1:{port}"], timeout=300)
        if code != 0:
            return {"error": f"netecho lookup exited {code}: {err[-300:]}"}
        return {"lookups": count, "seconds": round(elapsed, 3), "lookups_per_s": round(count / elapsed, 1),
                "concurrency": 50}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _lookup_run(argv: list[str], timeout: float) -> tuple[int, float, str]:
    """C{netecho lookup ARGV} from this checkout, timed inside (not the interpreter's start)."""
    code = ("import sys, time\nfrom netecho.cli import main\nt = time.monotonic()\n"
            "rc = main(['lookup'] + sys.argv[1:])\n"
            "sys.stderr.write(f'ELAPSED {time.monotonic() - t}\\n')\nraise SystemExit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))
    m = re.search(r"ELAPSED (\S+)", out.stderr)
    return out.returncode, float(m.group(1)) if m else 0.0, out.stderr


# --- output ----------------------------------------------------------------------

HEADER = ("transport", "conns", "size", "server", "rt/s", "p99_ms", "cpu_us", "errors", "x_twisted", "x_asyncio")


def summarize(samples: dict, cells, names: list[str]) -> list[dict]:
    rows = []
    for transport, conns, size in cells:
        medians = {}
        for name in names:
            runs = samples.get((transport, conns, size, name), [])
            ok = [r for r in runs if "error" not in r]
            if ok:
                medians[name] = {
                    "rt_per_s": statistics.median(r["round_trips_per_s"] for r in ok),
                    "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in ok),
                    "cpu_us": statistics.median(r["server_cpu_us"] for r in ok) if all(
                        "server_cpu_us" in r for r in ok) else None,
                    "errors": sum(r["errors"] for r in ok),
                    "runs": len(ok),
                    "failed_runs": [r["error"] for r in runs if "error" in r],
                }
            elif runs:
                medians[name] = {"rt_per_s": 0.0, "p99_ms": None, "cpu_us": None, "errors": None, "runs": 0,
                                 "failed_runs": [r["error"] for r in runs]}
        for name in names:
            if name not in medians:
                continue
            m = medians[name]

            def ratio(base: str):
                b = medians.get(base, {}).get("rt_per_s")
                return round(m["rt_per_s"] / b, 2) if b else None

            rows.append({"transport": transport, "conns": conns, "size": size, "server": name, **m,
                         "x_twisted": ratio("twisted"), "x_asyncio": ratio("asyncio")})
    return rows


def format_rows(rows: list[dict]) -> str:
    def cell(row, key):
        value = {"rt/s": row["rt_per_s"]}.get(key, row.get(key))
        if value is None:
            return "-"
        if key == "rt/s":
            return f"{value:.0f}"
        if key == "p99_ms":
            return f"{value:.3f}"
        if key == "cpu_us":
            return f"{value:.2f}"
        if key in ("x_twisted", "x_asyncio"):
            return f"{value:.2f}"
        return str(value)

    table = [list(HEADER)] + [[cell(r, k) for k in HEADER] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    left = {"transport", "server"}
    return "\n".join(
        "  ".join(v.ljust(w) if HEADER[i] in left else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))).rstrip()
        for line in table
    )


def format_extras(result: dict) -> str:
    lines = []
    mem = result.get("idle_memory") or {}
    if mem:
        n = next(iter(mem.values())).get("connections", 0)
        w = max(len("server"), *(len(name) for name in mem))
        lines += ["", f"idle memory ({n} idle TCP connections, server RSS)",
                  f"{'server':<{w}}  {'rss_before_kib':>14}  {'rss_after_kib':>13}  {'kib_per_conn':>12}  {'mib_per_1000':>12}"]
        for name, m in mem.items():
            if "error" in m:
                lines.append(f"{name:<{w}}  error: {m['error']}")
                continue
            lines.append(f"{name:<{w}}  {m['rss_before_kib']:>14}  {m['rss_after_kib']:>13}  "
                         f"{m['kib_per_connection']:>12.2f}  {m['kib_per_connection'] * 1000 / 1024:>12.2f}")
    pb = result.get("pb") or []
    if pb:
        lines += ["", "netecho PB calls (netecho bench pb, 10 connections, anonymous login)",
                  f"{'call':<14}  {'calls/s':>9}  {'p99_ms':>8}  {'errors':>6}"]
        for r in pb:
            what = f"echo({r['size']} B)" if r["call"] == "echo" else "add()"
            if "error" in r:
                lines.append(f"{what:<14}  error: {r['error']}")
            else:
                lines.append(f"{what:<14}  {r['round_trips_per_s']:>9.0f}  {r['latency_ms']['p99']:>8.3f}  {r['errors']:>6}")
    dns = result.get("dns")
    if dns is not None:
        lines.append("")
        if "skipped" in dns:
            lines.append(f"DNS lookups: skipped: {dns['skipped']}")
        elif "error" in dns:
            lines.append(f"DNS lookups: error: {dns['error']}")
        else:
            lines.append(f"DNS lookups (netecho lookup a --file, {dns['lookups']} names, concurrency "
                         f"{dns['concurrency']}, against NSD on 127.0.0.1): {dns['lookups_per_s']:.0f} lookups/s")
    skipped = result.get("skipped") or {}
    if skipped:
        lines.append("")
        lines += [f"server {name} skipped: {why}" for name, why in skipped.items()]
    failures = [(r, f) for r in result["rows"] for f in r.get("failed_runs", [])]
    if failures:
        lines.append("")
        lines += [f"failed run: {r['transport']}/{r['conns']}/{r['size']} {r['server']}: {f}" for r, f in failures[:20]]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="netecho against stock Twisted, asyncio, uvloop and C echo servers.")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell and server (default 3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds not counted before each (default: a tenth of --duration, at most 0.5)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of each cell; the median is shown (default 3)")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}; 200 idle connections, PB echo(64 B) only, 300 lookups")
    p.add_argument("--cells", help="comma-separated TRANSPORT/CONNS/SIZE patterns, * allowed (e.g. 'tcp/10/*,udp/*/1024')")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--idle", type=int, default=None, help="idle connections for the memory measurement (default 1000)")
    p.add_argument("--no-extras", action="store_true", help="skip the idle memory, PB and DNS measurements")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--netecho-args", default="", metavar="ARGS",
                   help="more options for both netecho rows, e.g. --netecho-args='--stop-word=' "
                        "(the stop word switched off)")
    p.add_argument("--client", choices=("auto", "c", "python"), default="auto",
                   help="load generator: c (servers/load.c, compiled at run time), python (netecho bench's "
                        "loop), auto (c when a C compiler is present; the default)")
    args = p.parse_args(argv)
    if not 0 < args.duration <= 600:
        p.error("--duration must be in (0, 600]")
    if args.warmup is None:
        args.warmup = min(0.5, args.duration / 10)
    if not 0 <= args.warmup <= 60:
        p.error("--warmup must be in [0, 60]")
    if not 1 <= args.repeat <= 50:
        p.error("--repeat must be 1-50")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        p.error(f"--servers: unknown {unknown or 'empty'}; choose from {','.join(SERVERS)}")
    args.server_names = names
    if args.idle is None:
        args.idle = 200 if args.quick else 1000
    if not 1 <= args.idle <= 10000:
        p.error("--idle must be 1-10000")
    if not cells_for(args):
        p.error("--cells matches no cell")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cells = cells_for(args)
    server_cpu, client_cpu = choose_cpus()
    tmp = tempfile.mkdtemp(prefix="netecho-bench-")
    servers: list[Server] = []
    previous_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    try:
        args.load_exe = None
        if args.client != "python":
            args.load_exe, why = build_c(tmp, "load.c")
            if args.load_exe is None and args.client == "c":
                raise SystemExit(f"run.py: --client c: {why}")
            if args.load_exe is None:
                log(f"load generator: python ({why})")
        result_client = "c (servers/load.c)" if args.load_exe else "python (netecho bench)"
        netecho_args = tuple(shlex.split(args.netecho_args))
        groups = [("memory", [])] if not args.no_extras else []
        groups += [(t, [c for c in cells if c[0] == t]) for t in TRANSPORTS if any(c[0] == t for c in cells)]
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        log(f"servers on CPU {server_cpu}, load generator on CPU {client_cpu}; "
            f"{len(cells)} cells x {len(args.server_names)} servers x {args.repeat}, {args.duration:g} s each")
        result: dict = {"cpus": os.cpu_count(), "server_cpu": server_cpu, "client_cpu": client_cpu,
                        "client": result_client,
                        "duration": args.duration, "warmup": args.warmup, "repeat": args.repeat}
        samples: dict = {}
        names: list[str] = []
        for group, group_cells in groups:
            # Fresh servers for each transport (and for the memory and PB
            # measurements): what one transport did to a process must not
            # change what the next one measures. (It does: asyncio's UDP
            # echo is four times slower in a process that has not yet freed
            # a large buffer; see RESULTS.md.)
            where = os.path.join(tmp, group)
            os.mkdir(where)
            servers, skipped = make_servers(args.server_names, where, server_cpu, netecho_args)
            result["skipped"] = skipped
            for server in servers:
                server.start()
                if group in ("tcp", "unix"):
                    warm_up(server, group)
            names = [server.name for server in servers]
            by_name = {server.name: server for server in servers}
            if group == "memory":
                result["idle_memory"] = {}
                for name in names:
                    try:
                        result["idle_memory"][name] = idle_memory(by_name[name], args.idle)
                    except (OSError, RuntimeError) as e:
                        result["idle_memory"][name] = {"error": str(e)}
                    log(f"idle memory {name}: {result['idle_memory'][name]}")
                result["pb"] = pb_calls(by_name["netecho"], args) if "netecho" in by_name else []
            for rep in range(args.repeat):
                for transport, conns, size in group_cells:
                    # Interleaved, in an order that turns with each repetition.
                    order = servers[rep % len(servers):] + servers[: rep % len(servers)]
                    for server in order:
                        report = one_cell(server, transport, conns, size, args)
                        samples.setdefault((transport, conns, size, server.name), []).append(report)
                        shown = report.get("error") or f"{report['round_trips_per_s']:.0f} rt/s, {report['errors']} errors"
                        log(f"[{rep + 1}/{args.repeat}] {transport}/{conns}/{size} {server.name}: {shown}")
            for server in servers:
                try:
                    server.stop()
                except Exception as e:  # keep stopping the others
                    log(f"stopping {server.name}: {e}")
            servers = []
        result["rows"] = summarize(samples, cells, names)
        if not args.no_extras:
            result["dns"] = dns_lookups(tmp, server_cpu, 300 if args.quick else 3000)
            log(f"dns: {result['dns']}")
        result["seconds"] = round(time.monotonic() - began, 1)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"round trips: median of {args.repeat}, {args.duration:g} s each after {args.warmup:g} s warmup; "
                  f"servers on CPU {server_cpu}, load generator ({result_client}) on CPU {client_cpu}")
            print(format_rows(result["rows"]))
            extras = format_extras(result)
            if extras:
                print(extras)
            print(f"\ntotal {result['seconds']:.0f} s")
        return 0
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {s.name}: {e}")
        signal.signal(signal.SIGTERM, previous_term)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
