"""
netecho.dns (names, text, wire, api) and netecho.cli.lookup: formatting,
checks, and in-process name servers on 127.0.0.1 that misbehave on purpose
(as dnspython's tests do).
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import sys
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.names import dns
from twisted.protocols import basic
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from netecho.dns import api, names, text, wire
from netecho.cli import main
from netecho.address import ipv6_available
from netecho.cli import lookup as cli
from netecho.errors import UserError

# --- fake servers -------------------------------------------------------------


def reply_to(
    query: dns.Message,
    answers=(),
    rcode: int = dns.OK,
    id: int | None = None,
    qr: int = 1,
    question: dns.Query | None | str = "same",
    trunc: int = 0,
) -> bytes:
    """The bytes of a reply to C{query}, wrong in whatever way is asked."""
    m = dns.Message(query.id if id is None else id, answer=qr, rCode=rcode, trunc=trunc, auth=1)
    if question == "same":
        m.queries = list(query.queries)
    elif question is not None:
        m.queries = [question]
    m.answers = list(answers)
    return m.toStr()


def rr(name: str, payload) -> dns.RRHeader:
    return dns.RRHeader(name, payload.TYPE, dns.IN, 300, payload)


def a_records(query: dns.Message, *addresses: str) -> list[dns.RRHeader]:
    return [rr(query.queries[0].name.name, dns.Record_A(a)) for a in addresses]


class FakeServer(protocol.DatagramProtocol):
    """Answers each query with what C{behave(query)} returns (a list of datagrams)."""

    noisy = False

    def __init__(self, behave) -> None:
        self.behave = behave
        self.queries: list[dns.Message] = []
        self.raw: list[bytes] = []
        self.sources: set = set()

    def datagramReceived(self, data, addr) -> None:
        m = dns.Message()
        m.fromStr(data)
        self.queries.append(m)
        self.raw.append(data)
        self.sources.add(addr)
        for datagram in self.behave(m):
            self.transport.write(datagram, addr)


class FakeTCP(basic.Int16StringReceiver):
    def stringReceived(self, data) -> None:
        m = dns.Message()
        m.fromStr(data)
        self.factory.queries.append(m)
        for reply in self.factory.behave(m):
            self.sendString(reply)


def serve(testcase: TestCase, behave, tcp_behave=None, host: str = "127.0.0.1") -> tuple[FakeServer, tuple[str, int]]:
    """A fake UDP server (and a TCP one on the same port) on C{host}, closed at cleanup."""
    udp = FakeServer(behave)
    for _ in range(20):
        port = reactor.listenUDP(0, udp, interface=host)
        number = port.getHost().port
        testcase.addCleanup(port.stopListening)
        if tcp_behave is None:
            return udp, (host, number)
        factory = protocol.Factory.forProtocol(FakeTCP)
        factory.behave = tcp_behave
        factory.queries = udp.tcp_queries = []
        try:
            listening = reactor.listenTCP(number, factory, interface=host)
        except Exception:
            continue  # that port number is taken for TCP: pick another
        testcase.addCleanup(listening.stopListening)
        return udp, (host, number)
    raise RuntimeError("no port free for both UDP and TCP")


def opt_of(query: dns.Message):
    """The OPT record of C{query}, or None."""
    found = [rr for rr in query.additional if rr.type == 41]
    return found[0] if found else None


def edns_intolerant(answer):
    """An old server: FORMERR (no question, no OPT) to any query with EDNS, C{answer(query)} otherwise."""
    def behave(q):
        if opt_of(q) is not None:
            return [reply_to(q, rcode=dns.EFORMAT, question=None)]
        return [reply_to(q, answer(q))]
    return behave


def overrun(reply: bytes) -> bytes:
    """C{reply} (one A record, last) with that record's rdlength running past the end."""
    return reply[:-6] + struct.pack("!H", 200) + reply[-4:]


def miscounted(reply: bytes) -> bytes:
    """C{reply} whose header counts one more answer than it holds."""
    (answers,) = struct.unpack("!H", reply[6:8])
    return reply[:6] + struct.pack("!H", answers + 1) + reply[8:]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAST = {"timeout": 0.3, "retries": 1}


# --- formatting -----------------------------------------------------------------


class FormatTests(SynchronousTestCase):
    def test_txt_escapes_as_dig(self):
        self.assertEqual(
            text.format_txt([b"hello world", b'with "quotes"', b"back\\slash", "café".encode(), b"tab\tx", b""]),
            r'"hello world" "with \"quotes\"" "back\\slash" "caf\195\169" "tab\009x" ""',
        )

    def test_names_escape_specials_and_bytes(self):
        self.assertEqual(
            names.format_labels([b"a.b", b"sp ace", b"q\"", b"\x00", b"ok-_", b"net"]),
            'a\\.b.sp\\032ace.q\\".\\000.ok-_.net.',
        )
        self.assertEqual(names.format_labels([]), ".")

    def test_records(self):
        fmt = text.format_record
        self.assertEqual(fmt(dns.Record_A("192.0.2.1")), "192.0.2.1")
        self.assertEqual(fmt(dns.Record_AAAA("2001:db8:0:0::1")), "2001:db8::1")
        self.assertEqual(fmt(dns.Record_MX(10, b"mail.example")), "10 mail.example.")
        self.assertEqual(fmt(dns.Record_NS(b"ns.example")), "ns.example.")
        self.assertEqual(fmt(dns.Record_SRV(10, 60, 5060, b"sip.example")), "10 60 5060 sip.example.")
        self.assertEqual(
            fmt(dns.Record_SOA(b"ns.example", b"h.example", serial=1, refresh=2, retry=3, expire=4, minimum=5)),
            "ns.example. h.example. 1 2 3 4 5",
        )

    def test_dot_inside_a_label_kept_from_the_wire(self):
        # SOA rname "host\.master.example." as a server sends it: one label "host.master".
        query = dns.Message(7, recDes=1)
        query.queries = [dns.Query(b"example", dns.SOA)]
        rdata = b"\x02ns\x07example\x00" + b"\x0bhost.master\x07example\x00" + struct.pack("!LlllL", 1, 2, 3, 4, 5)
        owner = b"\x07example\x00"
        data = (
            struct.pack("!HBBHHHH", 7, 0x81, 0x80, 1, 1, 0, 0)
            + owner + struct.pack("!HH", dns.SOA, dns.IN)
            + b"\xc0\x0c" + struct.pack("!HHIH", dns.SOA, dns.IN, 60, len(rdata)) + rdata
        )
        reply = wire.parse_reply(data, query)
        self.assertEqual(
            text.format_record(reply.answers[0].payload), "ns.example. host\\.master.example. 1 2 3 4 5"
        )


class NameTests(SynchronousTestCase):
    def test_idna(self):
        self.assertEqual(names.encode_name("bücher.netecho.test"), b"xn--bcher-kva.netecho.test")
        self.assertEqual(names.encode_name("www.example."), b"www.example")
        self.assertEqual(names.encode_name("_sip._tcp.example"), b"_sip._tcp.example")

    def test_too_long(self):
        e = self.assertRaises(UserError, names.encode_name, "a" * 64 + ".example")
        self.assertIn("label longer than 63 bytes", str(e))
        name = ".".join(["a" * 63] * 4)  # 255 characters
        e = self.assertRaises(UserError, names.encode_name, name)
        self.assertEqual(str(e), f"lookup {name}: name longer than 253 characters")
        self.assertEqual(len(names.encode_name(name[:253])), 253)

    def test_empty_label(self):
        self.assertIn("empty label", str(self.assertRaises(UserError, names.encode_name, "a..b")))

    def test_reverse(self):
        self.assertEqual(names.reverse_name("192.0.2.1"), (b"1", b"2", b"0", b"192", b"in-addr", b"arpa"))
        self.assertEqual(names.reverse_name("2001:db8::1")[-10:],
                         (b"8", b"b", b"d", b"0", b"1", b"0", b"0", b"2", b"ip6", b"arpa"))


class ReplyCheckTests(SynchronousTestCase):
    def setUp(self):
        self.sent = dns.Message(1234, recDes=1)
        self.sent.queries = [dns.Query(b"www.example", dns.A)]

    def parse(self, data):
        return wire.parse_reply(data, self.sent)

    def test_matching_reply_case_insensitive(self):
        data = reply_to(self.sent, question=dns.Query(b"WWW.Example", dns.A))
        self.assertIsNotNone(self.parse(data))

    def test_rejected(self):
        self.assertIsNone(self.parse(reply_to(self.sent, id=4321)))
        self.assertIsNone(self.parse(reply_to(self.sent, qr=0)))
        self.assertIsNone(self.parse(reply_to(self.sent, question=dns.Query(b"evil.example", dns.A))))
        self.assertIsNone(self.parse(reply_to(self.sent, question=dns.Query(b"www.example", dns.AAAA))))
        self.assertIsNone(self.parse(reply_to(self.sent, question=None)))  # NOERROR needs the question
        self.assertIsNone(self.parse(b"\x04\xd2junk"))
        self.assertIsNone(self.parse(b""))

    def test_records_must_fit_the_message(self):
        good = reply_to(self.sent, a_records(self.sent, "192.0.2.1"))
        self.assertIsNotNone(wire.parse_reply(good, self.sent))
        self.assertIsNone(wire.parse_reply(overrun(good), self.sent))
        self.assertIsNone(wire.parse_reply(miscounted(good), self.sent))
        # A record whose data is longer than its type's: malformed too.
        longer = good[:-6] + struct.pack("!H", 5) + good[-4:] + b"\x00"
        self.assertIsNone(wire.parse_reply(longer, self.sent))
        # A truncated reply is used for its TC flag only: a cut record is fine there.
        cut = dns.Message(self.sent.id, answer=1, trunc=1)
        cut.queries = list(self.sent.queries)
        cut.answers = a_records(self.sent, "192.0.2.1")
        self.assertTrue(wire.parse_reply(cut.toStr()[:-2], self.sent).trunc)

    def test_authority_and_additional_checked_at_once_decoded_when_read(self):
        m = dns.Message(self.sent.id, answer=1, auth=1)
        m.queries = list(self.sent.queries)
        m.answers = a_records(self.sent, "192.0.2.1")
        m.additional = [rr(b"ns.example", dns.Record_A("192.0.2.53"))]
        good = m.toStr()
        reply = wire.parse_reply(good, self.sent)
        self.assertEqual(reply._lazy["additional"][1], 1)  # not decoded yet
        self.assertEqual([r.payload.dottedQuad() for r in reply.additional], ["192.0.2.53"])
        # An additional record running past the end: the whole reply is malformed.
        self.assertIsNone(wire.parse_reply(overrun(good), self.sent))
        self.assertIsNone(wire.parse_reply(good[:-1], self.sent))
        # One whose data does not fit its type (an A of 5 bytes) is left out when read.
        odd = good[:-6] + struct.pack("!H", 5) + good[-4:] + b"\x00"
        reply = wire.parse_reply(odd, self.sent)
        self.assertEqual((reply.answers[0].payload.dottedQuad(), reply.additional), ("192.0.2.1", []))

    def test_extended_rcode_from_the_opt_record(self):
        m = dns.Message(self.sent.id, answer=1, rCode=0)
        m.queries = list(self.sent.queries)
        m.additional = [dns.RRHeader(b"", 41, 1232, 1 << 24, dns.UnknownRecord(b""))]  # BADVERS = 16
        reply = wire.parse_reply(m.toStr(), self.sent)
        self.assertEqual(wire.rcode_of(reply), 16)

    def test_error_without_question_accepted(self):
        self.assertIsNotNone(self.parse(reply_to(self.sent, rcode=dns.EFORMAT, question=None)))


class SystemConfigTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-lookup-")

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_resolv_conf(self):
        path = self.write("resolv.conf", "# x\nsearch example\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
                          "nameserver junk\noptions ndots:2\n")
        self.assertEqual(api.system_servers(path), [("192.0.2.53", 53), ("fe80::1", 53)])

    def test_resolv_conf_missing_or_empty(self):
        default = [("127.0.0.1", 53), ("::1", 53)]
        self.assertEqual(api.system_servers(os.path.join(self.dir, "none")), default)
        self.assertEqual(api.system_servers(self.write("empty", "")), default)

    def test_hosts_file(self):
        path = self.write("hosts", "192.0.2.7 db.example db # comment\n2001:db8::7 db.example\n192.0.2.8 other\n")
        self.assertEqual(
            [(a.type, a.data) for a in api.hosts_addresses(path, (b"DB", b"example"), [dns.A, dns.AAAA])],
            [("A", "192.0.2.7"), ("AAAA", "2001:db8::7")],
        )
        self.assertEqual(
            [(a.name, a.data) for a in api.hosts_names(path, "192.0.2.7")],
            [("7.2.0.192.in-addr.arpa.", "db.example."), ("7.2.0.192.in-addr.arpa.", "db.")],
        )


# --- against fake servers ----------------------------------------------------------


class QueryTests(TestCase):
    async def test_answers_and_json(self):
        server, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1", "192.0.2.2"))])
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1", "192.0.2.2"])
        shown = result.as_json()
        self.assertIsInstance(shown.pop("query_time_ms"), float)
        self.assertEqual(
            shown,
            {"query": "www.example", "type": "A", "server": f"127.0.0.1:{address[1]}",
             "rcode": "NOERROR", "flags": ["qr", "aa"],
             "answers": [{"name": "www.example.", "type": "A", "ttl": 300, "data": "192.0.2.1"},
                         {"name": "www.example.", "type": "A", "ttl": 300, "data": "192.0.2.2"}],
             "authority": [], "additional": []},
        )
        self.assertEqual(len(server.queries), 1)
        self.assertEqual(server.queries[0].recDes, 1)

    async def test_lookup_returns_answers(self):
        _, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        answers = await api.lookup(reactor, "www.example", "a", servers=[address], **FAST)
        self.assertEqual(answers, [api.Answer("www.example.", "A", 300, "192.0.2.1")])

    async def test_silent_times_out_in_bounded_time(self):
        server, address = serve(self, lambda q: [])
        start = reactor.seconds()
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, "www.example", "A", [address], timeout=0.2, retries=2)
        elapsed = reactor.seconds() - start
        self.assertEqual(
            str(caught.exception), f"lookup www.example on 127.0.0.1:{address[1]}: timed out (3 tries of 0.2s)"
        )
        self.assertEqual(len(server.queries), 3)
        self.assertTrue(0.55 <= elapsed < 2, elapsed)

    async def assertFails(self, behave, message, rrtype="A", name="www.example"):
        _, address = serve(self, behave)
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, name, rrtype, [address], **FAST)
        self.assertEqual(str(caught.exception), message.replace("SERVER", f"127.0.0.1:{address[1]}"))

    async def test_servfail(self):
        await self.assertFails(lambda q: [reply_to(q, rcode=dns.ESERVER)],
                               "lookup www.example on SERVER: server failure (SERVFAIL)")

    async def test_refused(self):
        await self.assertFails(lambda q: [reply_to(q, rcode=dns.EREFUSED)],
                               "lookup www.example on SERVER: query refused (REFUSED)")

    async def test_formerr_without_question(self):
        await self.assertFails(lambda q: [reply_to(q, rcode=dns.EFORMAT, question=None)],
                               "lookup www.example on SERVER: format error (FORMERR)")

    async def test_nxdomain(self):
        await self.assertFails(lambda q: [reply_to(q, rcode=dns.ENAME)], "lookup www.example: no such host")

    async def test_no_record_of_that_type(self):
        await self.assertFails(lambda q: [reply_to(q)], "lookup www.example: no MX record", rrtype="MX")

    async def test_wrong_question_then_right_one(self):
        evil = dns.Query(b"evil.example", dns.A)
        server, address = serve(self, lambda q: [
            reply_to(q, [rr(b"evil.example", dns.Record_A("203.0.113.66"))], question=evil),
            reply_to(q, a_records(q, "192.0.2.1")),
        ])
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1"])

    async def test_wrong_id_and_qr0_and_junk_ignored(self):
        server, address = serve(self, lambda q: [
            reply_to(q, a_records(q, "203.0.113.1"), id=(q.id + 1) % 65536),
            reply_to(q, a_records(q, "203.0.113.2"), qr=0),
            b"\x00\x01garbage",
            reply_to(q, a_records(q, "192.0.2.1")),
        ])
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1"])
        self.assertEqual(len(server.queries), 1)

    async def test_records_overrunning_the_message_ignored(self):
        """Issue 13, item 15: a record whose data runs past the packet's end is malformed."""
        server, address = serve(self, lambda q: [
            overrun(reply_to(q, a_records(q, "1.2.3.4"))),
            miscounted(reply_to(q, a_records(q, "1.2.3.5"))),
            reply_to(q, a_records(q, "192.0.2.1")),
        ])
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1"])

    async def test_only_overrunning_replies_time_out(self):
        await self.assertFails(
            lambda q: [overrun(reply_to(q, a_records(q, "1.2.3.4")))],
            "lookup www.example on SERVER: timed out (2 tries of 0.3s)",
        )

    async def test_queries_in_flight_share_one_socket(self):
        """Lookups given one L{api.Upstreams} use one UDP socket per server."""
        sources = set()

        def behave(q):
            return [reply_to(q, a_records(q, "192.0.2.1"))]

        server, address = serve(self, behave)
        original = server.datagramReceived
        server.datagramReceived = lambda data, addr: (sources.add(addr), original(data, addr))
        upstreams = api.Upstreams(reactor)
        results = await defer.gatherResults([
            defer.ensureDeferred(api.query(reactor, f"n{i}.example", "A", [address], upstreams=upstreams, **FAST))
            for i in range(50)
        ])
        self.assertEqual({tuple(r.lines()) for r in results}, {("192.0.2.1",)})
        self.assertEqual(len(sources), 1)
        self.assertEqual(upstreams._sockets, {})  # closed with the last query

    async def test_edns0_1232_by_default(self):
        server, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        await api.query(reactor, "www.example", "A", [address], **FAST)
        opt = opt_of(server.queries[0])
        self.assertEqual((opt.name.name, opt.cls, opt.ttl), (b"", 1232, 0))  # version 0, DO clear

    async def test_bufsize_dnssec_and_no_edns(self):
        server, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        await api.query(reactor, "www.example", "A", [address], edns=4096, dnssec=True, **FAST)
        await api.query(reactor, "www.example", "A", [address], edns=None, **FAST)
        opt = opt_of(server.queries[0])
        self.assertEqual((opt.cls, opt.ttl & 0x8000), (4096, 0x8000))
        self.assertIsNone(opt_of(server.queries[1]))
        self.assertEqual(server.queries[1].additional, [])

    async def test_edns_intolerant_server_asked_again_without_edns(self):
        server, address = serve(self, edns_intolerant(lambda q: a_records(q, "192.0.2.1")))
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1"])
        self.assertEqual([opt_of(q) is not None for q in server.queries], [True, False])
        self.assertTrue(result.exchanges[0].edns_fallback)

    async def test_formerr_without_edns_too_falls_back_only_once(self):
        await self.assertFails(lambda q: [reply_to(q, rcode=dns.EFORMAT, question=None)],
                               "lookup www.example on SERVER: format error (FORMERR)")
        server, address = serve(self, lambda q: [reply_to(q, rcode=dns.EFORMAT, question=None)])
        with self.assertRaises(UserError):
            await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual([opt_of(q) is not None for q in server.queries], [True, False])

    async def test_formerr_to_a_query_without_edns_is_not_retried(self):
        server, address = serve(self, lambda q: [reply_to(q, rcode=dns.EFORMAT, question=None)])
        with self.assertRaises(UserError):
            await api.query(reactor, "www.example", "A", [address], edns=None, **FAST)
        self.assertEqual(len(server.queries), 1)

    async def test_escaped_name_sent_label_by_label(self):
        server, address = serve(self, lambda q: [])
        with self.assertRaises(UserError):
            await api.query(reactor, "weird\\.dot.example", "A", [address], timeout=0.2, retries=0)
        self.assertIn(b"\x09weird.dot\x07example\x00", server.raw[0])

    async def test_escaped_name_answer_checked_label_by_label(self):
        """A reply for weird.dot.example (three labels) is not one for weird\\.dot.example (two)."""
        def behave(q):
            wrong = dns.Message(q.id, answer=1, auth=1)
            wrong.queries = [dns.Query(b"weird.dot.example", dns.A)]
            wrong.answers = [rr(b"weird.dot.example", dns.Record_A("203.0.113.1"))]
            return [wrong.toStr()]
        server, address = serve(self, behave)
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, "weird\\.dot.example", "A", [address], timeout=0.2, retries=0)
        self.assertIn("timed out", str(caught.exception))

    async def test_any_type_by_number_printed_generic(self):
        def behave(q):
            name = q.queries[0].name.name
            return [reply_to(q, [dns.RRHeader(name, 65534, dns.IN, 60, dns.UnknownRecord(b"\x0a\x00\x00\x01"))])]
        server, address = serve(self, behave)
        result = await api.query(reactor, "x.example", "TYPE65534", [address], **FAST)
        self.assertEqual((result.type, result.lines()), ("TYPE65534", ["\\# 4 0A000001"]))
        self.assertEqual(result.answers[0].type, "TYPE65534")
        self.assertEqual(server.queries[0].queries[0].type, 65534)

    async def test_any_keeps_every_type_of_the_name(self):
        def behave(q):
            name = q.queries[0].name.name
            return [reply_to(q, [rr(name, dns.Record_A("192.0.2.1")), rr(name, dns.Record_MX(10, b"mx.example")),
                                 rr(b"other.example", dns.Record_A("203.0.113.1"))])]
        server, address = serve(self, behave)
        result = await api.query(reactor, "x.example", "any", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1", "10 mx.example."])
        self.assertEqual(server.queries[0].queries[0].type, 255)

    async def test_rrsigs_only_with_dnssec(self):
        rrsig = (struct.pack("!HBBIIIH", dns.A, 13, 2, 300, 1798848000, 1796256000, 1)
                 + b"\x07example\x00" + b"\x00")
        def behave(q):
            name = q.queries[0].name.name
            return [reply_to(q, [rr(name, dns.Record_A("192.0.2.1")),
                                 dns.RRHeader(name, 46, dns.IN, 300, dns.UnknownRecord(rrsig))])]
        _, address = serve(self, behave)
        plain = await api.query(reactor, "x.example", "A", [address], **FAST)
        signed = await api.query(reactor, "x.example", "A", [address], dnssec=True, **FAST)
        self.assertEqual(plain.lines(), ["192.0.2.1"])
        self.assertEqual(signed.lines(), ["192.0.2.1", "A 13 2 300 20270102000000 20261203000000 1 example. AA=="])

    async def test_unknown_type_name_refused(self):
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, "x.example", "BOGUS", [("127.0.0.1", 9)])
        self.assertEqual(str(caught.exception), "lookup: unknown record type BOGUS")

    async def test_json_has_authority_additional_rcode_flags(self):
        def behave(q):
            name = q.queries[0].name.name
            m = dns.Message(q.id, answer=1, auth=1, recDes=1)
            m.queries = list(q.queries)
            m.answers = [rr(name, dns.Record_A("192.0.2.1"))]
            m.authority = [rr(b"example", dns.Record_NS(b"ns.example"))]
            m.additional = [rr(b"ns.example", dns.Record_A("192.0.2.53")),
                            dns.RRHeader(b"", 41, 1232, 0, dns.UnknownRecord(b""))]
            return [m.toStr()]
        _, address = serve(self, behave)
        shown = (await api.query(reactor, "x.example", "A", [address], **FAST)).as_json()
        self.assertEqual((shown["rcode"], shown["flags"]), ("NOERROR", ["qr", "aa", "rd"]))
        self.assertEqual(shown["authority"], [{"name": "example.", "type": "NS", "ttl": 300, "data": "ns.example."}])
        self.assertEqual(shown["additional"], [{"name": "ns.example.", "type": "A", "ttl": 300, "data": "192.0.2.53"}])
        self.assertGreaterEqual(shown["query_time_ms"], 0)

    async def test_only_wrong_replies_time_out(self):
        await self.assertFails(
            lambda q: [reply_to(q, a_records(q, "203.0.113.1"), id=(q.id + 1) % 65536),
                       reply_to(q, a_records(q, "203.0.113.2"), question=dns.Query(b"evil.example"))],
            "lookup www.example on SERVER: timed out (2 tries of 0.3s)",
        )

    async def test_truncated_retried_over_tcp(self):
        server, address = serve(
            self,
            lambda q: [reply_to(q, a_records(q, "203.0.113.9"), trunc=1)],
            tcp_behave=lambda q: [reply_to(q, a_records(q, "192.0.2.1", "192.0.2.2"))],
        )
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual((len(server.queries), len(server.tcp_queries)), (1, 1))
        self.assertEqual(server.tcp_queries[0].id, server.queries[0].id)

    async def test_tcp_wrong_id_ignored(self):
        server, address = serve(
            self,
            lambda q: [],
            tcp_behave=lambda q: [reply_to(q, a_records(q, "203.0.113.1"), id=(q.id + 1) % 65536),
                                  reply_to(q, a_records(q, "192.0.2.1"))],
        )
        result = await api.query(reactor, "www.example", "A", [address], tcp=True, **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1"])
        self.assertEqual((len(server.queries), len(server.tcp_queries)), (0, 1))

    async def test_ipv6_server_udp_and_tcp(self):
        if not ipv6_available():
            raise SkipTest("no IPv6 on this host")
        server, address = serve(
            self,
            lambda q: [reply_to(q, trunc=1)],
            tcp_behave=lambda q: [reply_to(q, a_records(q, "192.0.2.1"))],
            host="::1",
        )
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual((result.server, result.lines()), (f"[::1]:{address[1]}", ["192.0.2.1"]))

    async def test_udp_connection_refused(self):
        port = free_udp_port()
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, "www.example", "A", [("127.0.0.1", port)], **FAST)
        self.assertEqual(str(caught.exception), f"lookup www.example on 127.0.0.1:{port}: connection refused")

    async def test_next_server_after_silence_or_error(self):
        _, silent = serve(self, lambda q: [])
        _, failing = serve(self, lambda q: [reply_to(q, rcode=dns.ESERVER)])
        good, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        result = await api.query(reactor, "www.example", "A", [silent, failing, address], timeout=0.2, retries=0)
        self.assertEqual((result.server, result.lines()), (f"127.0.0.1:{address[1]}", ["192.0.2.1"]))

    async def test_over_long_name_never_sent(self):
        server, address = serve(self, lambda q: [])
        with self.assertRaises(UserError):
            await api.query(reactor, "a" * 300, "A", [address], **FAST)
        self.assertEqual(server.queries, [])

    async def test_idn_sent_as_ace(self):
        server, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.30"))])
        result = await api.query(reactor, "bücher.example", "A", [address], **FAST)
        self.assertEqual(server.queries[0].queries[0].name.name, b"xn--bcher-kva.example")
        self.assertEqual((result.query, result.answers[0].name), ("bücher.example", "xn--bcher-kva.example."))

    async def test_cname_chain_kept_and_strangers_dropped(self):
        def behave(q):
            return [reply_to(q, [
                rr(b"www.example", dns.Record_CNAME(b"web.example")),
                rr(b"web.example", dns.Record_A("192.0.2.1")),
                rr(b"evil.example", dns.Record_A("203.0.113.66")),
            ])]
        _, address = serve(self, behave)
        result = await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertEqual(result.lines(), ["web.example.", "192.0.2.1"])

    async def test_host_follows_cnames_and_prints_addresses(self):
        def behave(q):
            name, qtype = q.queries[0].name.name, q.queries[0].type
            if name == b"www.example":
                return [reply_to(q, [rr(name, dns.Record_CNAME(b"cdn.example"))])]
            if qtype == dns.A:
                return [reply_to(q, [rr(name, dns.Record_A("192.0.2.1"))])]
            return [reply_to(q, [rr(name, dns.Record_AAAA("2001:db8::1"))])]
        server, address = serve(self, behave)
        result = await api.query(reactor, "www.example", "host", [address], **FAST)
        self.assertEqual(result.lines(), ["192.0.2.1", "2001:db8::1"])
        self.assertEqual(result.type, "A,AAAA")
        self.assertEqual(len(server.queries), 4)

    async def test_host_errors(self):
        await self.assertFails(lambda q: [reply_to(q, rcode=dns.ENAME)], "lookup x.example: no such host",
                               rrtype="host", name="x.example")
        await self.assertFails(lambda q: [reply_to(q)], "lookup x.example: no A or AAAA record",
                               rrtype="host", name="x.example")

    async def test_ip_rejects_junk(self):
        for junk in ("288.8.8.8", "www.example", "1.2.3"):
            with self.assertRaises(UserError) as caught:
                await api.query(reactor, junk, "ip", [("127.0.0.1", 9)])
            self.assertEqual(str(caught.exception), "Not a valid IP address!")

    async def test_ptr_of_address_asks_reverse_name(self):
        def behave(q):
            return [reply_to(q, [rr(q.queries[0].name.name, dns.Record_PTR(b"www.example"))])]
        server, address = serve(self, behave)
        result = await api.query(reactor, "192.0.2.1", "ptr", [address], **FAST)
        self.assertEqual(result.lines(), ["www.example."])
        self.assertEqual(server.queries[0].queries[0].name.name, b"1.2.0.192.in-addr.arpa")

    async def test_system_resolver_uses_hosts_file_first(self):
        directory = tempfile.mkdtemp(prefix="netecho-lookup-")
        hosts_file = os.path.join(directory, "hosts")
        with open(hosts_file, "w") as f:
            f.write("192.0.2.7 db.example\n")
        result = await api.query(reactor, "db.example", "A", hosts_file=hosts_file,
                                    resolv_conf=os.path.join(directory, "none"))
        self.assertEqual((result.server, result.lines()), (hosts_file, ["192.0.2.7"]))
        result = await api.query(reactor, "192.0.2.7", "ip", hosts_file=hosts_file,
                                    resolv_conf=os.path.join(directory, "none"))
        self.assertEqual(result.lines(), ["db.example."])


# --- the command ---------------------------------------------------------------------


class ParserTests(SynchronousTestCase):
    def parse(self, *argv):
        import argparse

        p = argparse.ArgumentParser()
        cli.add_arguments(p)
        return p.parse_args(argv)

    def test_defaults(self):
        args = self.parse("mx", "example")
        self.assertEqual(
            (args.kind, args.name, args.server, args.tcp, args.timeout, args.retries, args.json, args.file,
             args.concurrency),
            ("MX", "example", None, False, 2.0, 2, False, None, 50),
        )

    def test_types_any_case_by_name_or_number(self):
        for given, kind in (("mx", "MX"), ("Https", "HTTPS"), ("type65", "TYPE65"), ("ANY", "ANY"),
                            ("host", "host"), ("IP", "ip"), ("nsap-ptr", "NSAP-PTR")):
            self.assertEqual(self.parse(given, "example").kind, kind)

    def test_edns_and_tls_options(self):
        args = self.parse("a", "x", "--bufsize", "4096", "--dnssec", "--tls", "--ca", "ca.pem", "--tls-name", "n")
        self.assertEqual((args.bufsize, args.dnssec, args.no_edns, args.tls, args.ca, args.tls_name, args.insecure),
                         (4096, True, False, True, "ca.pem", "n", False))
        self.assertIsNone(self.parse("a", "x").bufsize)  # the default, 1232, is the API's

    def test_servers(self):
        args = self.parse("a", "x", "--server", "192.0.2.1", "--server", "127.0.0.1:5353",
                          "--server", "[::1]:5353", "--server", "::1", "--server", "[2001:db8::1]")
        self.assertEqual(args.server, [("192.0.2.1", None), ("127.0.0.1", 5353), ("::1", 5353), ("::1", None),
                                       ("2001:db8::1", None)])
        args.tls = False
        self.assertEqual(cli.servers(args), [("192.0.2.1", 53), ("127.0.0.1", 5353), ("::1", 5353), ("::1", 53),
                                             ("2001:db8::1", 53)])
        args.tls = True
        self.assertEqual(cli.servers(args)[:2], [("192.0.2.1", 853), ("127.0.0.1", 5353)])
        args = self.parse("a", "x", "--tls")
        self.assertEqual({port for _, port in cli.servers(args)}, {853})  # resolv.conf's servers, DoT port
        self.assertIsNone(cli.servers(self.parse("a", "x")))  # the system's resolver, hosts file first

    def test_usage_errors_exit_2(self):
        self.patch(sys, "stderr", io.StringIO())
        for argv in (["bogus", "x"], ["a", "x", "--server", "localhost"], ["a", "x", "--server", "1.2.3.4:99999"],
                     ["a", "x", "--timeout", "0"], ["a", "x", "--retries", "-1"], ["a", "x", "--concurrency", "0"],
                     ["a"], ["a", "x", "--file", "-"], ["axfr", "x"], ["TYPE65536", "x"],
                     ["a", "x", "--bufsize", "65536"], ["a", "x", "--no-edns", "--dnssec"],
                     ["a", "x", "--no-edns", "--bufsize", "4096"], ["a", "x", "--tls-name", "n"],
                     ["a", "x", "--ca", "f"], ["a", "x", "--tls", "--ca", "f", "--insecure"]):
            e = self.assertRaises(SystemExit, main, ["lookup", *argv])
            self.assertEqual(e.code, 2, argv)


class TTYBuffer(io.StringIO):
    def isatty(self):
        return True


class CommandTests(TestCase):
    def args(self, *argv):
        import argparse

        p = argparse.ArgumentParser()
        cli.add_arguments(p)
        return p.parse_args([*argv, "--timeout", "0.3", "--retries", "0"])

    async def test_plain_and_json(self):
        _, address = serve(self, lambda q: [reply_to(q, [rr(q.queries[0].name.name, dns.Record_MX(10, b"mx.example"))])])
        server = f"127.0.0.1:{address[1]}"
        out = io.StringIO()
        self.assertEqual(await cli.one(reactor, self.args("mx", "example", "--server", server), out), 0)
        self.assertEqual(out.getvalue(), "10 mx.example.\n")
        out = io.StringIO()
        await cli.one(reactor, self.args("mx", "example", "--server", server, "--json"), out)
        self.assertEqual(json.loads(out.getvalue())["answers"][0]["data"], "10 mx.example.")

    async def test_bulk_in_order_with_errors_and_progress(self):
        def behave(q):
            name = q.queries[0].name.name
            if name.startswith(b"nx"):
                return [reply_to(q, rcode=dns.ENAME)]
            return [reply_to(q, [rr(name, dns.Record_A("192.0.2." + name.split(b".")[0][1:].decode()))])]
        _, address = serve(self, behave)
        names = [f"h{i}.example" for i in range(20)] + ["nx.example"]
        out, err = io.StringIO(), TTYBuffer()
        args = self.args("a", "--file", "-", "--server", f"127.0.0.1:{address[1]}", "--concurrency", "5")
        with self.assertRaises(UserError) as caught:
            await cli.many(reactor, args, iter(names), out, err, total=len(names))
        self.assertEqual(str(caught.exception), "1 of 21 lookups failed")
        self.assertEqual(
            out.getvalue().splitlines(),
            [f"h{i}.example 192.0.2.{i}" for i in range(20)] + ["nx.example error: lookup nx.example: no such host"],
        )
        drawn = err.getvalue()
        self.assertIn("21/21", drawn)
        self.assertIn("failed=1", drawn)
        self.assertIn("lookups/s", drawn)
        self.assertRegex(drawn, "\r *\r$")  # the bar is gone at the end

    async def test_bulk_json_and_no_progress_off_a_terminal(self):
        _, address = serve(self, lambda q: [reply_to(q, a_records(q, "192.0.2.1"))])
        out, err = io.StringIO(), io.StringIO()
        args = self.args("a", "--file", "-", "--json", "--server", f"127.0.0.1:{address[1]}")
        self.assertEqual(await cli.many(reactor, args, ["a.example", "b.example"], out, err), 0)
        self.assertEqual([json.loads(line)["query"] for line in out.getvalue().splitlines()], ["a.example", "b.example"])
        self.assertEqual(err.getvalue(), "")

    def test_read_names(self):
        self.assertEqual(list(cli.read_names(io.StringIO("a\n\n  # no\n b \r\nc"))), ["a", "b", "c"])
