"""
DNS lookups through twisted.names, checked and printed as ``dig +short`` does.

twisted.names provides the message codec (L{dns.Message}, the record
classes) and the hosts-file search; the exchange with a server is ours,
because C{client.Resolver} trusts too much: it accepts a reply
to a different question and one with QR=0, retries over TCP to whichever
server comes next, keeps TCP connections open and re-arms a resolv.conf
timer forever. Here a reply counts only when its ID, QR bit and question
match what was asked; anything else is ignored and the wait goes on, as
dnspython does; so is a reply whose records do not fit the message. A
truncated UDP reply is asked again over TCP of the same server. Queries in
flight to one server share one UDP socket (L{Upstreams}).

L{query} and L{lookup} are the API (the CLI and a server-side RPC use
them); every failure a user can act on is a L{UserError} with one line.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

from twisted.internet import defer, endpoints, error, protocol
from twisted.names import dns, hosts
from twisted.protocols import basic
from twisted.python.filepath import FilePath

from netecho.address import is_ip, join_host_port
from netecho.errors import UserError

RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"
DEFAULT_TIMEOUT = 2.0
DEFAULT_RETRIES = 2

#: The record types C{lookup} asks for, by name.
TYPES: dict[str, int] = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "NS": dns.NS,
    "MX": dns.MX,
    "TXT": dns.TXT,
    "CNAME": dns.CNAME,
    "SOA": dns.SOA,
    "SRV": dns.SRV,
    "PTR": dns.PTR,
}
_TYPE_NAMES = {code: name for name, code in TYPES.items()}

#: Pseudo-types: C{HOST} is A and AAAA with CNAMEs followed (addresses
#: only); C{IP} is PTR of an address, refusing anything else.
HOST = "HOST"
IP = "IP"

_RCODES = {
    dns.EFORMAT: "format error (FORMERR)",
    dns.ESERVER: "server failure (SERVFAIL)",
    dns.ENOTIMP: "not implemented (NOTIMP)",
    dns.EREFUSED: "query refused (REFUSED)",
}

# How many CNAMEs `host` follows with new queries (a loop must end).
_MAX_CNAME_QUERIES = 8


@dataclass(frozen=True)
class Answer:
    """One answer record: C{data} is what C{dig +short} prints for it."""

    name: str
    type: str
    ttl: int
    data: str

    def as_json(self) -> dict:
        """The record as the C{--json} output shows it."""
        return {"name": self.name, "type": self.type, "ttl": self.ttl, "data": self.data}


@dataclass(frozen=True)
class Result:
    """
    The outcome of one lookup: C{query} as asked, C{type} as asked
    (C{A,AAAA} for L{HOST}), C{server} that answered (C{HOST:PORT}, or the
    hosts file's path) and the answers in the order the server gave them.
    """

    query: str
    type: str
    server: str
    answers: list[Answer]

    def as_json(self) -> dict:
        """The object C{--json} prints."""
        return {
            "query": self.query,
            "type": self.type,
            "server": self.server,
            "answers": [a.as_json() for a in self.answers],
        }

    def lines(self) -> list[str]:
        """The plain output, one answer a line (C{dig +short})."""
        return [a.data for a in self.answers]


# --- names --------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """
    The wire form of C{name} (dots between labels, no trailing dot):
    internationalised labels IDNA-encoded, lengths checked before anything
    is sent (a label at most 63 bytes, the name at most 253 characters).

    @raise UserError: naming what is wrong.
    """
    text = name[:-1] if name.endswith(".") else name
    if not text:
        if name == ".":
            return b""
        raise UserError("lookup: empty name")
    labels = []
    for label in text.split("."):
        if not label:
            raise UserError(f"lookup {name}: empty label")
        if label.isascii():
            raw = label.encode("ascii")
        else:
            try:
                raw = label.encode("idna")
            except UnicodeError:
                raise UserError(f"lookup {name}: not a valid internationalised name") from None
        if len(raw) > 63:
            raise UserError(f"lookup {name}: label longer than 63 bytes")
        labels.append(raw)
    wire = b".".join(labels)
    # On the wire: a length byte per label and the root's zero byte, at most 255.
    if len(wire) > 253:
        raise UserError(f"lookup {name}: name longer than 253 characters")
    return wire


def reverse_name(address: str) -> str:
    """C{1.2.0.192.in-addr.arpa} for C{192.0.2.1} (and ip6.arpa for IPv6)."""
    return ipaddress.ip_address(address).reverse_pointer


# Characters BIND escapes with a backslash in names (dns_name_totext).
_NAME_SPECIALS = frozenset(b'".;\\()@$')


def _escape_label(label: bytes) -> str:
    out = []
    for byte in label:
        if byte in _NAME_SPECIALS:
            out.append("\\" + chr(byte))
        elif 0x20 < byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


def format_labels(labels: Sequence[bytes]) -> str:
    """A name as dig prints it: escaped labels and the trailing dot."""
    if not labels:
        return "."
    return "".join(_escape_label(label) + "." for label in labels)


def format_name(name: dns.Name) -> str:
    """
    A twisted.names L{dns.Name} as dig prints it. Where the record decoder
    below kept the wire labels, a dot inside a label is escaped too; a
    plain L{dns.Name} only has dotted bytes, so it is split at every dot.
    """
    labels = getattr(name, "wire_labels", None)
    if labels is None:
        labels = [label for label in name.name.split(b".") if label]
    return format_labels(labels)


def format_txt(strings: Iterable[bytes]) -> str:
    """TXT strings as dig prints them: quoted, C{\\"} and C{\\\\}, C{\\DDD} for the rest."""
    parts = []
    for string in strings:
        out = []
        for byte in string:
            if byte in (0x22, 0x5C):
                out.append("\\" + chr(byte))
            elif 0x20 <= byte < 0x7F:
                out.append(chr(byte))
            else:
                out.append(f"\\{byte:03d}")
        parts.append('"' + "".join(out) + '"')
    return " ".join(parts)


def format_record(payload) -> str:
    """The rdata of a twisted.names record as C{dig +short} prints it."""
    if isinstance(payload, dns.Record_A):
        return socket.inet_ntop(socket.AF_INET, payload.address)
    if isinstance(payload, dns.Record_AAAA):
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    if isinstance(payload, (dns.Record_NS, dns.Record_CNAME, dns.Record_PTR)):
        return format_name(payload.name)
    if isinstance(payload, dns.Record_MX):
        return f"{payload.preference} {format_name(payload.name)}"
    if isinstance(payload, dns.Record_TXT):
        return format_txt(payload.data)
    if isinstance(payload, dns.Record_SOA):
        # twisted.names decodes three of the five as signed; dig shows unsigned.
        numbers = (payload.serial, payload.refresh, payload.retry, payload.expire, payload.minimum)
        return " ".join(
            [format_name(payload.mname), format_name(payload.rname)]
            + [str(n & 0xFFFFFFFF) for n in numbers]
        )
    if isinstance(payload, dns.Record_SRV):
        return f"{payload.priority} {payload.weight} {payload.port} {format_name(payload.target)}"
    raise ValueError(f"no format for {payload!r}")


# --- decoding: twisted.names' records, keeping the labels of rdata names ---


def _wire_labels(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """The labels of the name at C{offset} and where its in-place part ends."""
    labels: list[bytes] = []
    end = None
    # twisted.names has already decoded this name (no loop, bounded jumps);
    # the bound here only keeps a walk over odd data finite.
    for _ in range(256):
        length = data[offset]
        if length == 0:
            return labels, (offset + 1 if end is None else end)
        if length >= 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        labels.append(data[offset + 1 : offset + 1 + length])
        offset += 1 + length
    raise ValueError("name too long")


def _labelled(base: type, skip: int, count: int) -> type:
    """C{base} whose C{decode} also records the wire labels of its names."""

    class Labelled(base):
        def decode(self, strio, length=None):
            start = strio.tell()
            base.decode(self, strio, length)
            data = strio.getvalue()
            offset = start + skip
            names = []
            for _ in range(count):
                labels, offset = _wire_labels(data, offset)
                names.append(labels)
            for attribute, labels in zip(self._name_attributes, names):
                getattr(self, attribute).wire_labels = labels

    Labelled.__name__ = Labelled.__qualname__ = base.__name__
    return Labelled


_LABELLED: dict[int, type] = {}
for _base, _skip, _names in (
    (dns.Record_NS, 0, ("name",)),
    (dns.Record_CNAME, 0, ("name",)),
    (dns.Record_PTR, 0, ("name",)),
    (dns.Record_MX, 2, ("name",)),
    (dns.Record_SRV, 6, ("target",)),
    (dns.Record_SOA, 0, ("mname", "rname")),
):
    _cls = _labelled(_base, _skip, len(_names))
    _cls._name_attributes = _names
    _LABELLED[_base.TYPE] = _cls
del _base, _skip, _names, _cls


class _Message(dns.Message):
    """
    A L{dns.Message} whose rdata names keep their label boundaries and
    whose records must fit the message: twisted.names reads a record's
    data without checking it against its rdlength or the end of the
    packet, and stops quietly at the end of the packet when fewer records
    came than the header counts. Here either makes the message malformed
    (as dnspython's FormError does), so it is ignored like other bogus
    replies. A truncated (TC) reply is exempt: only its flag is used.
    """

    def lookupRecordType(self, type: int):
        return _LABELLED.get(type) or super().lookupRecordType(type)

    def parseRecords(self, list, num, strio) -> None:
        if self.trunc:
            return super().parseRecords(list, num, strio)
        end = len(strio.getvalue())
        for _ in range(num):
            header = dns.RRHeader(auth=self.auth)
            header.decode(strio)  # EOFError: fewer records than counted
            start = strio.tell()
            if start + header.rdlength > end:
                raise ValueError("record data runs past the end of the message")
            header.payload = self.lookupRecordType(header.type)(ttl=header.ttl)
            header.payload.decode(strio, header.rdlength)
            if strio.tell() != start + header.rdlength:
                raise ValueError("record data does not match its length")
            list.append(header)


def is_reply_to(reply: dns.Message, sent: dns.Message) -> bool:
    """
    True when C{reply} answers C{sent}: same ID, QR set, same question.
    A server may leave the question out of an error reply (FORMERR,
    SERVFAIL, ...); that one is accepted, as dnspython does.
    """
    if reply.id != sent.id or not reply.answer or reply.opCode != sent.opCode:
        return False
    if not reply.queries:
        return reply.rCode not in (dns.OK, dns.ENAME)
    if len(reply.queries) != len(sent.queries):
        return False
    for got, asked in zip(reply.queries, sent.queries):
        if (got.name.name.lower(), got.type, got.cls) != (asked.name.name.lower(), asked.type, asked.cls):
            return False
    return True


def parse_reply(data: bytes, sent: dns.Message) -> dns.Message | None:
    """The decoded reply to C{sent}, or None for junk or someone else's reply."""
    if len(data) < 12 or struct.unpack("!H", data[:2])[0] != sent.id:
        return None
    reply = _Message()
    try:
        reply.fromStr(data)
    except (EOFError, ValueError, IndexError, struct.error):
        return None
    return reply if is_reply_to(reply, sent) else None


# --- talking to one server ------------------------------------------------


class _NoReply(Exception):
    """Nothing usable within the timeout: worth another try."""


class _Failed(Exception):
    """The server cannot answer this (refused connection, error code)."""


class _SharedUDP(protocol.DatagramProtocol):
    """
    A connected UDP socket to one server (the kernel passes only its
    datagrams), shared by every query in flight to it: a datagram answers
    the queries whose ID, QR bit and question it matches.
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
    The UDP sockets of the queries in flight: one per server, shared by
    every query to it, opened by the first and closed when the last is
    done. A server process that looks up names for many clients keeps one
    descriptor per server, not one per query.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._sockets: dict[tuple[str, int], _SharedUDP] = {}

    def _forget(self, shared: _SharedUDP) -> None:
        if self._sockets.get(shared.server) is shared:
            del self._sockets[shared.server]

    def _open(self, server: tuple[str, int]) -> _SharedUDP:
        shared = self._sockets.get(server)
        if shared is not None:
            return shared
        host, port = server
        shared = _SharedUDP(self, server)
        # No EDNS is sent, so a reply is at most 512 bytes; read more anyway.
        shared.port = self.reactor.listenUDP(
            0, shared, interface="::" if ":" in host else "", maxPacketSize=65535)
        try:
            shared.port.connect(host, port)
        except OSError as e:
            shared.closing = True
            shared.port.stopListening()
            raise _Failed((e.strerror or str(e)).lower()) from None
        self._sockets[server] = shared
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
            if not shared.users and not shared.closing:
                self._forget(shared)
                shared.closing = True
                # Wait for the close, so nothing is left on the reactor.
                await defer.maybeDeferred(shared.port.stopListening)


class _TCPExchange(basic.Int16StringReceiver):
    """One query over TCP (RFC 1035 4.2.2 length prefix)."""

    def __init__(self, sent: dns.Message) -> None:
        self.sent = sent
        self.reply: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.sendString(self.sent.toStr())

    def stringReceived(self, data: bytes) -> None:
        reply = parse_reply(data, self.sent)
        if reply is not None and not self.reply.called:
            self.reply.callback(reply)

    def connectionLost(self, reason=None) -> None:
        if not self.reply.called:
            self.reply.errback(_Failed("connection closed by the server"))
        self.lost.callback(None)


async def _ask_tcp(reactor, server: tuple[str, int], sent: dns.Message, timeout: float) -> dns.Message:
    host, port = server
    kind = endpoints.TCP6ClientEndpoint if ":" in host else endpoints.TCP4ClientEndpoint
    exchange = _TCPExchange(sent)
    start = reactor.seconds()
    try:
        await endpoints.connectProtocol(kind(reactor, host, port, timeout=timeout), exchange)
    except error.ConnectionRefusedError:
        raise _Failed("connection refused (tcp)") from None
    except error.TimeoutError:
        raise _NoReply() from None
    except error.ConnectError as e:
        raise _Failed(f"{e.__class__.__name__} (tcp)") from None
    d = exchange.reply
    d.addTimeout(max(timeout - (reactor.seconds() - start), 0.001), reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise _NoReply() from None
    finally:
        # Wait for the close, so nothing is left on the reactor.
        exchange.transport.abortConnection()
        await exchange.lost


async def _ask(
    reactor, upstreams: Upstreams, server: tuple[str, int], sent: dns.Message, tcp: bool, timeout: float
) -> dns.Message:
    """One try: UDP (TCP if asked, or when the UDP reply is truncated)."""
    if not tcp:
        reply = await upstreams.ask(server, sent, timeout)
        if not reply.trunc:
            return reply
    return await _ask_tcp(reactor, server, sent, timeout)


async def exchange(
    reactor,
    name: str,
    qname: bytes,
    qtype: int,
    servers: Sequence[tuple[str, int]],
    tcp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    upstreams: Upstreams | None = None,
) -> tuple[dns.Message, tuple[str, int]]:
    """
    Ask C{servers} for C{qname}/C{qtype}; return the first reply that is
    an answer (NOERROR or NXDOMAIN) and the server that gave it.

    Each of C{retries + 1} rounds asks every server still in the running
    in turn, waiting C{timeout} seconds each (as resolv.conf's attempts and
    timeout do); a server that refused or answered with an error code is
    not asked again. C{name} is the name as the user wrote it, for errors.
    C{upstreams} holds the UDP sockets to share (by default, this call's own).
    """
    if upstreams is None:
        upstreams = Upstreams(reactor)
    sent = dns.Message(dns.randomSource(), recDes=1)
    sent.queries = [dns.Query(qname, qtype, dns.IN)]
    failures: dict[tuple[str, int], str] = {}
    running = list(servers)
    for _ in range(retries + 1):
        for server in list(running):
            try:
                reply = await _ask(reactor, upstreams, server, sent, tcp, timeout)
            except _NoReply:
                continue
            except _Failed as e:
                failures[server] = str(e)
                running.remove(server)
                continue
            if reply.rCode in (dns.OK, dns.ENAME):
                return reply, server
            failures[server] = _RCODES.get(reply.rCode, f"response code {reply.rCode}")
            running.remove(server)
        if not running:
            break
    for server in servers:
        if server in failures:
            raise UserError(f"lookup {name} on {join_host_port(*server)}: {failures[server]}")
    where = ", ".join(join_host_port(*s) for s in servers)
    tries = retries + 1
    raise UserError(
        f"lookup {name} on {where}: timed out ({tries} {'try' if tries == 1 else 'tries'} of {timeout:g}s)"
    )


# --- what an answer means ---------------------------------------------------


def _chain(reply: dns.Message, qname: bytes, qtype: int) -> list[dns.RRHeader]:
    """
    The answer records that belong to the question: those of C{qname} and
    of the CNAMEs it leads to, in the order the server gave them. Records
    of other names are not what was asked, so they are dropped.
    """
    owners = {qname.lower()}
    if qtype != dns.CNAME:
        for _ in range(len(reply.answers)):
            grown = set(owners)
            for rr in reply.answers:
                if rr.type == dns.CNAME and rr.name.name.lower() in owners:
                    grown.add(rr.payload.name.name.lower())
            if grown == owners:
                break
            owners = grown
    return [
        rr
        for rr in reply.answers
        if rr.cls == dns.IN and rr.name.name.lower() in owners and rr.type in (qtype, dns.CNAME)
    ]


def _answer(rr: dns.RRHeader) -> Answer:
    return Answer(format_name(rr.name), _TYPE_NAMES.get(rr.type, str(rr.type)), rr.ttl, format_record(rr.payload))


# --- the system's configuration ------------------------------------------------


def system_servers(resolv_conf: str = RESOLV_CONF) -> list[tuple[str, int]]:
    """
    The C{nameserver} lines of C{resolv_conf}; without any (or without the
    file), the local server on 127.0.0.1 and ::1, as glibc and Go assume.
    """
    servers = []
    try:
        with open(resolv_conf, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            host = fields[1].split("%", 1)[0]  # a zone index is for link-local only
            if is_ip(host):
                servers.append((host, dns.PORT))
    return servers or [("127.0.0.1", dns.PORT), ("::1", dns.PORT)]


def hosts_addresses(hosts_file: str, qname: bytes, qtypes: Sequence[int]) -> list[Answer]:
    """The hosts file's addresses for C{qname} of the given types (A, AAAA)."""
    found = hosts.searchFileForAll(FilePath(hosts_file), qname)
    owner = format_labels([label for label in qname.split(b".") if label])
    answers = []
    for qtype in qtypes:
        for address in found:
            version = ipaddress.ip_address(address).version
            if (qtype, version) in ((dns.A, 4), (dns.AAAA, 6)):
                answers.append(Answer(owner, _TYPE_NAMES[qtype], 0, str(ipaddress.ip_address(address))))
    return answers


def hosts_names(hosts_file: str, address: str) -> list[Answer]:
    """The hosts file's names for C{address}, as PTR answers."""
    wanted = ipaddress.ip_address(address)
    try:
        lines = FilePath(hosts_file).getContent().splitlines()
    except OSError:
        return []
    answers = []
    for line in lines:
        fields = line.split(b"#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            if ipaddress.ip_address(fields[0].decode("ascii")) != wanted:
                continue
        except (UnicodeDecodeError, ValueError):
            continue
        for name in fields[1:]:
            answers.append(Answer(wanted.reverse_pointer + ".", "PTR", 0, format_labels(name.split(b"."))))
    return answers


# --- the API ------------------------------------------------------------------


async def query(
    reactor,
    name: str,
    rrtype: str = "A",
    servers: Sequence[tuple[str, int]] | None = None,
    tcp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    resolv_conf: str = RESOLV_CONF,
    hosts_file: str = HOSTS_FILE,
    upstreams: Upstreams | None = None,
) -> Result:
    """
    Look C{name} up. C{rrtype} is a key of L{TYPES}, L{HOST} (A and AAAA
    addresses, CNAMEs followed) or L{IP} (the names of an address).
    C{servers} are (IP, port) pairs asked in order; None means the
    system's resolver: the hosts file first (A, AAAA and addresses' names),
    then the servers of C{resolv_conf}. C{upstreams}: the UDP sockets to
    share with other lookups (one per server; by default this call's own).

    @raise UserError: with the line to show, e.g. C{lookup NAME: no such
        host}, C{lookup NAME: no MX record}, C{Not a valid IP address!}.
    """
    rrtype = rrtype.upper()
    use_hosts = servers is None
    if servers is None:
        servers = system_servers(resolv_conf)
    shown = rrtype
    if rrtype == IP:
        if not is_ip(name):
            raise UserError("Not a valid IP address!")
        rrtype = shown = "PTR"
    elif rrtype == HOST:
        shown = "A,AAAA"
    elif rrtype not in TYPES:
        raise UserError(f"lookup {name}: unknown record type {rrtype}")

    if rrtype == "PTR" and is_ip(name):
        if use_hosts:
            answers = hosts_names(hosts_file, name)
            if answers:
                return Result(name, shown, hosts_file, answers)
        qname = reverse_name(name).encode("ascii")
    else:
        qname = encode_name(name)

    qtypes = [dns.A, dns.AAAA] if rrtype == HOST else [TYPES[rrtype]]
    if use_hosts and set(qtypes) <= {dns.A, dns.AAAA}:
        answers = hosts_addresses(hosts_file, qname, qtypes)
        if answers:
            return Result(name, shown, hosts_file, answers)

    if upstreams is None:
        upstreams = Upstreams(reactor)  # A and AAAA of `host` share it
    args = (servers, tcp, timeout, retries, upstreams)
    if rrtype == HOST:
        return await _host(reactor, name, qname, shown, *args)
    reply, server = await exchange(reactor, name, qname, qtypes[0], *args)
    if reply.rCode == dns.ENAME:
        raise UserError(f"lookup {name}: no such host")
    records = _chain(reply, qname, qtypes[0])
    if not records:
        raise UserError(f"lookup {name}: no {rrtype} record")
    return Result(name, shown, join_host_port(*server), [_answer(rr) for rr in records])


async def _host(reactor, name: str, qname: bytes, shown: str, *args) -> Result:
    """A and AAAA at once; CNAMEs that leave the reply are asked for in turn."""

    async def addresses(qtype: int) -> tuple[list[Answer], str, bool]:
        target = qname
        for _ in range(_MAX_CNAME_QUERIES):
            reply, server = await exchange(reactor, name, target, qtype, *args)
            if reply.rCode == dns.ENAME:
                return [], join_host_port(*server), False
            records = _chain(reply, target, qtype)
            found = [_answer(rr) for rr in records if rr.type == qtype]
            cnames = [rr for rr in records if rr.type == dns.CNAME]
            if found or not cnames:
                return found, join_host_port(*server), True
            # The chain leaves what this server answered: follow its end.
            ends = {rr.payload.name.name.lower() for rr in cnames} - {rr.name.name.lower() for rr in cnames}
            if len(ends) != 1:
                return [], join_host_port(*server), True
            target = ends.pop()
        raise UserError(f"lookup {name}: too many CNAMEs")

    # Both to the end, even when one fails, so no socket outlives the call.
    outcomes = await defer.DeferredList(
        [defer.ensureDeferred(addresses(dns.A)), defer.ensureDeferred(addresses(dns.AAAA))],
        consumeErrors=True,
    )
    for ok, value in outcomes:
        if not ok:
            value.raiseException()
    (v4, server4, exists4), (v6, server6, exists6) = (value for _, value in outcomes)
    if not v4 and not v6:
        if not exists4 and not exists6:
            raise UserError(f"lookup {name}: no such host")
        raise UserError(f"lookup {name}: no A or AAAA record")
    return Result(name, shown, server4 if v4 else server6, v4 + v6)


async def lookup(
    reactor,
    name: str,
    rrtype: str = "A",
    servers: Sequence[tuple[str, int]] | None = None,
    **options,
) -> list[Answer]:
    """L{query}'s answers only (for callers that do not show the server)."""
    return (await query(reactor, name, rrtype, servers, **options)).answers
