#!/usr/bin/env python3
"""
``--workers 2`` against ``--workers 1``, interleaved: TCP echo, 1 KiB
messages, 100 connections, closed loop, with ``netecho bench`` as the load
generator (nothing pinned: with --workers the server should use every core,
and on a 2-core machine it shares them with the load generator).

    .venv/bin/python benchmarks/workers.py --duration 5 --repeat 3
    .venv/bin/python benchmarks/workers.py --load connect --connections 20

With --load connect, each of the connections connects, sends 64 bytes,
reads the echo and closes, over and over (netecho bench connect): the
rate is connections a second, and the parent's CPU per connection shows
what relaying the workers' log costs it (one line a connection).

Prints, per run: round trips a second, server CPU (parent and workers,
user+system, from /proc) per round trip, and how the connections spread
over the workers (from the metrics page; the load generator opens its
connections in one burst). The CPU is counted over the whole load run,
warm-up included, and divided by the round trips of the whole run
estimated from the measured rate. The last line gives the medians and the
worst spread: the largest distance of a worker's share from an even one.
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
import threading
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
    # Keep reading the log: a full pipe would stop the daemon.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, ports["--tcp tcp:0:interface=127.0.0.1"], ports["--metrics 0"]


def spread(metrics_port: int) -> list[float]:
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [float(v) for v in re.findall(r'netecho_worker_connections_total\{worker="\d+"\} (\S+)', page)]


def run_once(workers: int, duration: float, warmup: float, connections: int, load: str = "tcp") -> dict:
    proc, port, metrics = start(workers)
    try:
        pids = [proc.pid, *children(proc.pid)]
        before = [cpu_seconds(p) for p in pids]
        size = ["-s", "1K"] if load == "tcp" else []
        out = subprocess.run(
            [os.path.join(BIN, "netecho"), "bench", load, f"127.0.0.1:{port}", "-c", str(connections),
             *size, "-d", str(duration), "-w", str(warmup), "--json"],
            capture_output=True, text=True, timeout=duration + warmup + 60,
        )
        used = [cpu_seconds(p) - b for p, b in zip(pids, before)]  # the parent's first
        report = json.loads(out.stdout)
        rate = report.get("round_trips_per_s") or report.get("rps") or report["round_trips"] / duration
        time.sleep(0.6)  # the workers' last report of their counters
        per_worker = spread(metrics) if workers > 1 else []
    finally:
        proc.terminate()
        proc.wait(20)
    trips = rate * (duration + warmup)
    return {"workers": workers, "load": load, "rps": rate, "cpu_us_per_rt": sum(used) / trips * 1e6,
            "parent_cpu_us_per_rt": used[0] / trips * 1e6, "server_cpu_s": sum(used), "spread": per_worker}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--load", choices=("tcp", "connect"), default="tcp",
                   help="tcp: round trips of 1 KiB on open connections; connect: connections a second")
    args = p.parse_args()
    results: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(args.repeat):
        for workers in (1, 2):  # interleaved: each pair sees the same machine
            r = run_once(workers, args.duration, args.warmup, args.connections, args.load)
            results[workers].append(r)
            print(json.dumps(r), flush=True)
    rps = {n: statistics.median(r["rps"] for r in rs) for n, rs in results.items()}
    cpu = {n: statistics.median(r["cpu_us_per_rt"] for r in rs) for n, rs in results.items()}
    parent = statistics.median(r["parent_cpu_us_per_rt"] for r in results[2])
    spreads = [r["spread"] for r in results[2] if r["spread"] and sum(r["spread"])]
    worst = max((max(abs(n * len(s) / sum(s) - 1) for n in s) for s in spreads), default=float("nan"))
    print(f"median round trips/s: workers 1 {rps[1]:.0f}, workers 2 {rps[2]:.0f} "
          f"(x{rps[2] / rps[1]:.2f}); server CPU per round trip: {cpu[1]:.1f} us vs {cpu[2]:.1f} us "
          f"(the parent's {parent:.1f} us); "
          f"connections per worker: {' '.join('/'.join(f'{n:.0f}' for n in s) for s in spreads)} "
          f"(worst {worst:+.0%} from even)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
