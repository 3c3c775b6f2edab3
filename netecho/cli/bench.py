"""
``netecho bench tcp|udp|unix|pb TARGET``: a load generator for echo servers.

Each of C{--connections} connections sends C{--size} bytes, waits for the
whole echo, checks it byte for byte, and repeats, for C{--duration} seconds
after C{--warmup} seconds that are not counted. A short, long or corrupted
echo, a connection closed by the server and (UDP) a datagram not answered
within C{--timeout} are errors, never round trips.

The hot loop is not Twisted: one thread per process drives all its sockets
with epoll (non-blocking sockets, one message in flight per connection), which
costs a few microseconds per round trip. C{--processes N} spreads the
connections over N worker processes and merges their latency samples. Only
C{pb} uses Twisted (Perspective Broker is Twisted's protocol), one reactor
per process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import socket
import sys
import time
from array import array

from netecho.address import join_host_port, split_host_port
from netecho.errors import EXIT_FAILURE, UserError, dial_error

TRANSPORTS = ("tcp", "udp", "unix", "pb")
MAX_UDP = 65507
#: Banana refuses strings over 640 KiB; stay clear of it.
MAX_PB = 600 * 1024
MAX_STREAM = 64 * 1024 * 1024
#: How often the loop looks at the clock for deadlines, timeouts, progress.
TICK = 0.05


# --- options ---------------------------------------------------------------


def _int_in(low: int, high: int | None = None, what: str = "a whole number"):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if number < low or (high is not None and number > high):
            bound = f"{low}-{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value!r} is out of range ({bound})")
        return number

    return parse


def _size(value: str) -> int:
    """Bytes, with an optional K/M suffix (KiB, MiB): C{64}, C{1K}, C{16k}."""
    text = value.strip()
    factor = 1
    if text[-1:] in ("k", "K"):
        factor, text = 1024, text[:-1]
    elif text[-1:] in ("m", "M"):
        factor, text = 1024 * 1024, text[:-1]
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a size in bytes (e.g. 64, 1K, 16K)")
    number = int(text) * factor
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1 byte")
    return number


def _seconds(allow_zero: bool):
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{value!r} must be {'>= 0' if allow_zero else 'more than 0'}")
        if number > 86400:
            raise argparse.ArgumentTypeError(f"{value!r} is more than a day")
        return number

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("transport", choices=TRANSPORTS, help="tcp, udp, unix or pb")
    p.add_argument("target", metavar="TARGET", help="HOST:PORT (tcp, udp, pb) or PATH (unix)")
    p.add_argument("--connections", "-c", type=_int_in(1, 10000), default=10, metavar="C",
                   help="connections (UDP: flows, each its own socket) at once (default 10)")
    p.add_argument("--size", "-s", type=_size, default=1024, metavar="S",
                   help="bytes per message, K/M suffixes allowed (default 1K; UDP at most 65507)")
    p.add_argument("--duration", "-d", type=_seconds(False), default=5.0, metavar="D",
                   help="seconds measured (default 5)")
    p.add_argument("--warmup", "-w", type=_seconds(True), default=1.0, metavar="W",
                   help="seconds run first and not counted (default 1)")
    p.add_argument("--timeout", type=_seconds(False), default=None, metavar="S",
                   help="a round trip not done within S seconds is an error; the connection is "
                   "reopened (UDP: the datagram counts as lost and the next is sent) "
                   "(default 5; UDP 1)")
    p.add_argument("--processes", "-p", type=_int_in(1, 256), default=1, metavar="N",
                   help="spread the connections over N worker processes (default 1)")
    p.add_argument("--pb-call", choices=("echo", "add"), default="echo",
                   help="pb: call echo(S bytes) (default) or add(1, 2, False, False), a tiny call")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What argparse types cannot see alone: the target's form, sizes per transport."""
    if args.transport == "unix":
        if not args.target:
            parser.error("argument TARGET: empty path")
        args.address = args.target
    else:
        try:
            args.address = split_host_port(args.target)
        except ValueError as e:
            parser.error(f"argument TARGET: {e}")
        if args.address[1] == 0:
            parser.error(f"argument TARGET: port 0 in {args.target!r}")
    if args.transport == "udp" and args.size > MAX_UDP:
        parser.error(f"argument --size: UDP datagrams hold at most {MAX_UDP} bytes, not {args.size}")
    if args.transport == "pb" and args.size > MAX_PB:
        parser.error(f"argument --size: pb sends at most {MAX_PB} bytes per call, not {args.size}")
    if args.size > MAX_STREAM:
        parser.error(f"argument --size: at most {MAX_STREAM} bytes")
    if args.processes > args.connections:
        parser.error(f"argument --processes: {args.processes} processes for {args.connections} connections")
    if args.timeout is None:
        args.timeout = 1.0 if args.transport == "udp" else 5.0


# --- the socket loops --------------------------------------------------------


class _Progress:
    """Where a loop reports its running totals (at most every L{TICK})."""

    def update(self, round_trips: int, errors: int) -> None:  # pragma: no cover - interface
        pass


def _payload(size: int, seed: int) -> bytes:
    # Random-looking, different per connection: a server mixing up
    # connections or bytes is caught by the comparison.
    import random

    return random.Random(seed).randbytes(size)


def _stamp(body: bytes, seq: int) -> bytes:
    """C{body} with a sequence number in its first bytes (so stale echoes differ)."""
    n = min(8, len(body))
    return (seq & ((1 << (8 * n)) - 1)).to_bytes(n, "little") + body[n:]


class _Result:
    def __init__(self) -> None:
        self.round_trips = 0
        self.errors: dict[str, int] = {}
        self.latencies = array("d")
        self.elapsed = 0.0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def as_tuple(self):
        return self.round_trips, dict(self.errors), self.latencies.tobytes(), self.elapsed


def _resolve(transport: str, address) -> tuple[int, object]:
    """(family, sockaddr) to connect to; one line and exit 100 if none."""
    if transport == "unix":
        return socket.AF_UNIX, address
    host, port = address
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(host, port, 0, kind)
    except socket.gaierror:
        raise UserError(f"dial {transport}: lookup {host}: no such host") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _target_text(transport: str, address) -> str:
    return address if transport == "unix" else join_host_port(*address)


def _stream_connect(family: int, sockaddr, transport: str, target: str, timeout: float) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.connect(sockaddr)
            break
        except BlockingIOError as e:
            # A Unix socket's full backlog: EAGAIN at once instead of a wait.
            if time.monotonic() < deadline:
                time.sleep(0.001)
                continue
            sock.close()
            raise dial_error(transport, target, e) from None
        except OSError as e:
            sock.close()
            if isinstance(e, socket.timeout):
                e = TimeoutError()
            raise dial_error(transport, target, e) from None
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class _Stream:
    __slots__ = ("sock", "fd", "body", "tail", "seq", "expect", "buf", "view", "got", "t0", "unsent", "dead")


def _stream_loop(spec: dict, first: int, count: int, channel) -> _Result:
    """TCP or Unix: C{count} connections, one message in flight on each."""
    transport, size, timeout = spec["transport"], spec["size"], spec["timeout"]
    family, sockaddr = spec["family"], spec["sockaddr"]
    target = spec["target"]
    conns: dict[int, _Stream] = {}
    ep = select.epoll()
    IN, OUT = select.EPOLLIN, select.EPOLLOUT
    result = _Result()
    monotonic = time.monotonic

    def open_conn(c: _Stream) -> None:
        c.sock = _stream_connect(family, sockaddr, transport, target, min(timeout, 5.0))
        c.fd = c.sock.fileno()
        c.dead = False
        c.unsent = None
        conns[c.fd] = c
        ep.register(c.fd, IN)
        send(c, monotonic())

    def send(c: _Stream, now: float) -> None:
        c.seq += 1
        c.expect = _stamp(c.body, c.seq)
        c.got = 0
        c.t0 = now
        try:
            n = c.sock.send(c.expect)
        except BlockingIOError:
            n = 0
        except OSError:
            return fail(c, "reset")
        if n < size:
            c.unsent = memoryview(c.expect)[n:]
            ep.modify(c.fd, IN | OUT)

    def fail(c: _Stream, kind: str) -> None:
        if counting:
            result.error(kind)
        drop(c)

    def drop(c: _Stream) -> None:
        if not c.dead:
            c.dead = True
            del conns[c.fd]
            try:
                ep.unregister(c.fd)
            except OSError:
                pass
            c.sock.close()

    k = min(8, size)
    mask = (1 << (8 * k)) - 1
    pending: list[_Stream] = []
    try:
        for i in range(count):
            c = _Stream()
            c.body = _payload(size, first + i)
            c.tail = c.body[k:]
            c.buf = bytearray(size)
            c.view = memoryview(c.buf)
            c.seq = 0
            c.unsent = None
            c.sock = _stream_connect(family, sockaddr, transport, target, min(timeout, 5.0))
            c.fd = c.sock.fileno()
            c.dead = False
            pending.append(c)
        start = channel.ready()
        measure_from = start + spec["warmup"]
        end = measure_from + spec["duration"]
        counting = spec["warmup"] == 0
        for c in pending:
            conns[c.fd] = c
            ep.register(c.fd, IN)
            send(c, monotonic())
        everyone = list(pending)
        next_tick = monotonic() + TICK
        latencies = result.latencies
        record = latencies.append
        poll = ep.poll
        while True:
            events = poll(TICK)
            now = monotonic()
            for fd, ev in events:
                c = conns.get(fd)
                if c is None:
                    continue
                if ev & OUT and c.unsent is not None:
                    try:
                        n = c.sock.send(c.unsent)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        fail(c, "reset")
                        continue
                    if n == len(c.unsent):
                        c.unsent = None
                        ep.modify(fd, IN)
                    else:
                        c.unsent = c.unsent[n:]
                if ev & IN or (ev & ~OUT):
                    got = c.got
                    try:
                        n = c.sock.recv_into(c.view[got:] if got else c.view)
                    except BlockingIOError:
                        continue
                    except OSError:
                        fail(c, "reset")
                        continue
                    if n == 0:
                        fail(c, "closed")
                        continue
                    got += n
                    if got < size:
                        c.got = got
                        continue
                    if c.buf != c.expect:
                        fail(c, "corrupt")
                        continue
                    if counting:
                        result.round_trips += 1
                        record(now - c.t0)
                    # send(c, ...), inlined: this is the hot path.
                    seq = c.seq = c.seq + 1
                    expect = c.expect = (seq & mask).to_bytes(k, "little") + c.tail
                    c.got = 0
                    c.t0 = monotonic()
                    try:
                        n = c.sock.send(expect)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        fail(c, "reset")
                        continue
                    if n < size:
                        c.unsent = memoryview(expect)[n:]
                        ep.modify(fd, IN | OUT)
            if now >= next_tick:
                next_tick = now + TICK
                if not counting and now >= measure_from:
                    counting = True
                if now >= end:
                    result.elapsed = end - measure_from
                    break
                for c in everyone:
                    if c.dead:
                        # Reopen what the server closed (or we closed on an error).
                        try:
                            open_conn(c)
                        except UserError:
                            if counting:
                                result.error("connect")
                    elif now - c.t0 > timeout:
                        fail(c, "timeout")
                channel.update(result.round_trips, sum(result.errors.values()))
    finally:
        for c in pending:
            if not c.dead:
                c.sock.close()
        ep.close()
    return result


class _Flow:
    __slots__ = ("sock", "fd", "body", "tail", "seq", "expect", "t0")


def _udp_loop(spec: dict, first: int, count: int, channel) -> _Result:
    """UDP: C{count} connected sockets, one datagram in flight on each."""
    size, timeout = spec["size"], spec["timeout"]
    family, sockaddr = spec["family"], spec["sockaddr"]
    flows: dict[int, _Flow] = {}
    ep = select.epoll()
    result = _Result()
    monotonic = time.monotonic
    buf = bytearray(65536)
    view = memoryview(buf)
    counting = False

    def send(f: _Flow, now: float) -> None:
        seq = f.seq = f.seq + 1
        f.expect = (seq & mask).to_bytes(k, "little") + f.tail
        f.t0 = now
        try:
            f.sock.send(f.expect)
        except (BlockingIOError, ConnectionRefusedError):
            # Counted when its time is up (or refused again on the read).
            pass

    k = min(8, size)
    mask = (1 << (8 * k)) - 1
    made: list[_Flow] = []
    try:
        for i in range(count):
            f = _Flow()
            f.sock = socket.socket(family, socket.SOCK_DGRAM)
            f.sock.connect(sockaddr)
            f.sock.setblocking(False)
            f.fd = f.sock.fileno()
            f.body = _payload(size, first + i)
            f.tail = f.body[k:]
            f.seq = 0
            made.append(f)
        start = channel.ready()
        measure_from = start + spec["warmup"]
        end = measure_from + spec["duration"]
        counting = spec["warmup"] == 0
        for f in made:
            flows[f.fd] = f
            ep.register(f.fd, select.EPOLLIN)
            send(f, monotonic())
        next_tick = monotonic() + TICK
        record = result.latencies.append
        poll = ep.poll
        while True:
            events = poll(TICK)
            now = monotonic()
            for fd, _ev in events:
                f = flows[fd]
                # Drain: several datagrams may wait (late echoes of lost ones).
                for _ in range(64):
                    try:
                        n = f.sock.recv_into(buf)
                    except BlockingIOError:
                        break
                    except ConnectionRefusedError:
                        if counting:
                            result.error("refused")
                        send(f, monotonic())
                        break
                    except OSError:
                        if counting:
                            result.error("recv")
                        break
                    if n == size and view[:size] == f.expect:
                        if counting:
                            result.round_trips += 1
                            record(now - f.t0)
                        send(f, monotonic())
                        continue
                    if n == size and view[k:size] == f.tail and view[:k] != f.expect[:k]:
                        # The late echo of a datagram already counted lost.
                        continue
                    if counting:
                        result.error("short" if n < size else "long" if n > size else "corrupt")
                    send(f, monotonic())
            if now >= next_tick:
                next_tick = now + TICK
                if not counting and now >= measure_from:
                    counting = True
                if now >= end:
                    result.elapsed = end - measure_from
                    break
                for f in made:
                    if now - f.t0 > timeout:
                        if counting:
                            result.error("lost")
                        send(f, now)
                channel.update(result.round_trips, sum(result.errors.values()))
    finally:
        for f in made:
            f.sock.close()
        ep.close()
    return result


def _pb_loop(spec: dict, first: int, count: int, channel) -> _Result:
    """Perspective Broker: C{count} anonymous logins calling in a loop, on a reactor."""
    from twisted.cred import credentials
    from twisted.internet import defer, reactor
    from twisted.spread import pb

    size, timeout, target = spec["size"], spec["timeout"], spec["target"]
    host, port = spec["sockaddr"][:2]
    result = _Result()
    outcome: list = []
    state = {"counting": False}
    monotonic = time.monotonic

    async def connect(i: int):
        factory = pb.PBClientFactory()
        reactor.connectTCP(host, port, factory, timeout=min(timeout, 5.0))
        login = factory.login(credentials.Anonymous())
        login.addTimeout(timeout, reactor)
        try:
            avatar = await login
        except defer.TimeoutError:
            factory.disconnect()
            raise UserError(f"dial tcp {target}: no login reply within {timeout:g}s") from None
        except pb.RemoteError as e:
            factory.disconnect()
            raise UserError(f"rpc {target}: login refused: {e}") from None
        except Exception as e:
            factory.disconnect()
            raise dial_error("tcp", target, e) from None
        return factory, avatar

    async def one(avatar, body: bytes, end: float) -> None:
        seq = 0
        record = result.latencies.append
        while True:
            now = monotonic()
            if now >= end:
                return
            seq += 1
            if spec["pb_call"] == "add":
                expect = seq + 1
                d = avatar.callRemote("add", seq, 1, False, False)
            else:
                expect = _stamp(body, seq)
                d = avatar.callRemote("echo", expect)
            d.addTimeout(timeout, reactor)
            try:
                reply = await d
            except defer.TimeoutError:
                if state["counting"]:
                    result.error("timeout")
                continue
            except pb.PBConnectionLost:
                if state["counting"]:
                    result.error("closed")
                return
            except Exception:
                if state["counting"]:
                    result.error("remote error")
                continue
            if reply != expect:
                if state["counting"]:
                    result.error("corrupt")
                continue
            if state["counting"]:
                result.round_trips += 1
                record(monotonic() - now)

    async def main():
        made = []
        try:
            for i in range(count):
                made.append(await connect(first + i))
            start = channel.ready()
            measure_from = start + spec["warmup"]
            end = measure_from + spec["duration"]
            state["counting"] = spec["warmup"] == 0

            def tick():
                now = monotonic()
                if now >= measure_from:
                    state["counting"] = True
                channel.update(result.round_trips, sum(result.errors.values()))
                if now < end:
                    reactor.callLater(TICK, tick)

            tick()
            loops = [defer.ensureDeferred(one(avatar, _payload(size, first + i), end))
                     for i, (_, avatar) in enumerate(made)]
            await defer.gatherResults(loops, consumeErrors=True)
            result.elapsed = end - measure_from
        finally:
            for factory, _ in made:
                factory.disconnect()
        return result

    def start():
        d = defer.ensureDeferred(main())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.callLater(0, reactor.stop))

    reactor.callWhenRunning(start)
    reactor.run(installSignalHandlers=False)
    got = outcome[0] if outcome else UserError(f"bench pb {target}: the reactor stopped early")
    from twisted.python.failure import Failure

    if isinstance(got, Failure):
        got.raiseException()
    if isinstance(got, Exception):
        raise got
    return got


LOOPS = {"tcp": _stream_loop, "unix": _stream_loop, "udp": _udp_loop, "pb": _pb_loop}


# --- processes and progress --------------------------------------------------


class _Local:
    """The channel of a loop run in this process: start now, draw progress here."""

    def __init__(self, draw) -> None:
        self.draw = draw

    def ready(self) -> float:
        return time.monotonic()

    def update(self, round_trips: int, errors: int) -> None:
        if self.draw is not None:
            self.draw(round_trips, errors)


class _Child:
    """The channel of a worker process: a pipe to the parent, a shared slot for totals."""

    def __init__(self, pipe, shared, slot: int) -> None:
        self.pipe, self.shared, self.slot = pipe, shared, slot

    def ready(self) -> float:
        self.pipe.send(("ready",))
        message = self.pipe.recv()
        return message[1]

    def update(self, round_trips: int, errors: int) -> None:
        self.shared[2 * self.slot] = round_trips
        self.shared[2 * self.slot + 1] = errors


def _worker(spec: dict, first: int, count: int, pipe, shared, slot: int) -> None:
    try:
        result = LOOPS[spec["transport"]](spec, first, count, _Child(pipe, shared, slot))
    except UserError as e:
        pipe.send(("error", str(e)))
    except BaseException as e:  # a bug: report it rather than hang the parent
        pipe.send(("error", f"bench worker: {e.__class__.__name__}: {e}"))
    else:
        pipe.send(("done", result.as_tuple()))
    finally:
        pipe.close()


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(total, parts)
    out, first = [], 0
    for i in range(parts):
        n = base + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return out


def _run_processes(spec: dict, draw) -> list[_Result]:
    import multiprocessing as mp

    # fork is quick and needs no import path; but never fork a process that
    # has a reactor (its epoll instance would be shared by the children).
    method = "fork" if "twisted.internet.reactor" not in sys.modules else "spawn"
    ctx = mp.get_context(method)
    n = spec["processes"]
    shared = ctx.RawArray("q", 2 * n)
    workers = []
    try:
        for slot, (first, count) in enumerate(_split(spec["connections"], n)):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(spec, first, count, child, shared, slot), daemon=True)
            proc.start()
            child.close()
            workers.append((proc, parent))
        setup_limit = time.monotonic() + 30 + spec["timeout"]
        for proc, pipe in workers:
            message = _receive(pipe, proc, setup_limit)
            if message[0] == "error":
                raise UserError(message[1])
        start = time.monotonic() + 0.05
        for _, pipe in workers:
            pipe.send(("go", start))
        results = []
        limit = start + spec["warmup"] + spec["duration"] + 30 + spec["timeout"]
        for proc, pipe in workers:
            while not pipe.poll(0.25):
                if draw is not None:
                    draw(sum(shared[0::2]), sum(shared[1::2]))
                if not proc.is_alive() and not pipe.poll(0):
                    raise UserError(f"bench: worker process {proc.pid} died ({proc.exitcode})")
                if time.monotonic() > limit:
                    raise UserError("bench: a worker process did not finish in time")
            message = pipe.recv()
            if message[0] == "error":
                raise UserError(message[1])
            r = _Result()
            r.round_trips, r.errors, raw, r.elapsed = message[1]
            r.latencies.frombytes(raw)
            results.append(r)
        return results
    finally:
        for proc, pipe in workers:
            pipe.close()
            if proc.is_alive():
                proc.terminate()
            proc.join(5)


def _receive(pipe, proc, limit: float):
    while not pipe.poll(0.1):
        if not proc.is_alive() and not pipe.poll(0):
            raise UserError(f"bench: worker process {proc.pid} died ({proc.exitcode})")
        if time.monotonic() > limit:
            raise UserError("bench: worker processes did not get ready in time")
    return pipe.recv()


class _Drawer:
    """A live progress line on stderr (only made when stderr is a terminal)."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.began = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, round_trips: int, errors: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        spent = now - self.began
        total = self.spec["warmup"] + self.spec["duration"]
        phase = "warmup" if spent < self.spec["warmup"] else "measuring"
        sys.stderr.write(f"\r{phase} {min(spent, total):5.1f}/{total:g}s  "
                         f"round-trips {round_trips:,}  errors {errors:,}   ")
        sys.stderr.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# --- the report --------------------------------------------------------------


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def measure(transport: str, address, *, connections: int = 10, size: int = 1024,
            duration: float = 5.0, warmup: float = 1.0, timeout: float | None = None,
            processes: int = 1, pb_call: str = "echo", progress: bool = False) -> dict:
    """
    Run one benchmark; return the report as a dict (what C{--json} prints).
    C{address} is C{(host, port)} or a Unix socket path.

    @raise UserError: the target cannot be reached (one line for the user).
    """
    if timeout is None:
        timeout = 1.0 if transport == "udp" else 5.0
    family, sockaddr = _resolve("tcp" if transport == "pb" else transport, address)
    target = _target_text(transport, address)
    spec = dict(transport=transport, family=family, sockaddr=sockaddr, target=target,
                connections=connections, size=size, duration=duration, warmup=warmup,
                timeout=timeout, processes=processes, pb_call=pb_call)
    if transport == "udp":
        _udp_probe(family, sockaddr, target, timeout)
    drawer = _Drawer(spec) if progress else None
    try:
        if processes == 1:
            results = [LOOPS[transport](spec, 0, connections, _Local(drawer))]
        else:
            results = _run_processes(spec, drawer)
    finally:
        if drawer is not None:
            drawer.clear()
    return _report(spec, results)


def _udp_probe(family: int, sockaddr, target: str, timeout: float, tries: int = 3) -> None:
    """One datagram first: a refused or silent target is one line, not a table of errors."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(sockaddr)
        s.settimeout(timeout)
        for _ in range(tries):
            try:
                s.send(b"netecho bench probe\n")
                s.recv(65536)
                return
            except ConnectionRefusedError:
                raise UserError(f"read udp {target}: connection refused") from None
            except socket.timeout:
                continue
            except OSError as e:
                raise UserError(f"read udp {target}: {os.strerror(e.errno).lower() if e.errno else e}") from None
    raise UserError(f"no reply from {target} after {tries} tries")


def _report(spec: dict, results: list[_Result]) -> dict:
    round_trips = sum(r.round_trips for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    samples: list[float] = []
    for r in results:
        samples.extend(r.latencies)
    samples.sort()
    elapsed = max((r.elapsed for r in results), default=0.0) or spec["duration"]
    ms = lambda q: round(_percentile(samples, q) * 1000, 4)  # noqa: E731
    return {
        "transport": spec["transport"],
        "target": spec["target"],
        "connections": spec["connections"],
        "size": spec["size"],
        "duration": spec["duration"],
        "warmup": spec["warmup"],
        "processes": spec["processes"],
        **({"call": spec["pb_call"]} if spec["transport"] == "pb" else {}),
        "round_trips": round_trips,
        "round_trips_per_s": round(round_trips / elapsed, 1),
        "mb_per_s": 0.0 if spec["pb_call"] == "add" and spec["transport"] == "pb"
        else round(round_trips * spec["size"] / elapsed / 1e6, 3),
        "latency_ms": {
            "p50": ms(50),
            "p90": ms(90),
            "p99": ms(99),
            "max": round(samples[-1] * 1000, 4) if samples else 0.0,
        },
        "errors": sum(errors.values()),
        "error_kinds": dict(sorted(errors.items())),
    }


#: The plain table's columns: header, report key (or latency percentile), format.
COLUMNS = (
    ("round-trips", "round_trips", "{:d}"),
    ("rt/s", "round_trips_per_s", "{:.1f}"),
    ("MB/s", "mb_per_s", "{:.3f}"),
    ("p50_ms", "p50", "{:.3f}"),
    ("p90_ms", "p90", "{:.3f}"),
    ("p99_ms", "p99", "{:.3f}"),
    ("max_ms", "max", "{:.3f}"),
    ("errors", "errors", "{:d}"),
)


def format_table(report: dict) -> str:
    """The plain output: a title line, a header and one row."""
    what = {"echo": f"{report['size']} B echo() calls", "add": "add() calls"}.get(
        report.get("call"), f"{report['size']} B echo")
    title = (f"{report['transport']} {report['target']}: {report['connections']} connections, "
             f"{what}, {report['duration']:g} s measured after {report['warmup']:g} s "
             f"warmup, {report['processes']} process{'es' if report['processes'] != 1 else ''}")
    cells = []
    for header, key, fmt in COLUMNS:
        value = report["latency_ms"][key] if key in report["latency_ms"] else report[key]
        cells.append(fmt.format(value))
    widths = [max(len(h), len(c)) for (h, _, _), c in zip(COLUMNS, cells)]
    lines = [
        title,
        "  ".join(h.rjust(w) for (h, _, _), w in zip(COLUMNS, widths)),
        "  ".join(c.rjust(w) for c, w in zip(cells, widths)),
    ]
    if report["error_kinds"]:
        lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in report["error_kinds"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run parsed C{args}; return the exit status (100 if any round trip failed)."""
    _check(args, args.bench_parser)
    try:
        report = measure(
            args.transport, args.address, connections=args.connections, size=args.size,
            duration=args.duration, warmup=args.warmup, timeout=args.timeout,
            processes=args.processes, pb_call=args.pb_call,
            progress=os.isatty(2),
        )
    except UserError as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    sys.stdout.flush()
    if report["errors"]:
        print(f"bench {report['transport']} {report['target']}: {report['errors']} of "
              f"{report['errors'] + report['round_trips']} round trips failed", file=sys.stderr)
        return EXIT_FAILURE
    return 0


DESCRIPTION = (
    "Load an echo server: each connection sends S bytes, waits for the whole echo, checks it "
    "byte for byte, and repeats. Reports round-trips/s, MB/s (message bytes echoed), latency "
    "percentiles and errors (short, long or corrupted echoes, closed connections, timeouts, "
    "lost datagrams: never counted as round trips). Exit status 0; 100 if the target cannot "
    "be reached (one line on stderr) or any round trip failed (the report is printed first); "
    "2 for usage errors."
)


def register(sub) -> None:
    """Add the C{bench} subcommand."""
    p = sub.add_parser("bench", help="load generator: round-trips/s and latency of an echo server",
                       description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(run=run, bench_parser=p)
