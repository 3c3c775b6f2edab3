"""netecho.dns.names: names as typed (dig's escapes, IDNA) to labels, and labels back to dig's text."""

from __future__ import annotations

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from netecho.dns import names, wire
from netecho.errors import UserError


class ParseNameTests(SynchronousTestCase):
    def test_plain_and_root(self):
        self.assertEqual(names.parse_name("www.example"), (b"www", b"example"))
        self.assertEqual(names.parse_name("www.example."), (b"www", b"example"))
        self.assertEqual(names.parse_name("."), ())

    def test_digs_escapes(self):
        self.assertEqual(names.parse_name("weird\\.dot.example"), (b"weird.dot", b"example"))
        self.assertEqual(names.parse_name("sp\\032ace.example"), (b"sp ace", b"example"))
        self.assertEqual(names.parse_name("a\\\\b.example."), (b"a\\b", b"example"))
        self.assertEqual(names.parse_name("\\000.\\255"), (b"\x00", b"\xff"))
        self.assertEqual(names.parse_name("q\\\".example"), (b'q"', b"example"))

    def test_escapes_round_trip_through_digs_text(self):
        for text in ("weird\\.dot.example.", "sp\\032ace.example.", "a\\\\b.example.", "\\000\\255.x."):
            self.assertEqual(names.format_labels(names.parse_name(text)), text)

    def test_bad_escapes(self):
        for bad in ("a\\25x.example", "a\\256.example", "a\\", "a\\2"):
            e = self.assertRaises(UserError, names.parse_name, bad)
            self.assertIn("bad escape", str(e))
            self.assertTrue(str(e).startswith(f"lookup {bad}: "), str(e))

    def test_idna(self):
        self.assertEqual(names.parse_name("bücher.example"), (b"xn--bcher-kva", b"example"))
        self.assertEqual(names.encode_name("bücher.netecho.test"), b"xn--bcher-kva.netecho.test")

    def test_lengths_count_escaped_bytes(self):
        self.assertEqual(names.parse_name("\\120" * 63 + ".example")[0], b"x" * 63)
        self.assertIn("label longer than 63 bytes",
                      str(self.assertRaises(UserError, names.parse_name, "\\120" * 64 + ".example")))
        name = ".".join(["a" * 63] * 4)  # 255 characters
        e = self.assertRaises(UserError, names.parse_name, name)
        self.assertEqual(str(e), f"lookup {name}: name longer than 253 characters")

    def test_empty_labels(self):
        for bad in ("a..b", ".a", "a.."):
            self.assertIn("empty label", str(self.assertRaises(UserError, names.parse_name, bad)))
        self.assertEqual(str(self.assertRaises(UserError, names.parse_name, "")), "lookup: empty name")


class WireNameTests(SynchronousTestCase):
    def test_a_dot_inside_a_label_goes_out_as_one_label(self):
        sent = wire.build_query(names.parse_name("weird\\.dot.example"), dns.A, edns=None)
        data = sent.toStr()
        self.assertIn(b"\x09weird.dot\x07example\x00", data)

    def test_same_name_ignores_ascii_case_only(self):
        a = names.WireName((b"WWW", b"Example"))
        self.assertTrue(names.same_name(a, names.WireName((b"www", b"example"))))
        self.assertFalse(names.same_name(a, names.WireName((b"www.example",))))
        self.assertTrue(names.same_name(a, dns.Name(b"www.example")))
