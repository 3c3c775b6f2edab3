"""Running netecho's command-line clients as a user would, and independent servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from tests import peers


def netecho(*args: str, input: bytes | None = b"", timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the installed C{netecho} command (from outside the checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "netecho", *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
    )


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_connectable(connect, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Socat:
    """An echo server written independently of netecho: socat with cat."""

    def __init__(self, testcase, kind: str):
        exe = peers.require("socat", "socat")
        self.path = None
        if kind == "tcp":
            self.port = free_port()
            spec = f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr"
        elif kind == "udp":
            self.port = free_port(socket.SOCK_DGRAM)
            spec = f"UDP-RECVFROM:{self.port},bind=127.0.0.1,fork"
        else:
            self.path = os.path.join(tempfile.mkdtemp(prefix="netecho-socat-"), "s")
            spec = f"UNIX-LISTEN:{self.path},fork"
        self.proc = subprocess.Popen([exe, spec, "EXEC:cat"], stderr=subprocess.DEVNULL)
        testcase.addCleanup(self.close)
        if kind == "tcp":
            wait_connectable(lambda: socket.create_connection(("127.0.0.1", self.port), 1).close())
        elif kind == "unix":
            def connect():
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.path)
            wait_connectable(connect)
        else:
            time.sleep(0.3)  # UDP: nothing to connect to; give socat a moment to bind

    @property
    def address(self) -> str:
        return self.path or f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
