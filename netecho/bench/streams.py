"""
The TCP and Unix stream load loop: one thread drives all of a process's
connections with epoll on non-blocking sockets (no Twisted: a few
microseconds of Python per round trip).

Closed loop (the default): each connection keeps C{--pipeline} messages in
flight and sends the next when a whole echo is back. Open loop
(C{--rate}): messages leave on the schedule of L{netecho.bench.plan.Schedule}
whether or not replies came, and latency runs from the scheduled time.

Every reply byte is compared with what was sent as it arrives: the first
wrong byte is a C{corrupted} error at once. A reply that has begun but not
ended by its timeout, a close or the end of the run is C{short}; one that
never began is a C{timeout}. A connection with an error is closed and
opened again.
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque

from netecho.bench.plan import STAMP, TICK, Plan, Schedule, lead_time, payload
from netecho.bench.tally import CLOSED, CONNECT, CORRUPTED, LONG, RESET, SHORT, TIMEOUT, Tally, Window
from netecho.errors import UserError, dial_error

#: The most read at once.
READ_MAX = 256 * 1024
#: At the end of the run, how long a reply already begun may take to end.
GRACE = 1.0


def connect(plan: Plan, timeout: float) -> socket.socket:
    """A connected non-blocking socket; a one-line L{UserError} if it cannot be had."""
    sock = socket.socket(plan.family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(plan.sockaddr)
            break
        except BlockingIOError as e:
            # A Unix socket's full backlog: EAGAIN at once instead of a wait.
            if time.monotonic() < deadline:
                time.sleep(0.001)
                continue
            sock.close()
            raise dial_error(plan.network, plan.target, e) from None
        except OSError as e:
            sock.close()
            if isinstance(e, socket.timeout):
                e = TimeoutError()
            raise dial_error(plan.network, plan.target, e) from None
    if plan.family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class _Conn:
    __slots__ = ("sock", "fd", "tail", "sent", "inflight", "expect", "got", "out", "dead")


def stream_loop(plan: Plan, first: int, channel) -> Tally:
    """Run C{plan.connections} connections (numbered from C{first}); return what was counted."""
    size, timeout, pipeline = plan.size, plan.timeout, plan.pipeline
    open_loop = plan.rate is not None
    k = min(STAMP, size)
    mask = (1 << (8 * k)) - 1
    conns: dict[int, _Conn] = {}
    ep = select.epoll()
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    tally = Tally(intervals=plan.interval is not None)
    monotonic = time.monotonic
    everyone: list[_Conn] = []
    # Set once the loop starts (the closures below read them).
    window: Window | None = None
    sending = True

    def fail(c: _Conn, kind: str) -> None:
        if window.counting:
            tally.error(kind)
        drop(c)

    def drop(c: _Conn) -> None:
        if not c.dead:
            c.dead = True
            del conns[c.fd]
            try:
                ep.unregister(c.fd)
            except OSError:
                pass
            c.sock.close()

    def reopen(c: _Conn) -> None:
        c.sock = connect(plan, min(timeout, 5.0))
        c.fd = c.sock.fileno()
        c.dead = False
        c.inflight.clear()
        c.got = 0
        c.out = None
        conns[c.fd] = c
        ep.register(c.fd, IN)

    def send(c: _Conn, t0: float) -> None:
        """Send c's next message, sent (or due) at C{t0}."""
        seq = c.sent = c.sent + 1
        data = (seq & mask).to_bytes(k, "little") + c.tail
        inflight = c.inflight
        inflight.append(t0)
        if len(inflight) == 1:
            c.expect = data
        if window.counting:
            tally.sent += 1
        if c.out is not None:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            return fail(c, RESET)
        if n < size:
            c.out = bytearray(data[n:])
            ep.modify(c.fd, IN | OUT)

    def write_out(c: _Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            return fail(c, RESET)
        del c.out[:n]
        if not c.out:
            c.out = None
            ep.modify(c.fd, IN)

    def complete(c: _Conn, now: float) -> None:
        """The head message's echo is whole: count it, move on, and (closed loop) send the next."""
        t0 = c.inflight.popleft()
        if window.counting and now < window.end:
            tally.round_trips += 1
            record(int((now - t0) * 1e9))
        c.got = 0
        if c.inflight:
            seq = c.sent - len(c.inflight) + 1
            c.expect = (seq & mask).to_bytes(k, "little") + c.tail
        if sending and not open_loop:
            send(c, monotonic())

    def received(c: _Conn, data: bytes, now: float) -> None:
        """Compare C{data} with what is expected, byte range by byte range."""
        pos, n = 0, len(data)
        while pos < n:
            if not c.inflight:
                return fail(c, LONG)
            got = c.got
            m = size - got
            if n - pos < m:
                m = n - pos
            if data[pos:pos + m] != c.expect[got:got + m]:
                return fail(c, CORRUPTED)
            pos += m
            c.got = got + m
            if c.got == size:
                complete(c, now)
                if c.dead:
                    return

    try:
        for i in range(plan.connections):
            c = _Conn()
            c.tail = payload(size, first + i)[k:]
            c.sent = 0
            c.inflight = deque()
            c.expect = b""
            c.got = 0
            c.out = None
            c.sock = connect(plan, min(timeout, 5.0))
            c.fd = c.sock.fileno()
            c.dead = False
            everyone.append(c)
        start = channel.ready()
        window = Window(plan, start, tally, channel)
        record = tally.current.record
        schedule = Schedule(start, plan.rate, len(everyone)) if open_loop else None
        for c in everyone:
            conns[c.fd] = c
            ep.register(c.fd, IN)
            if not open_loop:
                for _ in range(pipeline):
                    send(c, monotonic())
        next_tick = monotonic() + TICK
        poll = ep.poll
        draining_until = None
        while True:
            wait = TICK
            if schedule is not None and sending:
                wait = lead_time(schedule.due - monotonic())
            try:
                events = poll(wait)
            except KeyboardInterrupt:
                channel.stop()
                events = []
            now = monotonic()
            for fd, ev in events:
                c = conns.get(fd)
                if c is None:
                    continue
                if ev & OUT and c.out is not None:
                    write_out(c)
                    if c.dead:
                        continue
                if ev & ~OUT:
                    inflight = c.inflight
                    want = len(inflight) * size - c.got
                    try:
                        data = c.sock.recv(want if 0 < want < READ_MAX else READ_MAX)
                    except BlockingIOError:
                        continue
                    except OSError:
                        fail(c, SHORT if c.got else RESET)
                        continue
                    n = len(data)
                    if not n:
                        fail(c, SHORT if c.got else CLOSED)
                    elif n == size and not c.got and data == c.expect:
                        # The common case, inlined: one whole echo in one read.
                        t0 = inflight.popleft()
                        if window.counting and now < window.end:
                            tally.round_trips += 1
                            record(int((now - t0) * 1e9))
                        if inflight:
                            seq = c.sent - len(inflight) + 1
                            c.expect = (seq & mask).to_bytes(k, "little") + c.tail
                        if sending and not open_loop:
                            send(c, monotonic())
                    else:
                        received(c, data, now)
            if schedule is not None and sending:
                while schedule.due <= now and schedule.due < window.end:
                    i, due = schedule.take()
                    c = everyone[i]
                    if not c.dead:
                        send(c, due)
            if draining_until is not None:
                if now >= draining_until or not any(c.got for c in conns.values()):
                    break
                continue
            if now >= next_tick:
                next_tick = now + TICK
                if window.tick(now):
                    # Stop sending; a reply already begun may still end.
                    sending = False
                    draining_until = now + min(timeout, GRACE)
                    continue
                for c in everyone:
                    if c.dead:
                        try:
                            reopen(c)
                        except UserError:
                            if window.counting:
                                tally.error(CONNECT)
                            continue
                        if not open_loop:
                            for _ in range(pipeline):
                                send(c, monotonic())
                    elif c.inflight and now - c.inflight[0] > timeout:
                        fail(c, SHORT if c.got else TIMEOUT)
        for c in conns.values():
            if c.got:
                tally.error(SHORT)
        window.finish()
    finally:
        for c in everyone:
            if not c.dead:
                c.sock.close()
        ep.close()
    return tally
