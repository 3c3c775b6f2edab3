"""Readiness and stopping notifications for systemd (``Type=notify``)."""

from __future__ import annotations

import os
import socket
from typing import Mapping


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (e.g. C{"READY=1"}) to C{$NOTIFY_SOCKET}, if set.

    @return: whether a notification was sent.
    """
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        # Abstract namespace socket.
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
