"""
Domain names between text and the wire, both ways, with dig's rules.

In: a name as a user types it (C{weird\\.dot.example}, C{a\\032b.example},
C{bücher.example}) becomes its labels: C{\\.} and C{\\X} are the character
itself, C{\\DDD} the byte of that decimal value, an unescaped dot (or
IDNA's U+3002, U+FF0E, U+FF61) ends a label; internationalised labels are
IDNA-encoded (IDNA 2003, Python's codec; a dot escaped into one is
refused); lengths are checked before anything is sent.

Out: labels as dig prints them (C{host\\.master.example.}, C{\\000}).

twisted.names keeps a name as dotted bytes, which loses a dot inside a
label: L{WireName} sends labels as they are, and L{wire_labels} reads
them back from the message where twisted.names decoded a name.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

from twisted.names import dns

from netecho.errors import UserError

#: What ends a label when not escaped: the dot, and IDNA 2003's other full
#: stops (RFC 3490 3.1: ideographic, fullwidth and halfwidth ideographic).
_FULL_STOPS = (".", "\u3002", "\uff0e", "\uff61")

# Characters BIND escapes with a backslash in names (dns_name_totext).
_NAME_SPECIALS = frozenset(b'".;\\()@$')


def parse_name(name: str) -> tuple[bytes, ...]:
    """
    The labels of C{name} as typed (dig's escapes, IDNA, an optional
    trailing dot; C{.} alone is the root).

    @raise UserError: naming what is wrong (C{lookup NAME: empty label}).
    """
    if name == ".":
        return ()
    if not name:
        raise UserError("lookup: empty name")
    if name.isascii() and "\\" not in name:
        # The common case: no escape, no IDNA.
        labels = name.encode("ascii").split(b".")
        if labels[-1] == b"" and len(labels) > 1:
            labels.pop()
        if not all(labels):
            raise UserError(f"lookup {name}: empty label")
        if max(map(len, labels)) > 63:
            raise UserError(f"lookup {name}: label longer than 63 bytes")
        if len(name.rstrip(".")) > 253:
            raise UserError(f"lookup {name}: name longer than 253 characters")
        return tuple(labels)
    labels: list[bytes] = []
    current: list[bytes] = []  # pieces of the label being read
    unicode_label = False
    escaped_high = False
    i = 0
    end_dot = False

    def finish() -> None:
        nonlocal unicode_label, escaped_high
        if not current:
            raise UserError(f"lookup {name}: empty label")
        if unicode_label:
            if escaped_high or any(stop.encode("utf-8") in piece for piece in current for stop in _FULL_STOPS):
                # (Python's IDNA codec would split the label at an escaped dot.)
                raise UserError(f"lookup {name}: not a valid internationalised name")
            try:
                raw = b"".join(current).decode("utf-8").encode("idna")
            except UnicodeError:
                raise UserError(f"lookup {name}: not a valid internationalised name") from None
        else:
            raw = b"".join(current)
        if len(raw) > 63:
            raise UserError(f"lookup {name}: label longer than 63 bytes")
        labels.append(raw)
        current.clear()
        unicode_label = escaped_high = False

    while i < len(name):
        char = name[i]
        end_dot = False
        if char == "\\":
            rest = name[i + 1 : i + 4]
            if rest[:1].isdigit():
                if not (len(rest) == 3 and rest.isascii() and rest.isdigit()) or int(rest) > 255:
                    raise UserError(f"lookup {name}: bad escape (\\DDD takes three digits, at most 255)")
                value = int(rest)
                escaped_high |= value > 0x7F
                current.append(bytes([value]))
                i += 4
                continue
            if not rest:
                raise UserError(f"lookup {name}: bad escape (a backslash at the end)")
            if not rest[0].isascii():
                unicode_label = True
            current.append(rest[0].encode("utf-8"))
            i += 2
            continue
        if char in _FULL_STOPS:
            finish()
            end_dot = True
        else:
            if not char.isascii():
                unicode_label = True
            current.append(char.encode("utf-8", "surrogateescape"))
        i += 1
    if not end_dot:
        finish()
    # On the wire: a length byte per label and the root's zero byte, at most 255.
    if sum(len(label) + 1 for label in labels) + 1 > 255:
        raise UserError(f"lookup {name}: name longer than 253 characters")
    return tuple(labels)


def encode_name(name: str) -> bytes:
    """C{name}'s labels joined by dots (as twisted.names keeps names); see L{parse_name}."""
    return b".".join(parse_name(name))


def reverse_name(address: str) -> tuple[bytes, ...]:
    """
    The labels of C{1.2.0.192.in-addr.arpa} for C{192.0.2.1} (and ip6.arpa for IPv6).

    @raise UserError: a scoped address (C{fe80::1%eth0}): the zone index
        belongs to this host, no reverse name has it.
    """
    if "%" in address:
        raise UserError(f"lookup {address}: a scoped address has no reverse name "
                        f"(without %{address.partition('%')[2]}: {address.partition('%')[0]})")
    try:
        return tuple(ipaddress.ip_address(address).reverse_pointer.encode("ascii").split(b"."))
    except ValueError:
        raise UserError("Not a valid IP address!") from None


class WireName(dns.Name):
    """
    A L{dns.Name} sent label by label (a dot inside a label stays in it),
    never compressed. C{name} is the dotted form twisted.names expects.
    """

    def __init__(self, labels: Sequence[bytes] = ()) -> None:
        super().__init__(b".".join(labels))
        self.labels = tuple(labels)

    def encode(self, strio, compDict=None) -> None:
        strio.write(b"".join(bytes([len(label)]) + label for label in self.labels) + b"\x00")


def wire_labels(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """The labels of the name at C{offset} in C{data} and where its in-place part ends."""
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


def labels_of(name: dns.Name) -> Sequence[bytes]:
    """
    The labels of a L{WireName}, or of a name decoded from a message (its
    C{wire}: the message and the name's offset, read when first needed);
    a plain L{dns.Name} split at its dots.
    """
    labels = getattr(name, "labels", None)
    if labels is None:
        wire = getattr(name, "wire", None)
        if wire is not None:
            labels = name.labels = wire_labels(*wire)[0]
        else:
            labels = [label for label in name.name.split(b".") if label]
    return labels


def same_name(a: dns.Name, b: dns.Name) -> bool:
    """Equal as DNS compares names: label by label, ASCII case ignored."""
    la, lb = labels_of(a), labels_of(b)
    return len(la) == len(lb) and all(x.lower() == y.lower() for x, y in zip(la, lb))


# Bytes dig prints as they are in a name.
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in _NAME_SPECIALS)


def _escape_label(label: bytes) -> str:
    if not label.translate(None, _PLAIN):
        return label.decode("ascii")
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
    """A twisted.names L{dns.Name} as dig prints it (see L{labels_of})."""
    return format_labels(labels_of(name))
