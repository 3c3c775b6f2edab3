"""Addresses as users write them and as logs show them (daemon and clients)."""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache

from twisted.internet import address as _address


def unmap(host: str) -> str:
    """
    Return ``a.b.c.d`` for an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``),
    which is how IPv4 peers of a dual-stack socket appear; any other host
    unchanged.
    """
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host (as Go prints it)."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def describe(addr: object) -> str:
    """A short, log-friendly form of a Twisted address object."""
    if isinstance(addr, (_address.IPv4Address, _address.IPv6Address)):
        return join_host_port(unmap(addr.host), addr.port)
    if isinstance(addr, _address.UNIXAddress):
        name = addr.name
        if isinstance(name, bytes):
            name = name.decode("utf-8", "backslashreplace")
        return f"unix:{name}" if name else "unix:@peer"
    if isinstance(addr, _address.HostnameAddress):
        host = addr.hostname.decode("ascii", "replace")
        return join_host_port(host, addr.port)
    return str(addr)


def parse_port(text: str) -> int | None:
    """The port number in ``text`` if it is a bare decimal port, else None."""
    if text.isdigit() and text.isascii():
        port = int(text)
        if port <= 65535:
            return port
    return None


def split_host_port(text: str) -> tuple[str, int]:
    """
    Split ``HOST:PORT`` or ``[IPV6]:PORT``.

    @raise ValueError: with a sentence a user can act on.
    """
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not HOST:PORT ([IPv6]:PORT for IPv6)")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{text!r} is not HOST:PORT ([IPv6]:PORT for IPv6)")
    port = parse_port(port_text)
    if port is None:
        if port_text.lstrip("-").isdigit():
            raise ValueError("port out of range (0-65535)")
        raise ValueError(f"{port_text!r} in {text!r} is not a port number (0-65535)")
    if not host:
        raise ValueError(f"{text!r} has no host")
    return host, port


def is_ip(host: str) -> bool:
    """True if ``host`` is an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1)
def ipv6_available() -> bool:
    """True if this host can open an IPv6 socket (bare ports go dual-stack)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
    except OSError:
        return False
    return True
