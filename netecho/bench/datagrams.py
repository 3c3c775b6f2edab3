"""
The UDP load loop: one connected socket per flow, driven with epoll.

Closed loop: C{--pipeline} datagrams in flight per flow, the next sent when
one comes back or is given up for C{lost} after C{--timeout}. Open loop
(C{--rate}): datagrams leave on schedule. A reply is matched to its request
by the sequence number in its first bytes; the late echo of a datagram
already counted lost is recognised and ignored. A reply of the wrong size
is C{short} or C{long}; one of the right size whose bytes differ is
C{corrupted}.
"""

from __future__ import annotations

import select
import socket
import time
from collections import OrderedDict

from netecho.bench.plan import STAMP, TICK, Plan, Schedule, lead_time, payload
from netecho.bench.tally import CORRUPTED, LONG, LOST, REFUSED, RESET, SHORT, Tally, Window
from netecho.errors import UserError


class _Flow:
    __slots__ = ("sock", "fd", "tail", "sent", "inflight")


def probe(plan: Plan, tries: int = 3) -> None:
    """One datagram first: a refused or silent target is one line, not a table of errors."""
    with socket.socket(plan.family, socket.SOCK_DGRAM) as s:
        s.connect(plan.sockaddr)
        s.settimeout(plan.timeout)
        for _ in range(tries):
            try:
                s.send(b"netecho bench probe\n")
                s.recv(65536)
                return
            except ConnectionRefusedError:
                raise UserError(f"read udp {plan.target}: connection refused") from None
            except socket.timeout:
                continue
            except OSError as e:
                raise UserError(f"read udp {plan.target}: {e.strerror.lower() if e.strerror else e}") from None
    raise UserError(f"no reply from {plan.target} after {tries} tries")


def datagram_loop(plan: Plan, first: int, channel) -> Tally:
    """Run C{plan.connections} flows (numbered from C{first}); return what was counted."""
    size, timeout, pipeline = plan.size, plan.timeout, plan.pipeline
    open_loop = plan.rate is not None
    k = min(STAMP, size)
    mask = (1 << (8 * k)) - 1
    flows: dict[int, _Flow] = {}
    ep = select.epoll()
    tally = Tally(intervals=plan.interval is not None)
    monotonic = time.monotonic
    buf = bytearray(65536)
    view = memoryview(buf)
    made: list[_Flow] = []
    window: Window | None = None

    def send(f: _Flow, t0: float) -> None:
        seq = f.sent = (f.sent + 1) & mask
        f.inflight[seq] = t0
        if window.counting:
            tally.sent += 1
        try:
            f.sock.send(seq.to_bytes(k, "little") + f.tail)
        except (BlockingIOError, ConnectionRefusedError):
            pass  # counted lost when its time is up (or refused on the read)

    try:
        for i in range(plan.connections):
            f = _Flow()
            f.sock = socket.socket(plan.family, socket.SOCK_DGRAM)
            f.sock.connect(plan.sockaddr)
            f.sock.setblocking(False)
            f.fd = f.sock.fileno()
            f.tail = payload(size, first + i)[k:]
            f.sent = 0
            f.inflight = OrderedDict()
            made.append(f)
        start = channel.ready()
        window = Window(plan, start, tally, channel)
        record = tally.current.record
        schedule = Schedule(start, plan.rate, len(made)) if open_loop else None
        for f in made:
            flows[f.fd] = f
            ep.register(f.fd, select.EPOLLIN)
            if not open_loop:
                for _ in range(pipeline):
                    send(f, monotonic())
        next_tick = monotonic() + TICK
        poll = ep.poll
        while True:
            wait = TICK
            if schedule is not None:
                wait = lead_time(schedule.due - monotonic())
            try:
                events = poll(wait)
            except KeyboardInterrupt:
                channel.stop()
                events = []
            now = monotonic()
            counting = window.counting and now < window.end
            for fd, _ev in events:
                f = flows[fd]
                inflight = f.inflight
                # Drain: several datagrams may wait (late echoes of lost ones).
                for _ in range(64):
                    try:
                        n = f.sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        kind = REFUSED
                    except OSError:
                        kind = RESET
                    else:
                        if n == size and view[k:size] == f.tail:
                            t0 = inflight.pop(int.from_bytes(view[:k], "little"), None)
                            if t0 is None:
                                continue  # the late echo of one counted lost
                            if counting:
                                tally.round_trips += 1
                                record(int((now - t0) * 1e9))
                            if not open_loop:
                                send(f, monotonic())
                            continue
                        kind = SHORT if n < size else LONG if n > size else CORRUPTED
                    # A wrong reply: whose it was cannot be told; the oldest
                    # request in flight is given up for it.
                    if counting:
                        tally.error(kind)
                    if inflight:
                        inflight.popitem(last=False)
                    if not open_loop:
                        send(f, monotonic())
                    if kind in (REFUSED, RESET):
                        break
            if schedule is not None:
                while schedule.due <= now and schedule.due < window.end:
                    i, due = schedule.take()
                    send(made[i], due)
            if now >= next_tick:
                next_tick = now + TICK
                if window.tick(now):
                    break
                for f in made:
                    inflight = f.inflight
                    while inflight and now - next(iter(inflight.values())) > timeout:
                        inflight.popitem(last=False)
                        if window.counting:
                            tally.error(LOST)
                        if not open_loop:
                            send(f, now)
        window.finish()
    finally:
        for f in made:
            f.sock.close()
        ep.close()
    return tally
