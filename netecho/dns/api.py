"""
Lookups as callers use them: L{query} (the answer, the reply's rcode,
flags, authority and additional sections, the query time) and L{lookup}
(the answers only), with the system's configuration (resolv.conf's
servers, the hosts file) when no server is given. Every failure a user can
act on is a L{UserError} with one line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Sequence

from twisted.internet import defer
from twisted.names import dns, hosts
from twisted.python.filepath import FilePath

from netecho.address import is_ip, join_host_port
from netecho.dns.names import format_labels, format_name, labels_of, parse_name, reverse_name
from netecho.dns.text import NOT_ASKED, flags, format_rdata, rcode_name, type_code, type_name
from netecho.dns.wire import (
    DEFAULT_BUFSIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    OPT,
    Exchange,
    QuerySettings,
    Upstreams,
    exchange,
    rcode_of,
)
from netecho.errors import UserError

__all__ = [
    "Answer", "Result", "NegativeAnswer", "Upstreams", "QuerySettings", "query", "lookup", "system_servers",
    "hosts_addresses", "hosts_names", "HOST", "IP", "DEFAULT_TIMEOUT", "DEFAULT_RETRIES", "DEFAULT_BUFSIZE",
]

RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"

#: Pseudo-types: C{HOST} is A and AAAA with CNAMEs followed (addresses
#: only); C{IP} is PTR of an address, refusing anything else.
HOST = "HOST"
IP = "IP"

RRSIG = 46

# How many CNAMEs `host` follows with new queries (a loop must end).
_MAX_CNAME_QUERIES = 8


@dataclass(frozen=True)
class Answer:
    """One record: C{data} is what C{dig +short} prints for it."""

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
    hosts file's path) and the answers in the order the server gave them;
    C{rcode}, C{flags}, C{authority} and C{additional} (OPT left out) of
    C{reply}, C{exchanges} every reply it took (two for L{HOST}, none from
    the hosts file).
    """

    query: str
    type: str
    server: str
    answers: list[Answer]
    rcode: str = "NOERROR"
    flags: list[str] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    reply: dns.Message | None = None

    @property
    def authority(self) -> list[Answer]:
        """The reply's authority section (formatted when asked: bulk lookups rarely need it)."""
        return [] if self.reply is None else [_answer(rr) for rr in self.reply.authority]

    @property
    def additional(self) -> list[Answer]:
        """The reply's additional section, without EDNS's OPT pseudo-record."""
        return [] if self.reply is None else [_answer(rr) for rr in self.reply.additional if rr.type != OPT]

    @property
    def query_time_ms(self) -> float:
        """Milliseconds of the slowest reply (0 from the hosts file)."""
        return round(max((e.query_time for e in self.exchanges), default=0.0) * 1000, 3)

    def as_json(self) -> dict:
        """The object C{--json} prints."""
        return {
            "query": self.query,
            "type": self.type,
            "server": self.server,
            "rcode": self.rcode,
            "flags": self.flags,
            "answers": [a.as_json() for a in self.answers],
            "authority": [a.as_json() for a in self.authority],
            "additional": [a.as_json() for a in self.additional],
            "query_time_ms": self.query_time_ms,
        }

    def lines(self) -> list[str]:
        """The plain output, one answer a line (C{dig +short})."""
        return [a.data for a in self.answers]


class NegativeAnswer(UserError):
    """
    A lookup whose server answered that there is nothing (NXDOMAIN, or no
    record of that type): the one line to show, and C{result}, the
    L{Result} with no answers (its rcode, authority section with the SOA,
    the replies) for C{--json} and C{--stats}.
    """

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


# --- what an answer means ---------------------------------------------------


def _key(labels: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(label.lower() for label in labels)


def _chain(reply: dns.Message, labels: Sequence[bytes], qtype: int, dnssec: bool) -> list[dns.RRHeader]:
    """
    The answer records that belong to the question: those of the name
    asked and of the CNAMEs it leads to, and the DNAMEs of their ancestors
    that made those CNAMEs (as dig +short shows them), in the order the
    server gave them (with their RRSIGs when C{dnssec}). Records of other
    names are not what was asked, so they are dropped.
    """
    owners = {_key(labels)}
    if qtype not in (dns.CNAME, dns.ALL_RECORDS):
        for _ in range(len(reply.answers)):
            grown = set(owners)
            for rr in reply.answers:
                if rr.type == dns.CNAME and _key(labels_of(rr.name)) in owners:
                    grown.add(_key(labels_of(rr.payload.name)))
            if grown == owners:
                break
            owners = grown
    wanted = {qtype, dns.CNAME}

    def under_dname(owner: tuple[bytes, ...]) -> bool:
        # A DNAME of an ancestor of a name of the chain made its CNAME (RFC 6672): dig shows it first.
        return any(len(name) > len(owner) and name[-len(owner):] == owner for name in owners)

    def belongs(rr: dns.RRHeader) -> bool:
        if rr.cls != dns.IN:
            return False
        key = _key(labels_of(rr.name))
        if rr.type == dns.DNAME and under_dname(key):
            return True
        if key not in owners:
            return False
        if qtype == dns.ALL_RECORDS or rr.type in wanted:
            return True
        # An RRSIG's first two bytes name the type it covers.
        return dnssec and rr.type == RRSIG and int.from_bytes(getattr(rr, "rdata", b"")[:2], "big") in wanted

    return [rr for rr in reply.answers if belongs(rr)]


def _answer(rr: dns.RRHeader) -> Answer:
    return Answer(format_name(rr.name), type_name(rr.type), rr.ttl,
                  format_rdata(rr.type, rr.payload, getattr(rr, "rdata", None)))


def _result(name: str, shown: str, found: Exchange, answers: list[Answer], exchanges: list[Exchange]) -> Result:
    reply = found.reply
    return Result(
        name, shown, join_host_port(*found.server), answers,
        rcode=rcode_name(rcode_of(reply)), flags=flags(reply), exchanges=exchanges, reply=reply,
    )


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


def hosts_addresses(hosts_file: str, labels: Sequence[bytes], qtypes: Sequence[int]) -> list[Answer]:
    """The hosts file's addresses for the name of C{labels} of the given types (A, AAAA)."""
    if any(b"." in label for label in labels):
        return []  # no hosts-file name has a dot inside a label
    found = hosts.searchFileForAll(FilePath(hosts_file), b".".join(labels))
    owner = format_labels(labels)
    answers = []
    for qtype in qtypes:
        for address in found:
            version = ipaddress.ip_address(address).version
            if (qtype, version) in ((dns.A, 4), (dns.AAAA, 6)):
                answers.append(Answer(owner, type_name(qtype), 0, str(ipaddress.ip_address(address))))
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


def parse_type(rrtype: str) -> str | int:
    """
    C{rrtype} as L{query} takes it: L{HOST}, L{IP}, or a type code (any
    IANA mnemonic or C{TYPEnnn}, any case).

    @raise UserError: for anything else, or a zone transfer.
    """
    upper = rrtype.upper()
    if upper in (HOST, IP):
        return upper
    if upper in NOT_ASKED:
        raise UserError(f"lookup: {upper} is a zone transfer, not a lookup")
    code = type_code(upper)
    if code is None:
        raise UserError(f"lookup: unknown record type {rrtype}")
    return code


def type_label(rrtype: str) -> str:
    """How a L{Result} names the type asked (C{A,AAAA} for L{HOST}, C{PTR} for L{IP}, C{SOA} for C{TYPE6})."""
    kind = parse_type(rrtype)
    return {HOST: "A,AAAA", IP: "PTR"}.get(kind) or type_name(kind)


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
    edns: int | None = DEFAULT_BUFSIZE,
    dnssec: bool = False,
    tls=None,
) -> Result:
    """
    Look C{name} up (dig's escapes and IDNA accepted, see
    L{netecho.dns.names.parse_name}). C{rrtype} is a record type by name
    or number (C{MX}, C{TYPE65}, C{ANY}), L{HOST} (A and AAAA addresses,
    CNAMEs followed) or L{IP} (the names of an address). C{servers} are
    (IP, port) pairs asked in order; None means the system's resolver: the
    hosts file first (A, AAAA and addresses' names), then the servers of
    C{resolv_conf}. C{upstreams}: the UDP sockets to share with other
    lookups (by default this call's own). C{edns}: the EDNS0 UDP payload
    size to advertise, None for no EDNS; C{dnssec} sets the DO bit and
    keeps the RRSIGs of the answers. C{tls}: TLS settings by server IP
    (see L{QuerySettings}); every query then goes over TLS.

    @raise NegativeAnswer: (a L{UserError}) the server answered with no
        record, C{lookup NAME: no such host}, C{lookup NAME: no MX record};
        its C{result} has the reply's rcode and authority section.
    @raise UserError: with the line to show, e.g. C{Not a valid IP address!},
        C{... timed out ...}.
    """
    kind = parse_type(rrtype)
    if dnssec and edns is None:
        edns = DEFAULT_BUFSIZE  # DO lives in the OPT record
    settings = QuerySettings(tcp=tcp, timeout=timeout, retries=retries, edns=edns, dnssec=dnssec, tls=tls)
    use_hosts = servers is None
    if servers is None:
        servers = system_servers(resolv_conf)
    shown = type_label(rrtype)
    if kind == IP:
        if not is_ip(name):
            raise UserError("Not a valid IP address!")
        kind = dns.PTR

    if kind == dns.PTR and is_ip(name):
        if use_hosts:
            answers = hosts_names(hosts_file, name)
            if answers:
                return Result(name, shown, hosts_file, answers)
        labels = reverse_name(name)
    else:
        labels = parse_name(name)

    qtypes = [dns.A, dns.AAAA] if kind == HOST else [kind]
    if use_hosts and set(qtypes) <= {dns.A, dns.AAAA}:
        answers = hosts_addresses(hosts_file, labels, qtypes)
        if answers:
            return Result(name, shown, hosts_file, answers)

    if upstreams is None:
        upstreams = Upstreams(reactor)  # A and AAAA of `host` share it
    if kind == HOST:
        return await _host(reactor, name, labels, shown, servers, settings, upstreams)
    found = await exchange(reactor, name, labels, kind, servers, settings, upstreams)
    if found.reply.rCode == dns.ENAME:
        raise NegativeAnswer(f"lookup {name}: no such host", _result(name, shown, found, [], [found]))
    records = _chain(found.reply, labels, kind, dnssec)
    if not records:
        raise NegativeAnswer(f"lookup {name}: no {shown} record", _result(name, shown, found, [], [found]))
    return _result(name, shown, found, [_answer(rr) for rr in records], [found])


async def _host(reactor, name: str, labels: Sequence[bytes], shown: str, servers, settings: QuerySettings,
                upstreams: Upstreams) -> Result:
    """A and AAAA at once; CNAMEs that leave the reply are asked for in turn."""
    exchanges: list[Exchange] = []

    async def addresses(qtype: int) -> tuple[list[Answer], Exchange, bool]:
        target = labels
        for _ in range(_MAX_CNAME_QUERIES):
            found = await exchange(reactor, name, target, qtype, servers, settings, upstreams)
            exchanges.append(found)
            if found.reply.rCode == dns.ENAME:
                return [], found, False
            records = _chain(found.reply, target, qtype, settings.dnssec)
            answers = [_answer(rr) for rr in records if rr.type == qtype]
            cnames = [rr for rr in records if rr.type == dns.CNAME]
            if answers or not cnames:
                return answers, found, True
            # The chain leaves what this server answered: follow its end.
            ends = {_key(labels_of(rr.payload.name)) for rr in cnames} - {_key(labels_of(rr.name)) for rr in cnames}
            if len(ends) != 1:
                return [], found, True
            target = tuple(next(labels_of(rr.payload.name) for rr in cnames
                                if _key(labels_of(rr.payload.name)) in ends))
        raise UserError(f"lookup {name}: too many CNAMEs")

    # Both to the end, even when one fails, so no socket outlives the call.
    outcomes = await defer.DeferredList(
        [defer.ensureDeferred(addresses(dns.A)), defer.ensureDeferred(addresses(dns.AAAA))],
        consumeErrors=True,
    )
    for ok, value in outcomes:
        if not ok:
            value.raiseException()
    (v4, found4, exists4), (v6, found6, exists6) = (value for _, value in outcomes)
    if not v4 and not v6:
        negative = _result(name, shown, found4, [], exchanges)
        if not exists4 and not exists6:
            raise NegativeAnswer(f"lookup {name}: no such host", negative)
        raise NegativeAnswer(f"lookup {name}: no A or AAAA record", negative)
    return _result(name, shown, found4 if v4 else found6, v4 + v6, exchanges)


async def lookup(
    reactor,
    name: str,
    rrtype: str = "A",
    servers: Sequence[tuple[str, int]] | None = None,
    **options,
) -> list[Answer]:
    """L{query}'s answers only (for callers that do not show the server)."""
    return (await query(reactor, name, rrtype, servers, **options)).answers
