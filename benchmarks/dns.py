#!/usr/bin/env python3
"""
``netecho lookup --file`` against ``dnsperf``, side by side and interleaved,
asking the same NSD on loopback (started here, as the tests start it, with
response rate limiting off) for the same names.

    .venv/bin/python benchmarks/dns.py --names 50000 --repeat 3

Each round runs dnsperf once through the names (``-n 1``, ``-q`` the same
number of queries in flight as netecho's ``--concurrency``) and then
``python -m netecho lookup a --file NAMES --concurrency N --stats`` from
this checkout; netecho's rate is the one it prints (``;; N lookups in T s``,
measured inside the run, so the interpreter's start is not counted), with
its output written to /dev/null. Prints a table of queries a second per
round, the ratio netecho/dnsperf, and the medians. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Names of tests/zones/netecho.test.zone with A records (some through a CNAME chain).
NAMES = ["www.netecho.test", "mail.netecho.test", "netecho.test", "alias.netecho.test", "ns1.netecho.test",
         "sip.netecho.test", "xn--bcher-kva.netecho.test", "v4only.netecho.test"]
DNSPERF_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
DNSPERF_LOST = re.compile(r"Queries lost:\s+(\d+)")
NETECHO_RATE = re.compile(r";; (\d+) lookups in ([\d.]+) s \(([\d.]+) lookups/s\), (\d+) failed")


def run_dnsperf(dnsperf: str, port: int, path: str, inflight: int) -> tuple[float, int]:
    out = subprocess.run([dnsperf, "-s", "127.0.0.1", "-p", str(port), "-d", path, "-n", "1",
                          "-q", str(inflight), "-t", "5"], capture_output=True, text=True, timeout=600)
    qps = DNSPERF_QPS.search(out.stdout)
    if out.returncode != 0 or qps is None:
        raise SystemExit(f"dnsperf failed ({out.returncode}): {out.stdout[-500:]}{out.stderr[-500:]}")
    return float(qps.group(1)), int(DNSPERF_LOST.search(out.stdout).group(1))


def run_netecho(port: int, path: str, concurrency: int) -> tuple[float, int]:
    with open(os.devnull, "w") as devnull:
        out = subprocess.run(
            [sys.executable, "-m", "netecho", "lookup", "a", "--file", path, "--server", f"127.0.0.1:{port}",
             "--concurrency", str(concurrency), "--stats", "--retries", "0"],
            stdout=devnull, stderr=subprocess.PIPE, text=True, timeout=3600, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    m = NETECHO_RATE.search(out.stderr)
    if m is None:
        raise SystemExit(f"netecho lookup failed ({out.returncode}): {out.stderr[-500:]}")
    return float(m.group(3)), int(m.group(4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--names", type=int, default=50000, help="queries per run (default 50000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, each running both (default 3)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="queries in flight: netecho's --concurrency, dnsperf's -q (default 50)")
    args = parser.parse_args(argv)

    dnsperf = shutil.which("dnsperf")
    if dnsperf is None or shutil.which("nsd") is None and not os.path.exists("/usr/sbin/nsd"):
        print("needs dnsperf and nsd: apt-get install dnsperf nsd (scripts/install-peers)", file=sys.stderr)
        return 2
    from tests.integration.test_lookup_dns import NSD

    work = tempfile.mkdtemp(prefix="netecho-bench-dns-")
    names_path = os.path.join(work, "names.txt")
    queries_path = os.path.join(work, "queries.txt")
    with open(names_path, "w") as names, open(queries_path, "w") as queries:
        for i in range(args.names):
            name = NAMES[i % len(NAMES)]
            names.write(name + "\n")
            queries.write(name + " A\n")
    # Response rate limiting (on by default, 200 a second per source network)
    # would measure NSD's limit, not the clients.
    nsd = NSD(server_options="    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n")
    rows = []
    try:
        print(f"{args.names} A queries a run, {args.concurrency} in flight, NSD on 127.0.0.1:{nsd.port}")
        print(f"{'round':>5}  {'dnsperf q/s':>12}  {'netecho q/s':>12}  {'ratio':>6}  lost/failed")
        for round_ in range(1, args.repeat + 1):
            perf, lost = run_dnsperf(dnsperf, nsd.port, queries_path, args.concurrency)
            ours, failed = run_netecho(nsd.port, names_path, args.concurrency)
            rows.append((perf, ours))
            print(f"{round_:>5}  {perf:>12,.0f}  {ours:>12,.0f}  {ours / perf:>6.3f}  {lost}/{failed}", flush=True)
    finally:
        nsd.stop()
        shutil.rmtree(work, ignore_errors=True)
    perf = statistics.median(r[0] for r in rows)
    ours = statistics.median(r[1] for r in rows)
    print(f"{'median':>5}  {perf:>12,.0f}  {ours:>12,.0f}  {ours / perf:>6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
