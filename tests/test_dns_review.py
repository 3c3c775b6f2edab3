"""
Review of issue 18 (netecho.dns), in process: negative answers shown by
--json and --stats, a scoped address as one failed name, IDNA's full stops,
BADVERS without a question, FORMERR with an OPT record, and the type label of
bulk failures.
"""

from __future__ import annotations

import io
import json

from twisted.internet import reactor
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho.cli import lookup as cli
from netecho.dns import api, names, wire
from netecho.errors import UserError
from tests.test_lookup import FAST, opt_of, reply_to, rr, serve


def _args(*argv):
    import argparse

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args([*argv, "--timeout", "0.5", "--retries", "0"])


def _soa(name: bytes = b"example") -> dns.RRHeader:
    return dns.RRHeader(name, dns.SOA, dns.IN, 60,
                        dns.Record_SOA(b"ns." + name, b"host." + name, 7, 1, 2, 3, 60), auth=True)


def negative(rcode: int):
    """A server answering every query with C{rcode}, no answer and its zone's SOA in authority."""
    def behave(q):
        m = dns.Message(q.id, answer=1, rCode=rcode, auth=1)
        m.queries = list(q.queries)
        m.authority = [_soa()]
        return [m.toStr()]
    return behave


class NegativeAnswerTests(TestCase):
    """Item 2: NXDOMAIN and NODATA are answers: --json shows rcode and SOA, --stats the reply."""

    async def one(self, behave, *argv):
        _, address = serve(self, behave)
        out, err = io.StringIO(), io.StringIO()
        with self.assertRaises(api.NegativeAnswer) as caught:
            await cli.one(reactor, _args(*argv, "--server", f"127.0.0.1:{address[1]}"), out, err)
        return caught.exception, out.getvalue(), err.getvalue(), address

    async def test_nxdomain_json_has_rcode_and_soa_and_error_stays(self):
        e, out, err, address = await self.one(negative(dns.ENAME), "a", "nx.example", "--json")
        self.assertEqual(str(e), "lookup nx.example: no such host")
        self.assertIsInstance(e, UserError)  # the CLI's one line and exit 100
        data = json.loads(out)
        self.assertEqual((data["rcode"], data["answers"], data["server"]),
                         ("NXDOMAIN", [], f"127.0.0.1:{address[1]}"))
        self.assertEqual([(a["type"], a["data"]) for a in data["authority"]],
                         [("SOA", "ns.example. host.example. 7 1 2 3 60")])
        self.assertEqual(err, "")

    async def test_nodata_stats_printed(self):
        e, out, err, address = await self.one(negative(dns.OK), "mx", "www.example", "--stats")
        self.assertEqual(str(e), "lookup www.example: no MX record")
        self.assertEqual(out, "")
        self.assertIn(";; Query time: ", err)
        self.assertIn(f";; SERVER: 127.0.0.1#{address[1]}(127.0.0.1) (UDP)", err)
        self.assertIn(";; MSG SIZE  rcvd: ", err)

    async def test_host_negative_result(self):
        e, out, _, _ = await self.one(negative(dns.ENAME), "host", "nx.example", "--json")
        self.assertEqual(str(e), "lookup nx.example: no such host")
        self.assertEqual((json.loads(out)["rcode"], json.loads(out)["type"]), ("NXDOMAIN", "A,AAAA"))

    async def test_bulk_json_line_keeps_the_reply(self):
        _, address = serve(self, negative(dns.ENAME))
        out, err = io.StringIO(), io.StringIO()
        args = _args("type6", "--file", "-", "--json", "--server", f"127.0.0.1:{address[1]}")
        with self.assertRaises(UserError):
            await cli.many(reactor, args, ["nx.example"], out, err)
        data = json.loads(out.getvalue())
        self.assertEqual((data["type"], data["rcode"], data["error"]),
                         ("SOA", "NXDOMAIN", "lookup nx.example: no such host"))
        self.assertEqual(data["authority"][0]["type"], "SOA")


class TypeLabelTests(TestCase):
    """Item 11: a bulk failure names the type as a success would (SOA, not TYPE6)."""

    async def test_timeout_line_labelled_like_a_result(self):
        _, address = serve(self, lambda q: [])
        out, err = io.StringIO(), io.StringIO()
        args = _args("type6", "--file", "-", "--json", "--server", f"127.0.0.1:{address[1]}")
        args.timeout = 0.2
        with self.assertRaises(UserError):
            await cli.many(reactor, args, ["quiet.example"], out, err)
        self.assertEqual(json.loads(out.getvalue())["type"], "SOA")
        self.assertEqual(cli.bulk_line("x", UserError("e"), True, api.HOST),
                         '{"query": "x", "type": "A,AAAA", "error": "e"}')
        self.assertEqual(json.loads(cli.bulk_line("x", UserError("e"), True, api.IP))["type"], "PTR")


class ScopedAddressTests(TestCase):
    """Item 5: a scoped IPv6 address is one failed name, not a traceback that ends the run."""

    def test_reverse_name_of_scoped_address(self):
        e = self.assertRaises(UserError, names.reverse_name, "fe80::1%eth0")
        self.assertEqual(str(e), "lookup fe80::1%eth0: a scoped address has no reverse name (without %eth0: fe80::1)")

    async def test_bulk_goes_on_after_it(self):
        def behave(q):
            return [reply_to(q, [rr(q.queries[0].name.name, dns.Record_PTR(b"host.example"))])]
        _, address = serve(self, behave)
        out, err = io.StringIO(), io.StringIO()
        args = _args("ip", "--file", "-", "--server", f"127.0.0.1:{address[1]}")
        with self.assertRaises(UserError) as caught:
            await cli.many(reactor, args, ["192.0.2.1", "fe80::1%eth0", "2001:db8::1"], out, err)
        self.assertEqual(str(caught.exception), "1 of 3 lookups failed")
        self.assertEqual(out.getvalue().splitlines(), [
            "192.0.2.1 host.example.",
            "fe80::1%eth0 error: lookup fe80::1%eth0: a scoped address has no reverse name (without %eth0: fe80::1)",
            "2001:db8::1 host.example.",
        ])


class IDNAFullStopTests(SynchronousTestCase):
    """Item 6: IDNA 2003's full stops separate labels (U+3002, U+FF0E, U+FF61)."""

    def test_full_stops_separate_labels(self):
        for stop in ("\u3002", "\uff0e", "\uff61"):
            self.assertEqual(names.parse_name(f"bücher{stop}example"), (b"xn--bcher-kva", b"example"), stop)
            self.assertEqual(names.parse_name(f"www{stop}example{stop}"), (b"www", b"example"), stop)
        self.assertEqual("bücher。example".encode("idna"), b"xn--bcher-kva.example")  # what IDNA 2003 does

    def test_escaped_dot_in_an_idn_label_refused(self):
        for name in ("bü\\.cher.example", "bü\\046cher.example", "bü\\\u3002cher.example"):
            e = self.assertRaises(UserError, names.parse_name, name)
            self.assertEqual(str(e), f"lookup {name}: not a valid internationalised name")
        self.assertEqual(names.parse_name("a\\.b.example"), (b"a.b", b"example"))  # ASCII: kept in the label


class EDNSErrorTests(TestCase):
    """Item 8: BADVERS without a question at once; FORMERR with an OPT is not EDNS intolerance."""

    async def test_badvers_without_question_fails_at_once(self):
        def behave(q):
            m = dns.Message(q.id, answer=1, rCode=0)
            m.additional = [wire.opt_record(1232)]
            m.additional[0].ttl = 1 << 24  # extended rcode 1: BADVERS (16)
            return [m.toStr()]
        server, address = serve(self, behave)
        start = reactor.seconds()
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, "www.example", "A", [address], timeout=5, retries=0)
        self.assertEqual(str(caught.exception),
                         f"lookup www.example on 127.0.0.1:{address[1]}: unsupported EDNS version (BADVERS)")
        self.assertLess(reactor.seconds() - start, 4)  # not the 5 s timeout

    async def test_formerr_with_opt_not_retried_without_edns(self):
        def behave(q):
            m = dns.Message(q.id, answer=1, rCode=dns.EFORMAT)
            m.queries = list(q.queries)
            m.additional = [wire.opt_record(1232)]
            return [m.toStr()]
        server, address = serve(self, behave)
        with self.assertRaises(UserError) as caught:
            await api.query(reactor, "www.example", "A", [address], **FAST)
        self.assertIn("format error (FORMERR)", str(caught.exception))
        self.assertEqual([opt_of(q) is not None for q in server.queries], [True])


class TLSOptionWordingTests(SynchronousTestCase):
    """Item 11: lookup's TLS settings come from ClientTLS.from_args and name lookup's own option."""

    def test_bad_tls_name_names_the_tls_name_option(self):
        args = _args("a", "x", "--tls", "--tls-name", "a..b")
        e = self.assertRaises(UserError, cli.tls_settings(args, io.StringIO()), "127.0.0.1")
        self.assertEqual(str(e), "tls: 'a..b' is not a valid host name to verify (--tls-name NAME, or the host given)")

    def test_insecure_warned_once_for_every_server(self):
        args = _args("a", "x", "--tls", "--insecure")
        err = io.StringIO()
        settings = cli.tls_settings(args, err)
        first, second = settings("127.0.0.1"), settings("::1")
        self.assertEqual((first.server_name, second.server_name, first.insecure), ("127.0.0.1", "::1", True))
        self.assertIs(settings("127.0.0.1"), first)
        self.assertEqual(err.getvalue(), "netecho: warning: --insecure: the server's certificate is not verified\n")

    def test_unreadable_file_is_a_user_error(self):
        import sys

        from netecho.cli import main

        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main(["lookup", "a", "--file", "/nonexistent/names.txt"]), 100)
        self.assertEqual(sys.stderr.getvalue(), "open /nonexistent/names.txt: no such file or directory\n")


class ObsoleteTypeFormatTests(SynchronousTestCase):
    """Item 9 without NSD: WKS and A6 as dig prints them (tests/integration/test_dns_nsd.py checks against dig)."""

    def test_wks(self):
        from netecho.dns import text

        bitmap = bytes([0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0x80])  # ports 25 and 80
        self.assertEqual(text.format_rdata(11, None, bytes([192, 0, 2, 1, 6]) + bitmap), "192.0.2.1 6 25 80")

    def test_a6(self):
        import socket

        from netecho.dns import text

        self.assertEqual(text.format_rdata(38, None, b"\x00" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")),
                         "0 2001:db8::1")
        odd = b"\x3c" + socket.inet_pton(socket.AF_INET6, "::a:1:2:3:4")[7:] + b"\x03pre\x07example\x00"
        self.assertEqual(text.format_rdata(38, None, odd), "60 ::a:1:2:3:4 pre.example.")
        self.assertEqual(text.format_rdata(38, None, b"\x80\x03pre\x07example\x00"), "128 pre.example.")
