#!/usr/bin/env python3
"""
``--workers 2`` against ``--workers 1``, interleaved: TCP echo, 1 KiB
messages, 100 connections, closed loop, with ``netecho bench`` as the load
generator (nothing pinned: with --workers the server should use every core,
and on a 2-core machine it shares them with the load generator).

    .venv/bin/python benchmarks/workers.py --duration 5 --repeat 3

Prints, per run: round trips a second, server CPU (parent and workers,
user+system, from /proc) per round trip, and how the connections spread
over the workers (from the metrics page). The CPU is counted over the
whole load run, warm-up included, and divided by the round trips of the
whole run estimated from the measured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
LISTENING = re.compile(r"(--\S+ \S+): listening on \S+:(\d+)$")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def start(workers: int):
    cwd = tempfile.mkdtemp(prefix="netecho-bench-workers-")
    proc = subprocess.Popen(
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "netecho", "--workers", str(workers),
         "--tcp", "tcp:0:interface=127.0.0.1", "--metrics", "0", "--max-per-ip", "100000",
         "--max-connections", "100000"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    ports = {}
    deadline = time.monotonic() + 20
    for line in proc.stdout:
        m = LISTENING.search(line)
        if m:
            ports[m.group(1)] = int(m.group(2))
        if "netecho ready" in line or time.monotonic() > deadline:
            break
    return proc, ports["--tcp tcp:0:interface=127.0.0.1"], ports["--metrics 0"]


def spread(metrics_port: int) -> list[float]:
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [float(v) for v in re.findall(r'netecho_worker_connections_total\{worker="\d+"\} (\S+)', page)]


def run_once(workers: int, duration: float, warmup: float, connections: int) -> dict:
    proc, port, metrics = start(workers)
    try:
        pids = [proc.pid, *children(proc.pid)]
        before = sum(cpu_seconds(p) for p in pids)
        out = subprocess.run(
            [os.path.join(BIN, "netecho"), "bench", "tcp", f"127.0.0.1:{port}", "-c", str(connections),
             "-s", "1K", "-d", str(duration), "-w", str(warmup), "--json"],
            capture_output=True, text=True, timeout=duration + warmup + 60,
        )
        after = sum(cpu_seconds(p) for p in pids)
        report = json.loads(out.stdout)
        rate = report.get("round_trips_per_s") or report.get("rps") or report["round_trips"] / duration
        time.sleep(0.6)  # the workers' last report of their counters
        per_worker = spread(metrics) if workers > 1 else []
    finally:
        proc.terminate()
        proc.wait(20)
    trips = rate * (duration + warmup)
    return {"workers": workers, "rps": rate, "cpu_us_per_rt": (after - before) / trips * 1e6,
            "server_cpu_s": after - before, "spread": per_worker}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--connections", type=int, default=100)
    args = p.parse_args()
    results: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(args.repeat):
        for workers in (1, 2):  # interleaved: each pair sees the same machine
            r = run_once(workers, args.duration, args.warmup, args.connections)
            results[workers].append(r)
            print(json.dumps(r), flush=True)
    rps = {n: statistics.median(r["rps"] for r in rs) for n, rs in results.items()}
    cpu = {n: statistics.median(r["cpu_us_per_rt"] for r in rs) for n, rs in results.items()}
    print(f"median round trips/s: workers 1 {rps[1]:.0f}, workers 2 {rps[2]:.0f} "
          f"(x{rps[2] / rps[1]:.2f}); server CPU per round trip: {cpu[1]:.1f} us vs {cpu[2]:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
