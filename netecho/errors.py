"""
Errors meant for users, worded in one place: one line on stderr, exit 100
(2 is for usage errors, which argparse reports itself).
"""

from __future__ import annotations


import os

from twisted.internet import error

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILURE = 100


class UserError(Exception):
    """A failure a user can act on; C{str()} is the whole line shown."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (error.TimeoutError, TimeoutError)):
        return "i/o timeout"
    if isinstance(exc, error.DNSLookupError):
        return "no such host"
    if isinstance(exc, error.ConnectError) and isinstance(exc.osError, int):
        return os.strerror(exc.osError).lower()
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, error.ConnectionClosed):
        return "connection closed by the server"
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0]


def dial_error(network: str, target: str, exc: BaseException) -> UserError:
    """
    A failed connection, worded as Go words it:
    C{dial tcp 127.0.0.1:1024: connection refused},
    C{dial unix /run/x.sock: connect: no such file or directory}.
    """
    if isinstance(exc, error.DNSLookupError):
        host = target.rpartition(":")[0].strip("[]")
        return UserError(f"dial {network}: lookup {host}: no such host")
    middle = "connect: " if network == "unix" else ""
    return UserError(f"dial {network} {target}: {middle}{_reason(exc)}")


def io_error(op: str, network: str, target: str, exc: BaseException) -> UserError:
    """A failed read or write on an open connection (C{read tcp HOST:PORT: ...})."""
    return UserError(f"{op} {network} {target}: {_reason(exc)}")



