"""
Issue 18 against a real NSD on loopback, answer for answer against dig:
every record type of the test zone (dig +short, or dig +short
+unknownformat where netecho prints RFC 3597's generic form), names with
dig's escapes, EDNS and DNSSEC on a zone signed here (keys made by
ldns-keygen, signed by ldns-signzone), and DNS over TLS with a certificate
made here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from netecho.dns import api
from tests import peers
from tests.certs import make_pki
from tests.integration.test_lookup_dns import NSD, ZONES, dig, dig_short, netecho_lookup

# (TYPE, NAME): netecho prints what dig +short prints.
PRESENTED = [
    ("CAA", "caa.netecho.test"),
    ("SSHFP", "sshfp.netecho.test"),
    ("TLSA", "_443._tcp.www.netecho.test"),
    ("NAPTR", "naptr.netecho.test"),
    ("HINFO", "hinfo.netecho.test"),
    ("RP", "rp.netecho.test"),
    ("AFSDB", "afsdb.netecho.test"),
    ("DNAME", "dname.netecho.test"),
    ("SPF", "spf.netecho.test"),
    ("DS", "child.netecho.test"),
    ("TYPE65534", "private.netecho.test"),
    ("TYPE65280", "empty.netecho.test"),
    ("A", "weird\\.dot.netecho.test"),
    ("A", "sp\\032ace.netecho.test"),
    ("TYPE1", "www.netecho.test"),
    ("TYPE257", "caa.netecho.test"),
    ("HTTPS", "https.netecho.test"),
    ("TYPE65", "https.netecho.test"),
    ("SVCB", "svcb.netecho.test"),
    ("URI", "uri.netecho.test"),
]

# Review of issue 18, item 9: types twisted.names decodes, in dig's presentation format.
OBSOLETE = [
    ("WKS", "wks.netecho.test"),
    ("A6", "a6.netecho.test"),
    ("A6", "a6.prefixed.netecho.test"),
    ("A6", "a6.odd.netecho.test"),  # a prefix length that is no multiple of 8
]

# Review of issue 18, item 12: names under a DNAME: the DNAME first, as dig +short prints it.
UNDER_DNAME = [
    ("A", "www.tree.netecho.test"),
    ("MX", "tree.tree.netecho.test"),
]

# (TYPE, NAME): no presentation format in netecho: the generic form, as dig +unknownformat.
GENERIC = [
    ("LOC", "loc.netecho.test"),
    ("EUI48", "eui48.netecho.test"),
]


def sign_zone(directory: str) -> str:
    """tests/zones/netecho.test.zone (but its A6 records) signed with NSEC by keys made now; the signed file's path."""
    keygen = peers.require("ldns-keygen", "ldnsutils")
    signzone = peers.require("ldns-signzone", "ldnsutils")
    zone = os.path.join(directory, "netecho.test.zone")
    with open(os.path.join(ZONES, "netecho.test.zone")) as source, open(zone, "w") as copy:
        # Without the A6 records: ldns-signzone writes them as A6, which NSD cannot read.
        copy.writelines(line for line in source if "TYPE38" not in line)
    keys = []
    for extra in (["-k"], []):  # a key-signing key, then a zone-signing key
        out = subprocess.run([keygen, "-a", "ECDSAP256SHA256", *extra, "netecho.test"], cwd=directory,
                             capture_output=True, text=True, timeout=30, check=True)
        keys.append(os.path.join(directory, out.stdout.strip()))
    subprocess.run([signzone, "-o", "netecho.test.", zone, *keys], cwd=directory,
                   capture_output=True, text=True, timeout=60, check=True)
    return zone + ".signed"


class TypesAgainstDigTests(TestCase):
    def setUp(self):
        self.nsd = NSD()
        self.addCleanup(self.nsd.stop)

    def servers(self):
        return [("127.0.0.1", self.nsd.port)]

    async def test_every_new_type_as_dig_prints_it(self):
        await self.assert_as_dig(PRESENTED)

    async def test_wks_and_a6_as_dig_prints_them(self):
        await self.assert_as_dig(OBSOLETE)

    async def test_names_under_a_dname_as_dig_prints_them(self):
        await self.assert_as_dig(UNDER_DNAME)

    async def assert_as_dig(self, cases):
        for rtype, name in cases:
            expected = dig_short(self.nsd, rtype, name)
            self.assertTrue(expected, (rtype, name, "dig found nothing: the zone is wrong"))
            result = await api.query(reactor, name, rtype, self.servers())
            self.assertEqual(sorted(result.lines()), sorted(expected), (rtype, name))

    async def test_types_without_a_format_in_rfc3597_form(self):
        for rtype, name in GENERIC:
            expected = dig_short(self.nsd, "+unknownformat", rtype, name)
            self.assertTrue(expected and expected[0].startswith("\\# "), (rtype, name, expected))
            result = await api.query(reactor, name, rtype, self.servers())
            self.assertEqual(sorted(result.lines()), sorted(expected), (rtype, name))

    async def test_any(self):
        expected = dig_short(self.nsd, "+unknownformat", "ANY", "caa.netecho.test")
        result = await api.query(reactor, "caa.netecho.test", "any", self.servers(), tcp=True)
        # dig +unknownformat prints every type generic; compare the CAA records both ways.
        self.assertEqual(len(result.lines()), len(expected))
        self.assertEqual(sorted(result.lines()), sorted(dig_short(self.nsd, "ANY", "caa.netecho.test")))
        self.assertEqual({a.type for a in result.answers}, {"CAA"})

    def test_command_types_and_escapes(self):
        server = f"127.0.0.1:{self.nsd.port}"
        for args, query in ((("caa", "caa.netecho.test"), ("CAA", "caa.netecho.test")),
                            (("TYPE65534", "private.netecho.test"), ("TYPE65534", "private.netecho.test")),
                            (("a", "weird\\.dot.netecho.test"), ("A", "weird\\.dot.netecho.test"))):
            out = netecho_lookup(*args, "--server", server)
            self.assertEqual((out.returncode, out.stderr), (0, ""), args)
            self.assertEqual(sorted(out.stdout.splitlines()), sorted(dig_short(self.nsd, *query)), args)
        out = netecho_lookup("a", "weird\\.dot.netecho.test", "--server", server, "--json")
        self.assertIn('"name": "weird\\\\.dot.netecho.test."', out.stdout)

    def test_stats_lines_on_stderr(self):
        out = netecho_lookup("mx", "netecho.test", "--server", f"127.0.0.1:{self.nsd.port}", "--stats")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(sorted(out.stdout.splitlines()), sorted(dig_short(self.nsd, "MX", "netecho.test")))
        lines = out.stderr.splitlines()
        self.assertRegex(lines[0], r"^;; Query time: \d+ msec$")
        self.assertEqual(lines[1], f";; SERVER: 127.0.0.1#{self.nsd.port}(127.0.0.1) (UDP)")
        self.assertTrue(lines[2].startswith(";; WHEN: "))
        # The size dig reports for the same query (same EDNS size, so the same reply).
        full = dig(self.nsd, "MX", "netecho.test").stdout
        size = re.search(r"MSG SIZE  rcvd: (\d+)", full).group(1)
        self.assertEqual(lines[3], f";; MSG SIZE  rcvd: {size}")

    async def test_bufsize_decides_udp_or_tcp(self):
        # big.netecho.test's TXT set is more than 512 bytes and less than 1232.
        big = await api.query(reactor, "big.netecho.test", "TXT", self.servers())
        self.assertEqual(big.exchanges[0].transport, "UDP")
        small = await api.query(reactor, "big.netecho.test", "TXT", self.servers(), edns=512)
        self.assertEqual(small.exchanges[0].transport, "TCP")
        none = await api.query(reactor, "big.netecho.test", "TXT", self.servers(), edns=None)
        self.assertEqual(none.exchanges[0].transport, "TCP")
        self.assertEqual(big.lines(), none.lines())


class DNSSECTests(TestCase):
    """EDNS with DO against NSD serving a zone signed in the test."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-signed-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        signed = sign_zone(self.dir)
        self.nsd = NSD({"netecho.test": signed})
        self.addCleanup(self.nsd.stop)

    def servers(self):
        return [("127.0.0.1", self.nsd.port)]

    async def test_dnssec_shows_rrsigs_as_dig(self):
        for rtype, name in (("A", "www.netecho.test"), ("DNSKEY", "netecho.test"), ("NSEC", "www.netecho.test"),
                            ("MX", "netecho.test"), ("A", "alias.netecho.test"), ("TXT", "txt.netecho.test")):
            expected = dig_short(self.nsd, "+dnssec", rtype, name)
            self.assertTrue(any(line.startswith(rtype + " ") or line.startswith("CNAME ") for line in expected),
                            (rtype, name, "no RRSIG from dig: the zone is not signed"))
            result = await api.query(reactor, name, rtype, self.servers(), dnssec=True)
            self.assertEqual(sorted(result.lines()), sorted(expected), (rtype, name))

    async def test_without_dnssec_no_rrsig(self):
        result = await api.query(reactor, "www.netecho.test", "A", self.servers())
        self.assertEqual(sorted(result.lines()), sorted(dig_short(self.nsd, "A", "www.netecho.test")))
        self.assertEqual({a.type for a in result.answers}, {"A"})

    async def test_rrsig_and_dnskey_asked_directly(self):
        for rtype, name in (("RRSIG", "www.netecho.test"), ("DNSKEY", "netecho.test")):
            result = await api.query(reactor, name, rtype, self.servers(), tcp=True)
            self.assertEqual(sorted(result.lines()), sorted(dig_short(self.nsd, "+tcp", rtype, name)), rtype)

    def test_command_dnssec_json(self):
        out = netecho_lookup("a", "nx.netecho.test", "--server", f"127.0.0.1:{self.nsd.port}", "--dnssec")
        self.assertEqual((out.returncode, out.stderr), (100, "lookup nx.netecho.test: no such host\n"))
        out = netecho_lookup("soa", "netecho.test", "--server", f"127.0.0.1:{self.nsd.port}", "--dnssec", "--json")
        import json

        data = json.loads(out.stdout)
        self.assertEqual(sorted(a["type"] for a in data["answers"]), ["RRSIG", "SOA"])
        self.assertEqual(data["rcode"], "NOERROR")
        self.assertIn("aa", data["flags"])


class TLSTests(TestCase):
    """DNS over TLS against NSD's own TLS service, with certificates made here."""

    def setUp(self):
        peers.require_nsd_tls()
        self.dir = tempfile.mkdtemp(prefix="netecho-dot-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pki = make_pki(self.dir)
        self.nsd = NSD(tls=(self.pki.server.key, self.pki.server.cert))
        self.addCleanup(self.nsd.stop)
        self.server = f"127.0.0.1:{self.nsd.tls_port}"

    def dig_tls(self, *query: str) -> list[str]:
        out = subprocess.run([peers.require("dig", "dnsutils"), "@127.0.0.1", "-p", str(self.nsd.tls_port),
                              "+tls", "+tries=1", "+time=5", "+short", *query],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out)
        return out.stdout.splitlines()

    def test_verified_against_the_ca(self):
        expected = self.dig_tls("MX", "netecho.test")
        self.assertTrue(expected)
        for extra in ((), ("--tls-name", "localhost")):
            out = netecho_lookup("mx", "netecho.test", "--server", self.server, "--tls", "--ca", self.pki.ca.cert,
                                 "--stats", *extra)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(sorted(out.stdout.splitlines()), sorted(expected))
            self.assertIn(f";; SERVER: 127.0.0.1#{self.nsd.tls_port}(127.0.0.1) (TLS)", out.stderr)

    def test_untrusted_or_wrong_name_refused(self):
        out = netecho_lookup("a", "www.netecho.test", "--server", self.server, "--tls", "--retries", "0")
        self.assertEqual(out.returncode, 100)
        self.assertRegex(out.stderr, rf"^lookup www.netecho.test on {self.server}: tls: certificate verify failed: "
                                     r".+\n$")
        out = netecho_lookup("a", "www.netecho.test", "--server", self.server, "--tls", "--ca", self.pki.ca.cert,
                             "--tls-name", "other.example", "--retries", "0")
        self.assertEqual((out.returncode, out.stdout), (100, ""))
        self.assertIn("certificate verify failed", out.stderr)
        self.assertIn("other.example", out.stderr)

    def test_insecure_warns_and_answers(self):
        out = netecho_lookup("a", "www.netecho.test", "--server", self.server, "--tls", "--insecure")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(sorted(out.stdout.splitlines()), sorted(self.dig_tls("A", "www.netecho.test")))
        self.assertEqual(out.stderr, "netecho: warning: --insecure: the server's certificate is not verified\n")

    async def test_api_over_tls(self):
        from netecho.cli.tls import ClientTLS

        result = await api.query(reactor, "txt.netecho.test", "TXT", [("127.0.0.1", self.nsd.tls_port)],
                                 tls=lambda host: ClientTLS(host, ca=self.pki.ca.cert))
        self.assertEqual(sorted(result.lines()), sorted(self.dig_tls("TXT", "txt.netecho.test")))
        self.assertEqual(result.exchanges[0].transport, "TLS")
