"""
Running the loops: in this process, or spread over C{--processes} worker
processes that connect, start together, send their interval snapshots as
they go and their tallies (fixed-size histograms, not samples) at the end.
The parent meanwhile draws progress and watches the reply rate
(L{Board}).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import signal
import sys
import threading
import time

from netecho.bench.connects import connect_loop
from netecho.bench.datagrams import datagram_loop
from netecho.bench.pb import pb_loop
from netecho.bench.plan import Plan
from netecho.bench.report import Intervals, RateWatch
from netecho.bench.streams import stream_loop
from netecho.bench.tlsstreams import tls_loop
from netecho.bench.tally import Tally
from netecho.errors import UserError

LOOPS = {"tcp": stream_loop, "unix": stream_loop, "udp": datagram_loop, "pb": pb_loop, "connect": connect_loop}


def loop_for(plan: Plan):
    """The load loop a plan runs (tcp with --tls: the TLS loop)."""
    return tls_loop if plan.tls is not None else LOOPS[plan.transport]

#: Time allowed for worker processes to start and connect, on top of --timeout.
SETUP = 30.0


class Board:
    """What the parent does with the loops' news while they run."""

    def __init__(self, plan: Plan, progress=None, intervals: Intervals | None = None) -> None:
        self.plan, self.progress, self.intervals = plan, progress, intervals
        self.watch: RateWatch | None = None

    def started(self, start: float) -> None:
        self.watch = RateWatch(start + self.plan.warmup)

    def totals(self, round_trips: int, errors: int) -> None:
        if self.progress is not None:
            self.progress(round_trips, errors)
        if self.watch is not None:
            self.watch.sample(time.monotonic(), round_trips)

    def interval(self, wire: tuple) -> None:
        if self.intervals is not None:
            self.intervals.add(wire)


class _Local:
    """The channel of a loop run in this process."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self._stop = False

    def ready(self) -> float:
        start = time.monotonic()
        self.board.started(start)
        return start

    def update(self, round_trips: int, errors: int) -> None:
        self.board.totals(round_trips, errors)

    def interval(self, wire: tuple) -> None:
        self.board.interval(wire)

    def stopped(self) -> bool:
        return self._stop

    def stop(self) -> None:
        self._stop = True


class _Child:
    """The channel of a worker process: a pipe to the parent, a shared slot for totals."""

    def __init__(self, pipe, shared, slot: int) -> None:
        self.pipe, self.shared, self.slot = pipe, shared, slot
        self._stop = False

    def ready(self) -> float:
        self.pipe.send(("ready",))
        return self.pipe.recv()[1]

    def update(self, round_trips: int, errors: int) -> None:
        self.shared[2 * self.slot] = round_trips
        self.shared[2 * self.slot + 1] = errors

    def interval(self, wire: tuple) -> None:
        self.pipe.send(("interval", wire))

    def stopped(self) -> bool:
        if not self._stop and self.pipe.poll(0):
            self._stop = self.pipe.recv()[0] == "stop"
        return self._stop

    def stop(self) -> None:
        pass  # the parent decides (Ctrl-C reaches it too)


def _worker(plan: Plan, first: int, pipe, shared, slot: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent tells us to stop
    try:
        tally = loop_for(plan)(plan, first, _Child(pipe, shared, slot))
    except UserError as e:
        pipe.send(("error", str(e)))
    except BaseException as e:  # a bug: report it rather than hang the parent
        pipe.send(("error", f"bench worker: {e.__class__.__name__}: {e}"))
    else:
        pipe.send(("done", tally.to_wire()))
    finally:
        pipe.close()


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first, count) of each of C{parts} shares of C{total} connections."""
    base, extra = divmod(total, parts)
    out, first = [], 0
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return out


def run(plan: Plan, board: Board) -> list[Tally]:
    """Run the plan's loops; their tallies."""
    if plan.processes == 1:
        channel = _Local(board)
        with _stop_on_interrupt(channel):
            return [loop_for(plan)(plan, 0, channel)]
    return _run_processes(plan, board)


@contextlib.contextmanager
def _stop_on_interrupt(channel: _Local):
    """Ctrl-C ends the run early (the report covers the time measured), not with a traceback."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    signal.signal(signal.SIGINT, lambda *_: channel.stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_processes(plan: Plan, board: Board) -> list[Tally]:
    import multiprocessing as mp

    # fork is quick and needs no import path; but never fork a process that
    # has a reactor (its epoll instance would be shared by the children).
    method = "fork" if "twisted.internet.reactor" not in sys.modules else "spawn"
    ctx = mp.get_context(method)
    n = plan.processes
    shared = ctx.RawArray("q", 2 * n)
    workers = []
    try:
        for slot, (first, count) in enumerate(split(plan.connections, n)):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(plan.share(count), first, child, shared, slot), daemon=True)
            proc.start()
            child.close()
            workers.append((proc, parent))
        setup_limit = time.monotonic() + SETUP + plan.timeout
        for proc, pipe in workers:
            message = _receive(pipe, proc, setup_limit)
            if message[0] == "error":
                raise UserError(message[1])
        start = time.monotonic() + 0.05
        for _, pipe in workers:
            pipe.send(("go", start))
        board.started(start)
        return _collect(plan, board, workers, shared, start)
    finally:
        for proc, pipe in workers:
            pipe.close()
            if proc.is_alive():
                proc.terminate()
            proc.join(5)


def _collect(plan: Plan, board: Board, workers, shared, start: float) -> list[Tally]:
    limit = start + plan.warmup + plan.duration + SETUP + plan.timeout
    tallies: dict[int, Tally] = {}
    pipes = {pipe: (i, proc) for i, (proc, pipe) in enumerate(workers)}
    stopping = False
    while len(tallies) < len(workers):
        try:
            ready = multiprocessing.connection.wait([p for p, (i, _) in pipes.items() if i not in tallies], 0.1)
            board.totals(sum(shared[0::2]), sum(shared[1::2]))
            for pipe in ready:
                i, proc = pipes[pipe]
                try:
                    message = pipe.recv()
                except EOFError:
                    raise UserError(f"bench: worker process {proc.pid} died ({proc.exitcode})") from None
                if message[0] == "interval":
                    board.interval(message[1])
                elif message[0] == "done":
                    tallies[i] = Tally.from_wire(message[1])
                else:
                    raise UserError(message[1])
        except KeyboardInterrupt:
            if stopping:
                raise
            stopping = True
            for pipe in pipes:
                try:
                    pipe.send(("stop",))
                except OSError:
                    pass
        if time.monotonic() > limit:
            raise UserError("bench: a worker process did not finish in time")
    return [tallies[i] for i in range(len(workers))]


def _receive(pipe, proc, limit: float):
    while not pipe.poll(0.1):
        if not proc.is_alive() and not pipe.poll(0):
            raise UserError(f"bench: worker process {proc.pid} died ({proc.exitcode})")
        if time.monotonic() > limit:
            raise UserError("bench: worker processes did not get ready in time")
    return pipe.recv()
