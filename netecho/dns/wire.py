"""
The exchange with a name server: queries and replies as twisted.names
messages, over UDP, TCP or TLS (RFC 7858), checked before they count.

twisted.names provides the message codec (L{dns.Message}, the record
classes); the exchange is ours, because C{client.Resolver} trusts too
much: it accepts a reply to a different question and one with QR=0,
retries over TCP to whichever server comes next, keeps TCP connections open
and re-arms a resolv.conf timer forever. Here a reply counts only when its
ID, QR bit and question match what was asked; anything else is ignored and
the wait goes on, as dnspython does; so is a reply whose records do not fit
the message. A truncated UDP reply is asked again over TCP of the same
server. EDNS0 (RFC 6891) is sent unless turned off, and a server that
answers it with a FORMERR without an OPT record (it did not understand
EDNS) is asked again without it, once (dig 9.18 only suggests +noedns).

UDP queries share a small pool of sockets per server (L{Upstreams}); each
query takes a random one of them and a random ID.
"""

from __future__ import annotations

import random
import struct
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Callable, Sequence

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.names import dns
from twisted.protocols import basic
from zope.interface import implementer

from netecho.address import join_host_port
from netecho.dns.names import WireName, same_name, wire_labels
from netecho.dns.text import RCODE_ERRORS
from netecho.errors import UserError

DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRIES = 2
#: EDNS0 UDP payload size asked for by default (DNS flag day 2020).
DEFAULT_BUFSIZE = 1232
OPT = 41
_A6 = 38
_DO = 0x8000

_random = random.SystemRandom()


@dataclass(frozen=True)
class QuerySettings:
    """
    How to ask: C{tcp} always over TCP; C{edns} the UDP payload size to
    advertise (None: no EDNS); C{dnssec} sets the DO bit (needs EDNS);
    C{tls}: a callable taking the server's IP and giving TLS settings
    (anything with C{wrap(endpoint)}, C{check(connection)} and
    C{failure(target, exc, connection)}, as L{netecho.cli.tls.ClientTLS}
    has); with it every query goes over TLS.
    """

    tcp: bool = False
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    edns: int | None = DEFAULT_BUFSIZE
    dnssec: bool = False
    tls: Callable | None = None


@dataclass
class Exchange:
    """One answered query: the reply, who gave it, how, how fast and how big."""

    reply: dns.Message
    server: tuple[str, int]
    transport: str  # UDP, TCP or TLS
    query_time: float  # seconds from the last send to the reply
    size: int  # bytes of the reply
    when: float  # wall-clock time of the reply
    edns_fallback: bool = False  # asked again without EDNS after a FORMERR


# --- messages ----------------------------------------------------------------------


def _labelled(base: type, names: Sequence[str], skip: Callable[[bytes, int], int]) -> type:
    """C{base} whose C{decode} also keeps the wire labels of its names."""

    class Labelled(base):
        def decode(self, strio, length=None):
            start = strio.tell()
            base.decode(self, strio, length)
            data = strio.getvalue()
            offset = skip(data, start)
            for attribute in names[:-1]:
                labels, offset = wire_labels(data, offset)
                getattr(self, attribute).labels = labels
            getattr(self, names[-1]).wire = (data, offset)  # read when shown

    Labelled.__name__ = Labelled.__qualname__ = base.__name__
    return Labelled


def _after_strings(count: int, fixed: int) -> Callable[[bytes, int], int]:
    def skip(data: bytes, start: int) -> int:
        offset = start + fixed
        for _ in range(count):
            offset += 1 + data[offset]
        return offset
    return skip


def _fixed(n: int) -> Callable[[bytes, int], int]:
    return lambda data, start: start + n


_LABELLED: dict[int, type] = {
    base.TYPE: _labelled(base, names, skip)
    for base, names, skip in (
        (dns.Record_NS, ("name",), _fixed(0)),
        (dns.Record_CNAME, ("name",), _fixed(0)),
        (dns.Record_PTR, ("name",), _fixed(0)),
        (dns.Record_DNAME, ("name",), _fixed(0)),
        (dns.Record_MD, ("name",), _fixed(0)),
        (dns.Record_MF, ("name",), _fixed(0)),
        (dns.Record_MB, ("name",), _fixed(0)),
        (dns.Record_MG, ("name",), _fixed(0)),
        (dns.Record_MR, ("name",), _fixed(0)),
        (dns.Record_MINFO, ("rmailbx", "emailbx"), _fixed(0)),
        (dns.Record_RP, ("mbox", "txt"), _fixed(0)),
        (dns.Record_AFSDB, ("hostname",), _fixed(2)),
        (dns.Record_MX, ("name",), _fixed(2)),
        (dns.Record_SRV, ("target",), _fixed(6)),
        (dns.Record_SOA, ("mname", "rname"), _fixed(0)),
        (dns.Record_NAPTR, ("replacement",), _after_strings(3, 4)),
    )
}


def _skip_records(data: bytes, offset: int, count: int) -> tuple[int, tuple[int, int] | None]:
    """
    Walk C{count} records from C{offset} without decoding them: where they
    end, and the class and TTL of an OPT record among them (None if none).

    @raise ValueError: a record that does not fit the message.
    """
    opt = None
    end = len(data)
    for _ in range(count):
        for _ in range(128):  # the owner name, up to its end or its pointer
            length = data[offset]
            if length == 0:
                offset += 1
                break
            if length >= 0xC0:
                offset += 2
                break
            if length & 0xC0:
                raise ValueError("unknown label type")
            offset += 1 + length
        else:
            raise ValueError("name too long")
        if offset + 10 > end:
            raise ValueError("record header runs past the end of the message")
        rtype, cls, ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10 + rdlength
        if offset > end:
            raise ValueError("record data runs past the end of the message")
        if rtype == OPT:
            opt = (cls, ttl)
    return offset, opt


class ReplyMessage(dns.Message):
    """
    A L{dns.Message} that keeps what dig shows and twisted.names drops:
    the labels of every name (a dot inside a label stays in it) and each
    record's data as it came (C{rr.rdata}, for the generic form). Its
    records must fit the message: twisted.names reads a record's data
    without checking it against its rdlength or the end of the packet, and
    stops quietly at the end of the packet when fewer records came than the
    header counts. Here either makes the message malformed (as dnspython's
    FormError does), so it is ignored like other bogus replies. A truncated
    (TC) reply is exempt: only its flag is used.

    The answers are decoded at once; the authority and additional sections
    are checked at once (every record fits) but decoded by twisted.names
    only when first read, as most lookups never show them. C{opt} is the
    class (UDP size) and TTL (extended rcode, version, DO) of the reply's
    OPT record, or None.
    """

    opt: tuple[int, int] | None = None
    _lazy: dict | None = None

    def lookupRecordType(self, type: int):
        if type == _A6:
            # twisted.names reads floor((128 - prefix length) / 8) suffix bytes
            # where RFC 2874 has the ceiling: kept raw, formatted from its bytes.
            return dns.UnknownRecord
        return _LABELLED.get(type) or super().lookupRecordType(type)

    def _section(name: str):  # noqa: N805 (a property factory used in the class body)
        def get(self):
            lazy = self._lazy
            if lazy and name in lazy:
                start, count = lazy.pop(name)
                records: list = []
                strio = BytesIO(self.wire)
                strio.seek(start)
                try:
                    self.parseRecords(records, count, strio)
                except (EOFError, ValueError, IndexError, struct.error):
                    pass  # a record whose data does not fit its type: the ones before it
                self.__dict__["_" + name] = records
            return self.__dict__["_" + name]

        def set(self, value):
            if self._lazy:
                self._lazy.pop(name, None)
            self.__dict__["_" + name] = value

        return property(get, set)

    authority = _section("authority")
    additional = _section("additional")
    del _section

    def fromStr(self, data: bytes) -> None:
        self.wire = data
        super().fromStr(data)

    def decode(self, strio, length=None) -> None:
        data = strio.getvalue()
        header = data[: self.headerSize]
        if len(header) < self.headerSize:
            raise EOFError("short header")
        byte3 = header[2]
        if (byte3 >> 1) & 1:  # TC: as twisted.names reads it (only the flag is used)
            return super().decode(strio, length)
        self.maxSize = 0
        self.id, byte3, byte4, nqueries, nans, nns, nadd = struct.unpack(self.headerFmt, header)
        self.answer = (byte3 >> 7) & 1
        self.opCode = (byte3 >> 3) & 0xF
        self.auth = (byte3 >> 2) & 1
        self.trunc = 0
        self.recDes = byte3 & 1
        self.recAv = (byte4 >> 7) & 1
        self.authenticData = (byte4 >> 5) & 1
        self.checkingDisabled = (byte4 >> 4) & 1
        self.rCode = byte4 & 0xF
        strio.seek(self.headerSize)
        self.queries = []
        offset = self.headerSize
        for _ in range(nqueries):
            q = dns.Query()
            q.decode(strio)
            q.name.labels, offset = wire_labels(data, offset)
            offset += 4
            self.queries.append(q)
        self.answers = []
        self.parseRecords(self.answers, nans, strio)
        start = strio.tell()
        middle, _ = _skip_records(data, start, nns)
        end, self.opt = _skip_records(data, middle, nadd)
        self._lazy = {"authority": (start, nns), "additional": (middle, nadd)}

    def parseRecords(self, list, num, strio) -> None:
        if self.trunc:
            return super().parseRecords(list, num, strio)
        data = strio.getvalue()
        end = len(data)
        for _ in range(num):
            header = dns.RRHeader(auth=self.auth)
            owner = strio.tell()
            header.decode(strio)  # EOFError: fewer records than counted
            header.name.wire = (data, owner)  # its labels are read when needed
            start = strio.tell()
            if start + header.rdlength > end:
                raise ValueError("record data runs past the end of the message")
            header.payload = self.lookupRecordType(header.type)(ttl=header.ttl)
            header.payload.decode(strio, header.rdlength)
            if strio.tell() != start + header.rdlength:
                raise ValueError("record data does not match its length")
            header.rdata = data[start : start + header.rdlength]
            list.append(header)


def opt_record(bufsize: int, dnssec: bool = False) -> dns.RRHeader:
    """The EDNS0 OPT pseudo-record (RFC 6891 6.1.2): version 0, DO if asked."""
    return dns.RRHeader(b"", OPT, bufsize, _DO if dnssec else 0, dns.UnknownRecord(b""))


def build_query(labels: Sequence[bytes], qtype: int, edns: int | None = DEFAULT_BUFSIZE,
                dnssec: bool = False) -> dns.Message:
    """A recursive query for C{labels}/C{qtype} in class IN with a random ID (and EDNS0 unless None)."""
    sent = dns.Message(_random.getrandbits(16), recDes=1)
    query = dns.Query(b"", qtype, dns.IN)
    query.name = WireName(labels)
    sent.queries = [query]
    if edns is not None:
        sent.additional = [opt_record(edns, dnssec)]
    return sent


def _opt(message: dns.Message) -> tuple[int, int] | None:
    if isinstance(message, ReplyMessage) and message._lazy is not None:
        return message.opt
    for rr in message.additional:
        if rr.type == OPT:
            return rr.cls, rr.ttl
    return None


def rcode_of(message: dns.Message) -> int:
    """The full response code: the header's 4 bits and the OPT record's 8 more."""
    opt = _opt(message)
    return message.rCode if opt is None else ((opt[1] >> 24) << 4) | message.rCode


def is_reply_to(reply: dns.Message, sent: dns.Message) -> bool:
    """
    True when C{reply} answers C{sent}: same ID, QR set, same question.
    A server may leave the question out of an error reply (FORMERR,
    SERVFAIL, ...); that one is accepted, as dnspython does.
    """
    if reply.id != sent.id or not reply.answer or reply.opCode != sent.opCode:
        return False
    if not reply.queries:
        return rcode_of(reply) not in (dns.OK, dns.ENAME)
    if len(reply.queries) != len(sent.queries):
        return False
    for got, asked in zip(reply.queries, sent.queries):
        if (got.type, got.cls) != (asked.type, asked.cls) or not same_name(got.name, asked.name):
            return False
    return True


def parse_reply(data: bytes, sent: dns.Message) -> dns.Message | None:
    """The decoded reply to C{sent}, or None for junk or someone else's reply."""
    if len(data) < 12 or struct.unpack("!H", data[:2])[0] != sent.id:
        return None
    reply = ReplyMessage()
    try:
        reply.fromStr(data)
    except (EOFError, ValueError, IndexError, struct.error):
        return None
    if not is_reply_to(reply, sent):
        return None
    reply.size = len(data)
    return reply


# --- talking to one server ------------------------------------------------


class _NoReply(Exception):
    """Nothing usable within the timeout: worth another try."""


class _Failed(Exception):
    """The server cannot answer this (refused connection, error code)."""


class _SharedUDP(protocol.DatagramProtocol):
    """
    A connected UDP socket to one server (the kernel passes only its
    datagrams), shared by queries in flight to it: a datagram answers the
    queries whose ID, QR bit and question it matches.
    """

    noisy = False

    def __init__(self, upstreams: "Upstreams", server: tuple[str, int]) -> None:
        self.upstreams = upstreams
        self.server = server
        #: query ID -> [(query, Deferred of its reply)]
        self.waiting: dict[int, list[tuple[dns.Message, defer.Deferred]]] = {}
        #: Queries using this socket now.
        self.users = 0
        self.closing = False
        self.port = None

    def datagramReceived(self, data: bytes, addr) -> None:
        if len(data) < 12:
            return
        for sent, d in list(self.waiting.get(struct.unpack("!H", data[:2])[0], ())):
            if not d.called:
                reply = parse_reply(data, sent)
                if reply is not None:
                    d.callback(reply)

    def connectionRefused(self) -> None:
        # The server's port is closed: every query waiting on it fails, and
        # the next query opens a new socket.
        self.upstreams._forget(self)
        for waiters in list(self.waiting.values()):
            for _, d in list(waiters):
                if not d.called:
                    d.errback(_Failed("connection refused"))

    def stopProtocol(self) -> None:
        # The epoll reactor reports a connected socket's ICMP error by
        # closing the port without connectionRefused (see cli/udp.py).
        if not self.closing:
            self.connectionRefused()


class Upstreams:
    """
    The UDP sockets of the queries in flight: up to C{size} per server,
    each bound to a port the kernel picks, shared by the queries to that
    server (each query takes one at random, so both its ID and its source
    port are random), opened as needed and closed when the last query on
    them is done, or with C{keep} only by L{close} (a bulk run keeps its
    pool). A process that looks up names for many clients keeps a few
    descriptors per server, not one per query.
    """

    def __init__(self, reactor, size: int = 1, keep: bool = False) -> None:
        self.reactor = reactor
        self.size = size
        self.keep = keep
        self._sockets: dict[tuple[str, int], list[_SharedUDP]] = {}

    async def close(self) -> None:
        """
        Close every socket. A query still in flight on one is not failed at
        once: it gets no reply and ends at its timeout. A socket already
        closed (the reactor stopped) is skipped.
        """
        for pool in list(self._sockets.values()):
            for shared in list(pool):
                self._forget(shared)
                shared.closing = True
                if getattr(shared.port, "connected", False):
                    await defer.maybeDeferred(shared.port.stopListening)

    def _forget(self, shared: _SharedUDP) -> None:
        pool = self._sockets.get(shared.server)
        if pool is not None and shared in pool:
            pool.remove(shared)
            if not pool:
                del self._sockets[shared.server]

    def _open(self, server: tuple[str, int]) -> _SharedUDP:
        pool = self._sockets.setdefault(server, [])
        if len(pool) >= self.size:
            return _random.choice(pool)
        host, port = server
        shared = _SharedUDP(self, server)
        # Replies are as large as the EDNS size asked for, up to 64 KiB.
        shared.port = self.reactor.listenUDP(
            0, shared, interface="::" if ":" in host else "", maxPacketSize=65535)
        try:
            shared.port.connect(host, port)
        except OSError as e:
            shared.closing = True
            shared.port.stopListening()
            if not pool:
                del self._sockets[server]
            raise _Failed((e.strerror or str(e)).lower()) from None
        pool.append(shared)
        return shared

    async def ask(self, server: tuple[str, int], sent: dns.Message, timeout: float) -> dns.Message:
        """
        Send C{sent} to C{server} over UDP and return the first reply to it.

        @raise _NoReply: none within C{timeout} seconds.
        @raise _Failed: the server refused (ICMP) or the send failed.
        """
        shared = self._open(server)
        shared.users += 1
        reply: defer.Deferred = defer.Deferred()
        waiters = shared.waiting.setdefault(sent.id, [])
        waiters.append((sent, reply))
        try:
            try:
                shared.port.write(sent.toStr())
            except OSError as e:
                raise _Failed((e.strerror or str(e)).lower()) from None
            reply.addTimeout(timeout, self.reactor)
            try:
                return await reply
            except defer.TimeoutError:
                raise _NoReply() from None
        finally:
            waiters.remove((sent, reply))
            if not waiters and shared.waiting.get(sent.id) is waiters:
                del shared.waiting[sent.id]
            shared.users -= 1
            if not shared.users and not shared.closing and not self.keep:
                self._forget(shared)
                shared.closing = True
                if getattr(shared.port, "connected", False):
                    # Wait for the close, so nothing is left on the reactor.
                    await defer.maybeDeferred(shared.port.stopListening)


@implementer(IHandshakeListener)
class _StreamExchange(basic.Int16StringReceiver):
    """
    One query over TCP or TLS (RFC 1035 4.2.2 length prefix). Over TLS
    (C{settings} given) the query is sent only once the handshake is done
    and C{settings.check} accepts the server's identity: Twisted lets a
    certificate without a usable subjectAltName through (it only logs it),
    and the name asked must not reach a server that is not the one meant.
    """

    def __init__(self, sent: dns.Message, settings=None) -> None:
        self.sent = sent
        self.settings = settings
        self.reply: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()
        self.reason = None
        #: Why the server was refused after the handshake (C{tls: ...}), or None.
        self.problem: str | None = None
        self.handshake_done = False

    def connectionMade(self) -> None:
        if self.settings is None:
            self.sendString(self.sent.toStr())

    def handshakeCompleted(self) -> None:
        if self.settings is None:
            return
        self.handshake_done = True
        problem = self.settings.check(self.transport.getHandle())
        if problem:
            self.problem = f"tls: {problem}"
            self.transport.abortConnection()
            return
        self.sendString(self.sent.toStr())

    def stringReceived(self, data: bytes) -> None:
        reply = parse_reply(data, self.sent)
        if reply is not None and not self.reply.called:
            self.reply.callback(reply)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        if not self.reply.called:
            self.reply.errback(_Failed(self.problem or "connection closed by the server"))
        self.lost.callback(None)


def _tls_problem(settings, exchange: _StreamExchange, server: tuple[str, int]) -> str | None:
    """Why a TLS connection ended without a reply (handshake, verification), or None."""
    reason = exchange.reason.value if exchange.reason is not None else None
    transport = exchange.transport
    connection = transport.getHandle() if transport is not None else None
    if reason is None or connection is None:
        return None
    if exchange.handshake_done:
        return None  # closed after the handshake (cleanly or not): no TLS problem

    # The TLS settings word it as every netecho TLS client does: "tls HOST:PORT: REASON".
    words = str(settings.failure(join_host_port(*server), reason, connection))
    return "tls: " + words.split(": ", 1)[-1]


async def _ask_stream(reactor, server: tuple[str, int], sent: dns.Message, timeout: float,
                      tls=None) -> dns.Message:
    host, port = server
    kind = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
    endpoint = kind(reactor, host, port, timeout=timeout)
    name = "tcp"
    settings = None
    if tls is not None:
        settings = tls(host)
        endpoint = settings.wrap(endpoint)
        name = "tls"
    exchange = _StreamExchange(sent, settings)
    start = reactor.seconds()
    try:
        await endpoints.connectProtocol(endpoint, exchange)
    except error.ConnectionRefusedError:
        raise _Failed(f"connection refused ({name})") from None
    except error.TimeoutError:
        raise _NoReply() from None
    except error.ConnectError as e:
        raise _Failed(f"{e.__class__.__name__} ({name})") from None
    d = exchange.reply
    d.addTimeout(max(timeout - (reactor.seconds() - start), 0.001), reactor)
    try:
        reply = await d
    except defer.TimeoutError:
        raise _NoReply() from None
    except _Failed:
        if tls is not None and exchange.problem is None:
            problem = _tls_problem(settings, exchange, server)
            if problem:
                raise _Failed(problem) from None
        raise
    finally:
        # Wait for the close, so nothing is left on the reactor.
        exchange.transport.abortConnection()
        await exchange.lost
    return reply


async def _ask(reactor, upstreams: Upstreams, server: tuple[str, int], sent: dns.Message,
               settings: QuerySettings) -> tuple[dns.Message, str]:
    """One try: UDP (TCP if asked, or when the UDP reply is truncated; TLS if asked)."""
    if settings.tls is not None:
        return await _ask_stream(reactor, server, sent, settings.timeout, settings.tls), "TLS"
    if not settings.tcp:
        reply = await upstreams.ask(server, sent, settings.timeout)
        if not reply.trunc:
            return reply, "UDP"
    return await _ask_stream(reactor, server, sent, settings.timeout), "TCP"


async def exchange(
    reactor,
    name: str,
    labels: Sequence[bytes],
    qtype: int,
    servers: Sequence[tuple[str, int]],
    settings: QuerySettings = QuerySettings(),
    upstreams: Upstreams | None = None,
) -> Exchange:
    """
    Ask C{servers} for C{labels}/C{qtype}; return the first reply that is
    an answer (NOERROR or NXDOMAIN) with the server that gave it.

    Each of C{retries + 1} rounds asks every server still in the running
    in turn, waiting C{timeout} seconds each (as resolv.conf's attempts and
    timeout do); a server that refused or answered with an error code is
    not asked again. A FORMERR to a query with EDNS is asked again at once
    without EDNS (once per call). C{name} is the name as the user wrote it,
    for errors. C{upstreams} holds the UDP sockets to share (by default,
    this call's own).

    @raise UserError: no server answered.
    """
    if upstreams is None:
        upstreams = Upstreams(reactor)
    edns = settings.edns
    sent = build_query(labels, qtype, edns, settings.dnssec)
    fallback = False
    failures: dict[tuple[str, int], str] = {}
    running = list(servers)
    for _ in range(settings.retries + 1):
        for server in list(running):
            while True:
                start = reactor.seconds()
                try:
                    reply, transport = await _ask(reactor, upstreams, server, sent, settings)
                except _NoReply:
                    reply = None
                    break
                except _Failed as e:
                    failures[server] = str(e)
                    running.remove(server)
                    reply = None
                    break
                if rcode_of(reply) == dns.EFORMAT and _opt(reply) is None and edns is not None and not fallback:
                    # An EDNS-intolerant server (its FORMERR carries no OPT record: it
                    # did not understand ours): ask it again without EDNS, once.
                    # (dig 9.18 does not retry: it suggests +noedns.)
                    fallback = True
                    edns = None
                    sent = build_query(labels, qtype, None)
                    continue
                break
            if reply is None:
                continue
            code = rcode_of(reply)
            if code in (dns.OK, dns.ENAME):
                return Exchange(reply, server, transport, reactor.seconds() - start, reply.size,
                                time.time(), fallback)
            failures[server] = RCODE_ERRORS.get(code, f"response code {code}")
            running.remove(server)
        if not running:
            break
    for server in servers:
        if server in failures:
            raise UserError(f"lookup {name} on {join_host_port(*server)}: {failures[server]}")
    where = ", ".join(join_host_port(*s) for s in servers)
    tries = settings.retries + 1
    raise UserError(
        f"lookup {name} on {where}: timed out ({tries} {'try' if tries == 1 else 'tries'} of {settings.timeout:g}s)"
    )
