"""The real daemon (``twistd -n netecho``) as a subprocess on loopback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

LISTENING = re.compile(r"(--\S+ \S+): listening on (\S+)$")


def split_address(where: str) -> tuple[str, int] | str:
    """C{'[::]:1234'} -> C{('::', 1234)}; C{'unix:/p'} -> C{'/p'}."""
    if where.startswith("unix:"):
        return where[5:]
    host, _, port = where.rpartition(":")
    return host.strip("[]"), int(port)


def twistd_command() -> list[str]:
    """The twistd of the Python running the tests (the virtualenv's)."""
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Daemon:
    """
    Runs the installed netecho under twistd, from a directory outside the
    checkout (so the installed package is what runs), and reads its log.
    Listeners should use port 0: the daemon logs the port it got.
    """

    def __init__(self, testcase, *args: str, env: dict | None = None, cwd: str | None = None):
        self.args = list(args)
        self.cwd = cwd or tempfile.mkdtemp(prefix="netecho-daemon-")
        self.env = dict(os.environ, **(env or {}))
        self.lines: list[str] = []
        self.stderr = ""
        self.listening: dict[str, object] = {}
        self._cond = threading.Condition()
        self._eof = False  # the reader thread has read the log to its end
        self.proc: subprocess.Popen | None = None
        testcase.addCleanup(self.kill)

    def command(self) -> list[str]:
        """The command line that starts the daemon."""
        return [*twistd_command(), "--nodaemon", "--pidfile=", "netecho", *self.args]

    def start(self, wait_ready: bool = True, timeout: float = 15) -> "Daemon":
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # A shell that ran the suite in the background (cmd &) made
            # SIGINT ignored, and Twisted installs no handler for an ignored
            # SIGINT: give the daemon the default a terminal would.
            preexec_fn=_default_sigint,
            text=True,
            errors="backslashreplace",
        )
        threading.Thread(target=self._read, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        if wait_ready:
            self.wait_for("netecho ready", timeout)
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                m = LISTENING.search(line)
                if m:
                    self.listening[m.group(1)] = split_address(m.group(2))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        self.stderr = self.proc.stderr.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def address(self, label: str):
        """Where the listener given as C{label} (e.g. C{'--tcp 0'}) listens."""
        return self.listening[label]

    def port(self, label: str) -> int:
        return self.address(label)[1]

    def wait_for(self, text: str, timeout: float = 10) -> str:
        """Wait until a log line contains C{text}; return it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                # A process that has ended may still have lines in the pipe:
                # give up early only once the reader has seen its end.
                if left <= 0 or (self._eof and seen == len(self.lines)):
                    raise AssertionError(
                        f"no log line with {text!r} within {timeout}s; "
                        f"exit={self.proc.poll()}; log:\n" + "\n".join(self.lines)
                        + "\nstderr:\n" + self.stderr
                    )
                self._cond.wait(min(left, 0.2))

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15) -> int:
        """Wait for the process to end; return its exit status."""
        code = self.proc.wait(timeout)
        self._stderr_thread.join(5)
        # Let the reader thread take the last lines (a worker the daemon
        # left behind could hold the pipe open: bounded).
        deadline = time.monotonic() + 5
        with self._cond:
            while not self._eof and time.monotonic() < deadline:
                self._cond.wait(0.1)
        return code

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then wait; return the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def rss_kib(self) -> int:
        """The daemon's resident memory (VmRSS), in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
