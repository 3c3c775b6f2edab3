"""
DNS as dig shows it in text: record types by name and number, record
data as C{dig +short} prints it, response codes and header flags, and the
C{;; Query time} lines of C{--stats}.

A type without a presentation format here is printed in RFC 3597's generic
form (C{\\# 4 0A000001}), which is what dig prints for a type it does not
know (and for every type with C{+unknownformat}).
"""

from __future__ import annotations

import base64
import socket
import struct
import time
from typing import Callable, Iterable

from twisted.names import dns

from netecho.dns.names import format_labels, format_name, wire_labels

#: Record types by their IANA mnemonic (the registry of RFC 6895).
TYPES: dict[str, int] = {
    "A": 1, "NS": 2, "MD": 3, "MF": 4, "CNAME": 5, "SOA": 6, "MB": 7, "MG": 8, "MR": 9, "NULL": 10,
    "WKS": 11, "PTR": 12, "HINFO": 13, "MINFO": 14, "MX": 15, "TXT": 16, "RP": 17, "AFSDB": 18,
    "X25": 19, "ISDN": 20, "RT": 21, "NSAP": 22, "NSAP-PTR": 23, "SIG": 24, "KEY": 25, "PX": 26,
    "GPOS": 27, "AAAA": 28, "LOC": 29, "NXT": 30, "EID": 31, "NIMLOC": 32, "SRV": 33, "ATMA": 34,
    "NAPTR": 35, "KX": 36, "CERT": 37, "A6": 38, "DNAME": 39, "SINK": 40, "OPT": 41, "APL": 42,
    "DS": 43, "SSHFP": 44, "IPSECKEY": 45, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "DHCID": 49,
    "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52, "SMIMEA": 53, "HIP": 55, "NINFO": 56, "RKEY": 57,
    "TALINK": 58, "CDS": 59, "CDNSKEY": 60, "OPENPGPKEY": 61, "CSYNC": 62, "ZONEMD": 63,
    "SVCB": 64, "HTTPS": 65, "DSYNC": 66, "SPF": 99, "UINFO": 100, "UID": 101, "GID": 102,
    "UNSPEC": 103, "NID": 104, "L32": 105, "L64": 106, "LP": 107, "EUI48": 108, "EUI64": 109,
    "TKEY": 249, "TSIG": 250, "IXFR": 251, "AXFR": 252, "MAILB": 253, "MAILA": 254, "ANY": 255,
    "URI": 256, "CAA": 257, "AVC": 258, "DOA": 259, "AMTRELAY": 260, "RESINFO": 261,
    "WALLET": 262, "TA": 32768, "DLV": 32769,
}
_TYPE_NAMES = {code: name for name, code in TYPES.items()}

#: Types a lookup cannot ask for (zone transfers are not lookups).
NOT_ASKED = frozenset({"AXFR", "IXFR"})

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS"}

#: How an error code reads in a failure (C{lookup NAME on SERVER: ...}).
RCODE_ERRORS = {
    dns.EFORMAT: "format error (FORMERR)",
    dns.ESERVER: "server failure (SERVFAIL)",
    dns.ENOTIMP: "not implemented (NOTIMP)",
    dns.EREFUSED: "query refused (REFUSED)",
    16: "unsupported EDNS version (BADVERS)",
}


def type_code(text: str) -> int | None:
    """C{MX} -> 15, C{TYPE65} -> 65 (any case); None for neither."""
    text = text.upper()
    if text in TYPES:
        return TYPES[text]
    if text.startswith("TYPE") and text[4:].isascii() and text[4:].isdigit() and len(text) <= 9:
        number = int(text[4:])
        if 0 <= number <= 0xFFFF:
            return number
    return None


def type_name(code: int) -> str:
    """The mnemonic of C{code}, or C{TYPEnnn} (RFC 3597) for one without."""
    return _TYPE_NAMES.get(code) or f"TYPE{code}"


def rcode_name(code: int) -> str:
    """C{NOERROR}, C{NXDOMAIN}, ... or C{RCODEnn}."""
    return RCODES.get(code) or f"RCODE{code}"


def flags(message: dns.Message) -> list[str]:
    """The header flags set, in dig's order (C{qr aa tc rd ra ad cd})."""
    pairs = (("qr", message.answer), ("aa", message.auth), ("tc", message.trunc), ("rd", message.recDes),
             ("ra", message.recAv), ("ad", message.authenticData), ("cd", message.checkingDisabled))
    return [name for name, value in pairs if value]


# --- record data -------------------------------------------------------------


def _character_string(string: bytes) -> str:
    out = []
    for byte in string:
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def format_txt(strings: Iterable[bytes]) -> str:
    """TXT strings as dig prints them: quoted, C{\\"} and C{\\\\}, C{\\DDD} for the rest."""
    return " ".join(_character_string(s) for s in strings)


def _chunks(text: str) -> str:
    # dig splits long hex and base64 into words of 56 characters.
    return " ".join(text[i : i + 56] for i in range(0, len(text), 56))


def _hex(data: bytes) -> str:
    return _chunks(data.hex().upper())


def _b64(data: bytes) -> str:
    return _chunks(base64.b64encode(data).decode("ascii"))


def generic(rdata: bytes) -> str:
    """RFC 3597's form: C{\\# LENGTH HEX} (C{\\# 0} for no data)."""
    if not rdata:
        return "\\# 0"
    return f"\\# {len(rdata)} {_hex(rdata)}"


def _soa(p) -> str:
    # twisted.names decodes three of the five as signed; dig shows unsigned.
    numbers = (p.serial, p.refresh, p.retry, p.expire, p.minimum)
    return " ".join([format_name(p.mname), format_name(p.rname)] + [str(n & 0xFFFFFFFF) for n in numbers])


def _naptr(p) -> str:
    strings = " ".join(_character_string(s.string) for s in (p.flags, p.service, p.regexp))
    return f"{p.order} {p.preference} {strings} {format_name(p.replacement)}"


# Formats of the record classes twisted.names decodes, by type.
_DECODED: dict[int, Callable] = {
    dns.A: lambda p: socket.inet_ntop(socket.AF_INET, p.address),
    dns.AAAA: lambda p: socket.inet_ntop(socket.AF_INET6, p.address),
    dns.NS: lambda p: format_name(p.name),
    dns.CNAME: lambda p: format_name(p.name),
    dns.PTR: lambda p: format_name(p.name),
    dns.DNAME: lambda p: format_name(p.name),
    dns.MD: lambda p: format_name(p.name),
    dns.MF: lambda p: format_name(p.name),
    dns.MB: lambda p: format_name(p.name),
    dns.MG: lambda p: format_name(p.name),
    dns.MR: lambda p: format_name(p.name),
    dns.MINFO: lambda p: f"{format_name(p.rmailbx)} {format_name(p.emailbx)}",
    dns.RP: lambda p: f"{format_name(p.mbox)} {format_name(p.txt)}",
    dns.AFSDB: lambda p: f"{p.subtype} {format_name(p.hostname)}",
    dns.MX: lambda p: f"{p.preference} {format_name(p.name)}",
    dns.TXT: lambda p: format_txt(p.data),
    dns.SPF: lambda p: format_txt(p.data),
    dns.HINFO: lambda p: f"{_character_string(p.cpu)} {_character_string(p.os)}",
    dns.SOA: _soa,
    dns.SRV: lambda p: f"{p.priority} {p.weight} {p.port} {format_name(p.target)}",
    dns.NAPTR: _naptr,
    dns.SSHFP: lambda p: f"{p.algorithm} {p.fingerprintType} {_hex(p.fingerprint)}",
}


def _type_bitmap(data: bytes) -> str:
    """The types of an NSEC/NSEC3 bitmap (RFC 4034 4.1.2), by name."""
    names = []
    i = 0
    while i + 2 <= len(data):
        window, length = data[i], data[i + 1]
        bits = data[i + 2 : i + 2 + length]
        for byte_index, byte in enumerate(bits):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    names.append(type_name(window * 256 + byte_index * 8 + bit))
        i += 2 + length
    return " ".join(names)


def _wks(data: bytes) -> str:
    """WKS (RFC 1035 3.4.2) as dig prints it: address, protocol number, the ports of the bitmap."""
    if len(data) < 5:
        raise ValueError("short WKS")
    ports = [str(i * 8 + bit) for i, byte in enumerate(data[5:]) for bit in range(8) if byte & (0x80 >> bit)]
    return " ".join([socket.inet_ntop(socket.AF_INET, data[:4]), str(data[4]), *ports])


def _a6(data: bytes) -> str:
    """A6 (RFC 2874) as dig prints it: prefix length, address suffix (unless 128), prefix name (unless 0)."""
    prefix_len = data[0]
    if prefix_len > 128:
        raise ValueError("A6 prefix length over 128")
    size = (128 - prefix_len + 7) // 8
    suffix = data[1 : 1 + size]
    if len(suffix) != size:
        raise ValueError("short A6")
    words = [str(prefix_len)]
    if prefix_len < 128:
        words.append(socket.inet_ntop(socket.AF_INET6, bytes(16 - size) + suffix))
    if prefix_len > 0:
        labels, end = wire_labels(data, 1 + size)
        if end != len(data):
            raise ValueError("A6 data after the prefix name")
        words.append(format_labels(labels))
    return " ".join(words)


# Formats from the record's wire data, for types twisted.names keeps raw
# (and WKS and A6, whose decoded form loses nothing but is easier read raw).
_RAW: dict[int, Callable[[bytes], str]] = {
    dns.WKS: _wks,
    TYPES["A6"]: _a6,
    TYPES["DS"]: lambda d: "{} {} {} {}".format(*struct.unpack("!HBB", d[:4]), _hex(d[4:])),
    TYPES["CDS"]: lambda d: "{} {} {} {}".format(*struct.unpack("!HBB", d[:4]), _hex(d[4:])),
    TYPES["DNSKEY"]: lambda d: "{} {} {} {}".format(*struct.unpack("!HBB", d[:4]), _b64(d[4:])),
    TYPES["CDNSKEY"]: lambda d: "{} {} {} {}".format(*struct.unpack("!HBB", d[:4]), _b64(d[4:])),
    TYPES["TLSA"]: lambda d: "{} {} {} {}".format(*d[:3], _hex(d[3:])),
    TYPES["SMIMEA"]: lambda d: "{} {} {} {}".format(*d[:3], _hex(d[3:])),
    TYPES["OPENPGPKEY"]: _b64,
}


def _rrsig(data: bytes) -> str:
    covered, alg, labels, ttl, expire, incept, tag = struct.unpack("!HBBIIIH", data[:18])
    signer, end = wire_labels(data, 18)
    stamp = lambda t: time.strftime("%Y%m%d%H%M%S", time.gmtime(t))  # noqa: E731
    return (f"{type_name(covered)} {alg} {labels} {ttl} {stamp(expire)} {stamp(incept)} {tag} "
            f"{format_labels(signer)} {_b64(data[end:])}")


def _nsec(data: bytes) -> str:
    following, end = wire_labels(data, 0)
    return f"{format_labels(following)} {_type_bitmap(data[end:])}".rstrip()


def _caa(data: bytes) -> str:
    flags, length = data[0], data[1]
    return f"{flags} {data[2:2 + length].decode('ascii', 'replace')} {_character_string(data[2 + length:])}"


def _nsec3param(data: bytes) -> str:
    algorithm, flags, iterations, length = struct.unpack("!BBHB", data[:5])
    salt = data[5 : 5 + length]
    return f"{algorithm} {flags} {iterations} {salt.hex().upper() or '-'}"


def _nsec3(data: bytes) -> str:
    head = _nsec3param(data)
    at = 5 + data[4]
    length = data[at]
    following = base64.b32hexencode(data[at + 1 : at + 1 + length]).decode("ascii").rstrip("=")
    return f"{head} {following} {_type_bitmap(data[at + 1 + length:])}".rstrip()


# SvcParamKeys dig 9.18 names (RFC 9460); others print as keyNNNNN.
_SVC_KEYS = {0: "mandatory", 1: "alpn", 2: "no-default-alpn", 3: "port", 4: "ipv4hint", 5: "ech", 6: "ipv6hint"}


def _svc_key(key: int) -> str:
    return _SVC_KEYS.get(key) or f"key{key}"


def _alpn_id(value: bytes) -> str:
    # Inside the quoted list a comma or backslash in an ID is escaped twice (RFC 9460 A.1).
    return _character_string(value)[1:-1].replace(",", "\\\\,")


def _svc_param(key: int, value: bytes) -> str:
    name = _svc_key(key)
    if key == 0:
        keys = struct.unpack(f"!{len(value) // 2}H", value)
        return f"{name}={','.join(_svc_key(k) for k in keys)}"
    if key == 1:
        ids, i = [], 0
        while i < len(value):
            ids.append(_alpn_id(value[i + 1 : i + 1 + value[i]]))
            i += 1 + value[i]
        return f'{name}="{",".join(ids)}"'
    if key == 2 and not value:
        return name
    if key == 3:
        return f"{name}={struct.unpack('!H', value)[0]}"
    if key == 4:
        return f"{name}={','.join(socket.inet_ntop(socket.AF_INET, value[i:i + 4]) for i in range(0, len(value), 4))}"
    if key == 6:
        return f"{name}={','.join(socket.inet_ntop(socket.AF_INET6, value[i:i + 16]) for i in range(0, len(value), 16))}"
    if key == 5:
        return f"{name}={base64.b64encode(value).decode('ascii')}"
    return f"{name}={_character_string(value)}"


def _svcb(data: bytes) -> str:
    """SVCB and HTTPS (RFC 9460): priority, target, then each parameter as dig prints it."""
    (priority,) = struct.unpack("!H", data[:2])
    target, at = wire_labels(data, 2)
    words = [str(priority), format_labels(target)]
    while at < len(data):
        key, length = struct.unpack("!HH", data[at : at + 4])
        value = data[at + 4 : at + 4 + length]
        if len(value) != length:
            raise ValueError("parameter runs past the record")
        words.append(_svc_param(key, value))
        at += 4 + length
    return " ".join(words)


def _uri(data: bytes) -> str:
    priority, weight = struct.unpack("!HH", data[:4])
    return f"{priority} {weight} {_character_string(data[4:])}"


_RAW[TYPES["SVCB"]] = _svcb
_RAW[TYPES["HTTPS"]] = _svcb
_RAW[TYPES["URI"]] = _uri
_RAW[TYPES["RRSIG"]] = _rrsig
_RAW[TYPES["NSEC3"]] = _nsec3
_RAW[TYPES["NSEC3PARAM"]] = _nsec3param
_RAW[TYPES["NSEC"]] = _nsec
_RAW[TYPES["CAA"]] = _caa


def format_rdata(rtype: int, payload, rdata: bytes | None = None) -> str:
    """
    The data of one record as C{dig +short} prints it: C{payload} is what
    twisted.names decoded, C{rdata} the record's bytes on the wire (needed
    for types twisted.names does not decode, and for the generic form).
    """
    decoded = _DECODED.get(rtype)
    if decoded is not None and not isinstance(payload, dns.UnknownRecord):
        return decoded(payload)
    if rdata is None:
        rdata = getattr(payload, "data", b"")
    raw = _RAW.get(rtype)
    if raw is not None:
        try:
            return raw(rdata)
        except (IndexError, ValueError, struct.error):
            pass  # data that does not fit its type: shown as it came
    return generic(rdata)


def format_record(payload) -> str:
    """The rdata of a twisted.names record object (see L{format_rdata})."""
    rtype = getattr(payload, "TYPE", None)
    if rtype not in _DECODED and rtype is not None:
        raise ValueError(f"no format for {payload!r}")
    return format_rdata(rtype, payload)


# --- --stats ---------------------------------------------------------------------


def stats_lines(query_time: float, server: tuple[str, int], transport: str, size: int, when: float) -> list[str]:
    """dig's closing lines: query time, server, when, size of the reply."""
    host, port = server
    return [
        f";; Query time: {int(query_time * 1000)} msec",
        f";; SERVER: {host}#{port}({host}) ({transport})",
        f";; WHEN: {time.strftime('%a %b %d %H:%M:%S %Z %Y', time.localtime(when))}",
        f";; MSG SIZE  rcvd: {size}",
    ]
