"""netecho.dns.text: record types by name and number, record data and stats lines as dig prints them."""

from __future__ import annotations

import base64
import struct

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from netecho.dns import text


class TypeTests(SynchronousTestCase):
    def test_names_and_numbers(self):
        for name, code in (("A", 1), ("caa", 257), ("Https", 65), ("TLSA", 52), ("DS", 43), ("DNSKEY", 48),
                           ("NAPTR", 35), ("SSHFP", 44), ("NSAP-PTR", 23), ("ANY", 255), ("TYPE65", 65),
                           ("type65534", 65534), ("TYPE0", 0)):
            self.assertEqual(text.type_code(name), code, name)
        for junk in ("BOGUS", "TYPE", "TYPE65536", "TYPE-1", "TYPE１"):
            self.assertIsNone(text.type_code(junk), junk)

    def test_type_name_is_the_mnemonic_or_rfc3597(self):
        self.assertEqual([text.type_name(c) for c in (1, 65, 257, 65534)], ["A", "HTTPS", "CAA", "TYPE65534"])

    def test_every_type_twisted_decodes_has_a_name(self):
        for code in dns.Message._recordTypes:
            self.assertEqual(text.type_code(text.type_name(code)), code)

    def test_rcodes_and_flags(self):
        self.assertEqual([text.rcode_name(c) for c in (0, 3, 5, 16, 12)],
                         ["NOERROR", "NXDOMAIN", "REFUSED", "BADVERS", "RCODE12"])
        m = dns.Message(answer=1, auth=1, recDes=1, recAv=1)
        self.assertEqual(text.flags(m), ["qr", "aa", "rd", "ra"])


class GenericTests(SynchronousTestCase):
    def test_rfc3597_form(self):
        self.assertEqual(text.generic(bytes.fromhex("0A000001")), "\\# 4 0A000001")
        self.assertEqual(text.generic(b""), "\\# 0")

    def test_long_data_in_words_of_56_as_dig(self):
        shown = text.generic(bytes(range(35)))
        self.assertEqual(shown.split(" ")[:2], ["\\#", "35"])
        self.assertEqual([len(w) for w in shown.split(" ")[2:]], [56, 14])

    def test_unknown_type_and_malformed_known_type_shown_generic(self):
        self.assertEqual(text.format_rdata(65534, dns.UnknownRecord(b"\x0a\x00\x00\x01")), "\\# 4 0A000001")
        # A DS record too short for its fields: shown as it came.
        self.assertEqual(text.format_rdata(43, dns.UnknownRecord(b"\x01")), "\\# 1 01")


class PresentationTests(SynchronousTestCase):
    def fmt(self, rtype, rdata):
        return text.format_rdata(text.TYPES[rtype], dns.UnknownRecord(rdata))

    def test_decoded_by_twisted(self):
        fmt = text.format_record
        self.assertEqual(fmt(dns.Record_HINFO(b"PC", b'Debian "x"')), '"PC" "Debian \\"x\\""')
        self.assertEqual(fmt(dns.Record_AFSDB(1, b"afs.example")), "1 afs.example.")
        self.assertEqual(fmt(dns.Record_RP(b"h.example", b"t.example")), "h.example. t.example.")
        self.assertEqual(fmt(dns.Record_SPF(b"v=spf1", b"-all")), '"v=spf1" "-all"')
        self.assertEqual(fmt(dns.Record_NAPTR(100, 10, b"u", b"E2U+sip", b"!^.*$!x!", b"")),
                         '100 10 "u" "E2U+sip" "!^.*$!x!" .')
        self.assertEqual(fmt(dns.Record_SSHFP(1, 1, bytes(range(20)))),
                         "1 1 000102030405060708090A0B0C0D0E0F10111213")

    def test_ds_dnskey_caa_tlsa(self):
        digest = bytes(range(32))
        self.assertEqual(self.fmt("DS", struct.pack("!HBB", 12345, 13, 2) + digest),
                         "12345 13 2 " + digest.hex().upper()[:56] + " " + digest.hex().upper()[56:])
        key = bytes(range(64))
        b64 = base64.b64encode(key).decode()
        self.assertEqual(self.fmt("DNSKEY", struct.pack("!HBB", 257, 3, 13) + key),
                         f"257 3 13 {b64[:56]} {b64[56:]}")
        self.assertEqual(self.fmt("CAA", b"\x00\x05issueca.example.net"), '0 issue "ca.example.net"')
        self.assertEqual(self.fmt("TLSA", b"\x03\x01\x01" + b"\xab" * 4), "3 1 1 ABABABAB")

    def test_rrsig_and_nsec(self):
        rdata = (struct.pack("!HBBIIIH", 1, 13, 3, 300, 1798848000, 1796256000, 31084)
                 + b"\x07netecho\x04test\x00" + b"\x01\x02\x03")
        self.assertEqual(self.fmt("RRSIG", rdata),
                         "A 13 3 300 20270102000000 20261203000000 31084 netecho.test. AQID")
        # next name, then the bitmap of window 0: A (1), MX (15), RRSIG (46), NSEC (47)
        bitmap = bytearray(6)
        for t in (1, 15, 46, 47):
            bitmap[t // 8] |= 0x80 >> (t % 8)
        nsec = b"\x03www\x07netecho\x04test\x00" + bytes([0, len(bitmap)]) + bytes(bitmap)
        self.assertEqual(self.fmt("NSEC", nsec), "www.netecho.test. A MX RRSIG NSEC")

    def test_svcb_https_and_uri(self):
        params = (struct.pack("!HH", 1, 8) + b"\x02h2\x04h,3x" + struct.pack("!HH", 3, 2) + struct.pack("!H", 443)
                  + struct.pack("!HH", 4, 4) + bytes([192, 0, 2, 1]) + struct.pack("!HH", 5, 3) + b"\x00\x01\x02"
                  + struct.pack("!HH", 2, 0) + struct.pack("!HH", 65000, 3) + b'a"b')
        self.assertEqual(self.fmt("HTTPS", b"\x00\x01\x00" + params),
                         '1 . alpn="h2,h\\\\,3x" port=443 ipv4hint=192.0.2.1 ech=AAEC no-default-alpn key65000="a\\"b"')
        self.assertEqual(self.fmt("SVCB", b"\x00\x00\x03www\x07example\x00"), "0 www.example.")
        # A port of three bytes does not fit its key: the record is shown generic.
        self.assertEqual(self.fmt("SVCB", b"\x00\x01\x00" + struct.pack("!HH", 3, 3) + b"\x00\x01\x02"),
                         "\\# 10 00010000030003000102")
        self.assertEqual(self.fmt("URI", b"\x00\x0a\x00\x01https://x/"), '10 1 "https://x/"')

    def test_nsec3param(self):
        self.assertEqual(self.fmt("NSEC3PARAM", b"\x01\x00\x00\x01\x00"), "1 0 1 -")
        self.assertEqual(self.fmt("NSEC3PARAM", b"\x01\x00\x00\x0a\x02\xab\xcd"), "1 0 10 ABCD")


class StatsTests(SynchronousTestCase):
    def test_digs_lines(self):
        lines = text.stats_lines(0.0123, ("127.0.0.1", 5353), "UDP", 56, 0)
        self.assertEqual(lines[0], ";; Query time: 12 msec")
        self.assertEqual(lines[1], ";; SERVER: 127.0.0.1#5353(127.0.0.1) (UDP)")
        self.assertTrue(lines[2].startswith(";; WHEN: "))
        self.assertEqual(lines[3], ";; MSG SIZE  rcvd: 56")
