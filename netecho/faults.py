"""
Faults on purpose (``--faults SPEC``, ``netecho.testing``): echo services
that delay, drop, duplicate, corrupt, throttle, slice, reset, close or
stall, so that clients' timeout, retry and framing code can be tested
against a real peer on loopback.

One more policy (see netecho/policies.py): L{FaultyStream} wraps a stream
connection's L{netecho.policies.Session} (so the stop word, the counting
and the caps see the client's bytes as they came) and acts on everything
written back; datagram replies go through L{Faults.send_datagram}. L{Faults} holds the current spec (replaceable
while the daemon runs), the random choices (reproducible with ``seed``)
and pushes a count of every fault injected into L{netecho.stats.Stats}.
A stream connection takes the spec in force when it is accepted.
"""

from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass, fields
from typing import Callable

from twisted.internet import interfaces
from twisted.protocols import policies
from zope.interface import alsoProvides, directlyProvides, providedBy

from netecho.stats import Stats
from netecho.transports import reset_connection, unsent_bytes

_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(us|ms|s)$")
_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(B|KB|MB|GB|KiB|MiB|GiB)?$")
_UNITS = {None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}

#: The faults counted (netecho_faults_total{fault}, the summary's faults: line).
FAULT_KINDS = ("delay", "drop", "duplicate", "corrupt", "bandwidth", "slice", "reset_after", "close_after", "stall")

#: Bytes of delayed replies a connection may hold before its reading is paused.
HELD_BYTES = 256 * 1024


@dataclass(frozen=True)
class FaultSpec:
    """A parsed ``--faults`` value; all zero (L{parse}("")) means no faults."""

    delay: float = 0.0
    jitter: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    bandwidth: float = 0.0
    slice: int = 0
    slice_delay: float = 0.0
    reset_after: int = 0
    close_after: int = 0
    stall: bool = False
    seed: int | None = None

    @property
    def stream(self) -> bool:
        """Whether anything here acts on stream connections."""
        return bool(self.delay or self.jitter or self.corrupt or self.bandwidth or self.slice
                    or self.reset_after or self.close_after or self.stall)

    @property
    def datagram(self) -> bool:
        """Whether anything here acts on datagrams."""
        return bool(self.delay or self.jitter or self.corrupt or self.drop or self.duplicate)

    def __str__(self) -> str:
        """The SPEC again, in the units it is written in (C{delay=50ms,slice=4})."""
        items = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (0, 0.0, False, None):
                continue
            name = f.name.replace("_", "-")
            if value is True:
                items.append(name)
            elif name in ("delay", "jitter", "slice-delay"):
                items.append(f"{name}={value * 1000:g}ms")
            else:
                items.append(f"{name}={value:g}")
        return ",".join(items)


def duration(text: str) -> float:
    """C{50ms}, C{1.5s}, C{200us} -> seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration such as 50ms or 1.5s")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def size(text: str) -> float:
    """C{64KB}, C{1MB} (powers of 1000), C{64KiB} (of 1024), C{1000} -> bytes."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size such as 1000, 64KB or 1MiB")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _probability(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise ValueError("not a probability between 0 and 1")
    return p


def _whole(text: str) -> int:
    try:
        n = int(size(text))
    except ValueError:
        n = -1
    if n < 1:
        raise ValueError("not a whole number of bytes, 1 or more")
    return n


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a whole number") from None


def _positive_size(text: str) -> float:
    value = size(text)
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


_ITEMS: dict[str, Callable[[str], object]] = {
    "delay": duration,
    "jitter": duration,
    "drop": _probability,
    "duplicate": _probability,
    "corrupt": _probability,
    "bandwidth": _positive_size,
    "slice": _whole,
    "slice-delay": duration,
    "reset-after": _whole,
    "close-after": _whole,
    "seed": _seed,
}


def parse(text: str) -> FaultSpec:
    """
    Parse a SPEC: comma-separated C{key=value} items and the flag C{stall}.

    @raise ValueError: naming the bad item, e.g. C{drop=1.5: not a
        probability between 0 and 1}.
    """
    values: dict[str, object] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if key == "stall" and not eq:
            values["stall"] = True
            continue
        if key not in _ITEMS:
            known = ", ".join([*_ITEMS, "stall"])
            raise ValueError(f"{item}: unknown fault (known: {known})")
        if not eq:
            raise ValueError(f"{item}: needs a value ({key}=...)")
        try:
            values[key.replace("-", "_")] = _ITEMS[key](value.strip())
        except ValueError as e:
            raise ValueError(f"{item}: {e}") from None
    return FaultSpec(**values)


class Faults:
    """
    The faults of one daemon (or one test service): the spec in force, the
    random source, and the counting.
    """

    def __init__(self, stats: Stats, spec: str | FaultSpec = "", reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.stats = stats
        self.reactor = reactor
        #: Datagram replies waiting for their time (see L{cancel}).
        self._pending: set = set()
        self.set(spec)

    def set(self, spec: str | FaultSpec) -> FaultSpec:
        """Put C{spec} in force (raises ValueError for a bad one)."""
        self.spec = parse(spec) if isinstance(spec, str) else spec
        self.random = random.Random(self.spec.seed)
        #: Whether datagram replies (stream connections) take faults now:
        #: plain attributes, read for every datagram (every new connection).
        self.datagram = self.spec.datagram
        self.stream = self.spec.stream
        return self.spec

    def clear(self) -> None:
        """No faults from now on."""
        self.set(FaultSpec())

    def count(self, fault: str, n: int = 1) -> None:
        self.stats.fault(fault, n)

    def chance(self, p: float) -> bool:
        return p > 0 and self.random.random() < p

    def corrupted(self, data: bytes) -> bytes:
        """C{data} with one byte changed."""
        if not data:
            return data
        i = self.random.randrange(len(data))
        self.count("corrupt")
        return data[:i] + bytes([data[i] ^ (1 + self.random.randrange(255))]) + data[i + 1 :]

    def delay(self) -> float:
        spec = self.spec
        if not (spec.delay or spec.jitter):
            return 0.0
        return max(0.0, spec.delay + self.random.uniform(-spec.jitter, spec.jitter))

    # Datagrams: called by netecho.policies.ServedDatagrams for each reply.

    def send_datagram(self, send: Callable[[bytes, tuple], None], data: bytes, addr: tuple) -> None:
        """Send (or not) one datagram reply through C{send}, with the faults in force."""
        spec = self.spec
        if self.chance(spec.drop):
            self.count("drop")
            return
        copies = 2 if self.chance(spec.duplicate) else 1
        if copies == 2:
            self.count("duplicate")
        if self.chance(spec.corrupt):
            data = self.corrupted(data)
        wait = self.delay()
        if wait:
            self.count("delay")
        for _ in range(copies):
            if wait:
                self._later(wait, send, data, addr)
            else:
                send(data, addr)

    def _later(self, wait: float, send, data: bytes, addr: tuple) -> None:
        def due() -> None:
            self._pending.discard(call)
            send(data, addr)

        call = self.reactor.callLater(wait, due)
        self._pending.add(call)

    def cancel(self) -> None:
        """Forget the datagram replies still waiting (when their port stops)."""
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending.clear()

    # Streams: netecho.policies.Served wraps each new connection's protocol.

    def wrap(self, protocol):
        """C{protocol} inside a L{FaultyStream}, if stream faults are in force."""
        if not self.stream:
            return protocol
        return FaultyStream(self, protocol)


class FaultyStream(policies.ProtocolWrapper):
    """
    One stream connection's replies, with the faults its spec says. Replies
    keep their order: each leaves at its own time (delay, jitter,
    bandwidth, slices) but never before the one written earlier. While more
    than L{HELD_BYTES} wait, the connection stops reading.
    """

    def __init__(self, faults: Faults, wrapped) -> None:
        # (ProtocolWrapper's factory is only used for registerProtocol.)
        super().__init__(None, wrapped)
        self.faults = faults
        self.spec = faults.spec
        self.echoed = 0
        self.held = 0
        self._finished = False
        self._closing = False
        self._readerPaused = False  # paused by us: too much held back
        self._bufferFull = False  # paused by the transport: its write buffer is full
        #: (when, bytes or "reset"/"close"/"lose"), in the order written
        self._queue: collections.deque = collections.deque()
        self._next = 0.0  # the earliest the next piece may leave (pace)
        self._timer = None
        self._calls: set = set()

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        self.transport = transport
        self.connected = 1
        self.wrappedProtocol.makeConnection(self)
        if interfaces.IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, interfaces.IHalfCloseableProtocol)
        if self.spec.stall:
            self.faults.count("stall")
            transport.pauseProducing()  # never read; the idle sweep still sees no progress

    def dataReceived(self, data: bytes) -> None:
        if self.spec.stall:
            return
        self.wrappedProtocol.dataReceived(data)

    def readConnectionLost(self) -> None:
        self.wrappedProtocol.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrappedProtocol.writeConnectionLost()

    def connectionLost(self, reason) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        self.wrappedProtocol.connectionLost(reason)
        self.wrappedProtocol = None

    def _later(self, wait: float, f, *args) -> None:
        def due() -> None:
            self._calls.discard(call)
            f(*args)

        call = self.faults.reactor.callLater(max(0.0, wait), due)
        self._calls.add(call)

    # The wrapped protocol's transport.

    def write(self, data: bytes) -> None:
        if self._finished or self._closing or not data:
            return
        spec, faults = self.spec, self.faults
        limit = spec.reset_after or spec.close_after
        if limit:
            data = data[: max(0, limit - self.echoed)]
            if not data:
                return
        self.echoed += len(data)
        if faults.chance(spec.corrupt):
            data = faults.corrupted(data)
        pieces = [data]
        if spec.slice:
            pieces = [data[i : i + spec.slice] for i in range(0, len(data), spec.slice)]
            if len(pieces) > 1:
                faults.count("slice")
        wait = faults.delay()
        if wait:
            faults.count("delay")
        at = faults.reactor.seconds() + wait
        for piece in pieces:
            self._queue.append((at, piece))
            self.held += len(piece)
        if spec.bandwidth:
            faults.count("bandwidth")
        if limit and self.echoed >= limit:
            self._queue.append((at, "reset" if spec.reset_after else "close"))
        if self.held > HELD_BYTES and not self._readerPaused:
            self._readerPaused = True
            self.transport.pauseProducing()
        self._pump()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        # After what is still waiting has gone out.
        if not self._closing:
            self._closing = True
            self._queue.append((0.0, "lose"))
            self._pump()

    def _pump(self) -> None:
        """
        Send what is due, in order: a piece leaves at its own time, never
        before the one written before it, and (slice-delay, bandwidth) not
        before the time the previous one's pace allows.
        """
        if self._timer is not None or self._finished:
            return
        spec, reactor = self.spec, self.faults.reactor
        while self._queue:
            at, piece = self._queue[0]
            now = reactor.seconds()
            at = max(at, self._next)
            if at > now:
                self._timer = reactor.callLater(at - now, self._due)
                return
            self._queue.popleft()
            if isinstance(piece, str):
                self._finish(piece)
                return
            self.held -= len(piece)
            self.transport.write(piece)
            self._next = max(now, at) + (len(piece) / spec.bandwidth if spec.bandwidth else 0.0)
            if spec.slice_delay:
                self._next += spec.slice_delay
        if self._readerPaused and self.held <= HELD_BYTES // 2:
            self._readerPaused = False
            if not self._bufferFull:  # (the transport's own pause holds until it says otherwise)
                self.transport.resumeProducing()

    def _due(self) -> None:
        self._timer = None
        self._pump()

    def _finish(self, how: str) -> None:
        self._finished = True
        if how == "lose":
            self.transport.loseConnection()
            return
        self.faults.count("reset_after" if how == "reset" else "close_after")
        if how == "close":
            self.transport.loseConnection()
            return
        # A reset: once the peer has had every byte (nothing left unsent or
        # unacknowledged), close with SO_LINGER 0, which sends RST.
        self._reset(tries=200)

    def _reset(self, tries: int) -> None:
        # Once the peer has had every byte (nothing left buffered, unsent or
        # unacknowledged), close with a TCP RST.
        if tries > 0 and unsent_bytes(self.transport):
            self._later(0.005, self._reset, tries - 1)
            return
        reset_connection(self.transport)

    # Producer calls from the transport go to the transport itself.

    def pauseProducing(self) -> None:
        self._bufferFull = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._bufferFull = False
        if not self.spec.stall and not self._readerPaused:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()
