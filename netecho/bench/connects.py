"""
``netecho bench connect``: the connection-rate loop. Each of C{--connections}
concurrent loops connects (TCP or Unix), sends one message, reads its whole
echo, compares it, closes, and starts over: connections a second and
connect times, the figures a concurrent server is judged by.

Failures are counted by kind: C{refused}, C{reset}, C{timeout} (no
connection or no whole echo within C{--timeout}), C{closed}, C{short},
C{corrupted}, and others by their system error (C{no local port} when the
client's ephemeral ports run out).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from netecho.bench.plan import TICK, Plan, payload
from netecho.bench.tally import CLOSED, CORRUPTED, REFUSED, RESET, SHORT, TIMEOUT, Tally, Window

_KINDS = {
    errno.ECONNREFUSED: REFUSED,
    errno.ECONNRESET: RESET,
    errno.EPIPE: RESET,
    errno.ETIMEDOUT: TIMEOUT,
    errno.EADDRNOTAVAIL: "no local port",
    errno.ENOENT: REFUSED,
}


def kind_of(err: int) -> str:
    """The failure kind of a socket error number."""
    return _KINDS.get(err) or os.strerror(err).lower()


class _Try:
    __slots__ = ("sock", "fd", "message", "t0", "connected", "got", "unsent")


def connect_loop(plan: Plan, first: int, channel) -> Tally:
    """Run C{plan.connections} connect loops; return what was counted."""
    size, timeout = plan.size, plan.timeout
    is_unix = plan.family == socket.AF_UNIX
    ep = select.epoll()
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    tally = Tally(intervals=plan.interval is not None, connects=True)
    monotonic = time.monotonic
    tries: dict[int, _Try] = {}
    waiting: list[bytes] = []  # messages of loops to start again (Unix backlog full, or just ended)
    window: Window | None = None

    def begin(message: bytes) -> None:
        t = _Try()
        t.message = message
        t.sock = socket.socket(plan.family, socket.SOCK_STREAM)
        t.sock.setblocking(False)
        t.fd = t.sock.fileno()
        t.t0 = monotonic()
        t.connected = False
        t.got = b""
        t.unsent = message
        err = t.sock.connect_ex(plan.sockaddr)
        if err in (0, errno.EINPROGRESS):
            tries[t.fd] = t
            ep.register(t.fd, OUT)
            return
        t.sock.close()
        if is_unix and err == errno.EAGAIN:
            waiting.append(message)  # the listener's backlog is full: try again next tick
            return
        end(None, kind_of(err), message)

    def end(t: _Try | None, kind: str | None, message: bytes | None = None) -> None:
        if t is not None:
            message = t.message
            del tries[t.fd]
            try:
                ep.unregister(t.fd)
            except OSError:
                pass
            t.sock.close()
        if window.counting and monotonic() < window.end:
            if kind is None:
                tally.round_trips += 1
                record(int((monotonic() - t.t0) * 1e9))
            else:
                tally.error(kind)
        if kind is None:
            begin(message)
        else:
            waiting.append(message)

    def writable(t: _Try) -> None:
        if not t.connected:
            err = t.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return end(t, kind_of(err))
            t.connected = True
            if window.counting:
                tally.sent += 1
                tally.connect.record(int((monotonic() - t.t0) * 1e9))
            if not is_unix:
                t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            n = t.sock.send(t.unsent)
        except BlockingIOError:
            return
        except OSError as e:
            return end(t, kind_of(e.errno) if e.errno else RESET)
        t.unsent = t.unsent[n:]
        if not t.unsent:
            ep.modify(t.fd, IN)

    def readable(t: _Try) -> None:
        try:
            data = t.sock.recv(size - len(t.got))
        except BlockingIOError:
            return
        except OSError as e:
            return end(t, SHORT if t.got else (kind_of(e.errno) if e.errno else RESET))
        if not data:
            return end(t, SHORT if t.got else CLOSED)
        got = t.got + data
        if got != t.message[:len(got)]:
            return end(t, CORRUPTED)
        t.got = got
        if len(got) == size:
            end(t, None)

    try:
        messages = [payload(size, first + i) for i in range(plan.connections)]
        start = channel.ready()
        window = Window(plan, start, tally, channel)
        record = tally.current.record
        for message in messages:
            begin(message)
        next_tick = monotonic() + TICK
        poll = ep.poll
        while True:
            try:
                events = poll(TICK)
            except KeyboardInterrupt:
                channel.stop()
                events = []
            for fd, ev in events:
                t = tries.get(fd)
                if t is None:
                    continue
                if ev & OUT:
                    writable(t)
                elif ev & (IN | select.EPOLLHUP | select.EPOLLERR):
                    readable(t)
            now = monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                if window.tick(now):
                    break
                for t in [t for t in tries.values() if now - t.t0 > timeout]:
                    end(t, SHORT if t.got else TIMEOUT)
                again, waiting[:] = list(waiting), []
                for message in again:
                    begin(message)
        window.finish()
    finally:
        for t in tries.values():
            t.sock.close()
        ep.close()
    return tally
