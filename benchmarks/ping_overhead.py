"""
What ``netecho ping``'s probe loop adds to a loopback round trip.

The same echo server (benchmarks/servers/echo.c, compiled at run time; a
Python thread echo when there is no C compiler) is timed two ways, in
alternating rounds:

- reference: a blocking socket, send() then recv() until the whole echo is
  back, timed with time.perf_counter_ns() around the pair: the least a
  Python client can measure;
- netecho: ``netecho ping TRANSPORT TARGET --json`` (the reactor, the probe
  schedule, the byte-for-byte check, the timers), its reported p50/p90.

It prints one table: the p50 and p90 of both and the difference at p50,
which the issue wants at 50 us or less. Nothing here is asserted in the
tests; run it on a quiet machine:

    python benchmarks/ping_overhead.py [--count 2000] [--rounds 3] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def c_server(directory: str):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    exe = os.path.join(directory, "echo")
    subprocess.run([cc, "-O2", "-o", exe, os.path.join(HERE, "servers", "echo.c")], check=True)
    path = os.path.join(directory, "echo.sock")
    proc = subprocess.Popen([exe, "--tcp", "0", "--udp", "0", "--unix", path], stdout=subprocess.PIPE, text=True)
    ready = proc.stdout.readline().split()
    fields = dict(item.split("=", 1) for item in ready[1:])
    return proc, {"tcp": f"127.0.0.1:{fields['tcp']}", "udp": f"127.0.0.1:{fields['udp']}", "unix": fields["unix"]}


def python_server(directory: str):
    """A fallback echo (threads and blocking sockets) when there is no C compiler."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))

    def serve_stream(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept():
        while True:
            conn, _ = tcp.accept()
            threading.Thread(target=serve_stream, args=(conn,), daemon=True).start()

    def datagrams():
        while True:
            data, addr = udp.recvfrom(65536)
            udp.sendto(data, addr)

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=datagrams, daemon=True).start()
    return None, {"tcp": f"127.0.0.1:{tcp.getsockname()[1]}", "udp": f"127.0.0.1:{udp.getsockname()[1]}"}


def reference(transport: str, target: str, count: int, size: int) -> list[float]:
    """Round trips in microseconds over a blocking socket."""
    data = b"x" * (size - 1) + b"\n"
    if transport == "unix":
        s = socket.socket(socket.AF_UNIX)
        s.connect(target)
    else:
        host, port = target.rsplit(":", 1)
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        s = socket.socket(socket.AF_INET, kind)
        s.connect((host, int(port)))
        if transport == "tcp":
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    clock = time.perf_counter_ns
    with s:
        for _ in range(count):
            start = clock()
            s.send(data)
            got = 0
            while got < size:
                got += len(s.recv(65536))
            times.append((clock() - start) / 1000)
    return times


def netecho_ping(transport: str, target: str, count: int, size: int, interval: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "netecho", "ping", transport, target, "-c", str(count), "-i", str(interval),
         "-s", str(size), "--json"],
        capture_output=True, text=True, timeout=count * interval + 60, cwd=tempfile.gettempdir(),
    )
    if out.returncode != 0:
        raise SystemExit(f"netecho ping failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)["rtt_ms"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="round trips per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is shown (default 3)")
    parser.add_argument("--size", type=int, default=64, help="bytes per probe (default 64)")
    parser.add_argument("--interval", type=float, default=0.0005, help="netecho ping -i (default 0.0005)")
    parser.add_argument("--transports", default="tcp,udp,unix")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="netecho-ping-bench-")
    started = c_server(directory) or python_server(directory)
    proc, targets = started
    server = "echo.c" if proc is not None else "python threads"
    rows = []
    try:
        for transport in args.transports.split(","):
            if transport not in targets:
                continue
            best_ref, best_ping = None, None
            for _ in range(args.rounds):
                ref = reference(transport, targets[transport], args.count, args.size)
                ref_p = (statistics.median(ref), sorted(ref)[int(len(ref) * 0.9)])
                got = netecho_ping(transport, targets[transport], args.count, args.size, args.interval)
                ping_p = (got["p50"] * 1000, got["p90"] * 1000)
                best_ref = ref_p if best_ref is None or ref_p[0] < best_ref[0] else best_ref
                best_ping = ping_p if best_ping is None or ping_p[0] < best_ping[0] else best_ping
            rows.append((transport, *best_ref, *best_ping, best_ping[0] - best_ref[0]))
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"server: {server}; {args.count} round trips of {args.size} bytes, best of {args.rounds} rounds (us)")
    print(f"{'transport':<10}{'ref p50':>10}{'ref p90':>10}{'ping p50':>10}{'ping p90':>10}{'added p50':>11}  within 50 us")
    for transport, r50, r90, p50, p90, added in rows:
        print(f"{transport:<10}{r50:>10.1f}{r90:>10.1f}{p50:>10.1f}{p90:>10.1f}{added:>11.1f}  {'yes' if added <= 50 else 'NO'}")
    return 0 if all(row[-1] <= 50 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
