"""
The files in deploy/ against the real tools: systemd-analyze (verify and
security), systemd-socket-activate handing TCP, Unix and UDP sockets to the
real daemon, sd_notify on a test NOTIFY_SOCKET, HAProxy with the PROXY
protocol in front of two daemons and in front of one daemon with --workers, and
a tshark capture on loopback (deploy/Containerfile and deploy/kubernetes/:
tests/integration/test_orchestrator.py).

Everything listens on 127.0.0.1 (or a Unix path in a fresh temporary
directory); every subprocess is killed in cleanup; every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SkipTest, TestCase

from tests import peers
from tests.integration.harness import Daemon

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "deploy")
INSTALLED_TWISTD = "/opt/netecho/bin/twistd"
SOCKET_UNITS = ("netecho.socket", "netecho-unix.socket", "netecho-udp.socket")
SERVICE_UNITS = ("netecho.service", "netecho-activated.service", "netecho@.service")
UNITS = SERVICE_UNITS + SOCKET_UNITS
# systemd-analyze security's levels, best first; MEDIUM or better passes.
GOOD_LEVELS = ("OK", "LOW", "MEDIUM")


def venv_twistd() -> str:
    """The twistd script next to the Python running the tests."""
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.path.exists(path):
        raise SkipTest(f"no twistd next to {sys.executable}: install netecho into this virtualenv")
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody uses on 127.0.0.1 right now (TCP, or UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports() -> int:
    """A port free for TCP and UDP alike on 127.0.0.1."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both TCP and UDP")


def unit_lines(path: str) -> list[tuple[int, str, str, str]]:
    """(line number, section, key, value) of every assignment in a unit file."""
    out = []
    section = ""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith(("#", ";")):
                continue
            if text.startswith("["):
                section = text.strip("[]")
                continue
            key, _, value = text.partition("=")
            out.append((number, section, key.strip(), value.strip()))
    return out


def unit_values(path: str, key: str) -> list[str]:
    return [value for _, _, k, value in unit_lines(path) if k == key]


def connect_retry(family: int, address, timeout: float = 10) -> socket.socket:
    """Connect, retrying while the listener is not there yet (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(address)
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            s.close()
            raise


def stream_echo(family: int, address, data: bytes, timeout: float = 10) -> bytes:
    """Send C{data}, half-close, read everything back."""
    with connect_retry(family, address, timeout) as s:
        s.settimeout(timeout)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def udp_echo(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send C{data} to 127.0.0.1:port until a reply comes (bounded)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        while True:
            try:
                s.sendto(data, ("127.0.0.1", port))
                reply, source = s.recvfrom(70000)
                if source[1] == port:
                    return reply
            except (TimeoutError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"no UDP reply from 127.0.0.1:{port} within {timeout}s")


class CommandDaemon(Daemon):
    """
    The daemon started by a command line of our own: C{prefix} (e.g.
    systemd-socket-activate ..., which binds the sockets and execs twistd at
    the first client), then C{twistd} with C{twistd_args}, then netecho and
    its options. Same log reading as L{Daemon}; its stderr also holds
    systemd-socket-activate's lines.
    """

    def __init__(self, testcase, prefix: list[str], *args: str,
                 twistd_args: tuple[str, ...] = ("--nodaemon", "--pidfile="), twistd: str | None = None,
                 **kwargs):
        super().__init__(testcase, *args, **kwargs)
        self.prefix = prefix
        self.twistd_args = list(twistd_args)
        #: The twistd to run (default: the tests' virtualenv's).
        self.twistd = twistd

    def command(self) -> list[str]:
        return [*self.prefix, self.twistd or venv_twistd(), *self.twistd_args, "netecho", *self.args]

    def start(self, wait_ready: bool = False, timeout: float = 15) -> "CommandDaemon":
        return super().start(wait_ready, timeout)


def _cannot_start(user: list[str], python: str) -> str | None:
    """Why C{user} cannot start C{python} and import netecho as the daemon starts its workers, or None."""
    spawn = "import os, sys; os.execv(sys.executable, [sys.executable, '-c', 'import netecho.tap'])"
    probe = subprocess.run([*user, python, "-c", spawn], cwd="/", capture_output=True, text=True, timeout=60)
    return None if probe.returncode == 0 else (probe.stderr.strip().splitlines() or ["?"])[-1]


def python_for(testcase, user: list[str], who: str) -> str:
    """
    A Python with netecho installed (its plugin cache written) that C{user}
    (a setpriv prefix; C{who} names it in messages) can start: the tests'
    own, or, when that sits where others cannot enter (a checkout and
    virtualenv in a 0700 directory, or a Python under /root), a virtualenv
    of the system's python3 with this checkout installed, made for the test
    in a directory everyone can read (as an image or a package installs
    into /opt or /usr).
    """
    why = _cannot_start(user, sys.executable)
    if why is None:
        python = sys.executable
    else:
        system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
        if system is None:
            raise SkipTest(f"{who} cannot start this Python ({why}) and there is no system python3")
        base = tempfile.mkdtemp(prefix="netecho-other-user-", dir="/var/tmp")
        testcase.addCleanup(shutil.rmtree, base, True)
        os.chmod(base, 0o755)
        venv = os.path.join(base, "venv")
        made = subprocess.run([system, "-m", "venv", venv], capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            raise SkipTest(f"{who} cannot start this Python ({why}) and '{system} -m venv' failed: "
                           + (made.stderr.strip().splitlines() or ["?"])[-1])
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", root],
                             capture_output=True, text=True, timeout=900)
        testcase.assertEqual(pip.returncode, 0, f"pip install {root} into {venv}:\n{pip.stdout}{pip.stderr}")
        python = os.path.join(venv, "bin", "python")
        why = _cannot_start(user, python)
        testcase.assertIsNone(why, f"{who} cannot start {python} either: {why}")
    subprocess.run([os.path.join(os.path.dirname(python), "netecho"), "plugin-cache"], cwd="/", check=True,
                   capture_output=True, timeout=60)
    return python


def socket_activate() -> str:
    return peers.require("systemd-socket-activate", "systemd")


class UnitFileTests(TestCase):
    """deploy/*.service and *.socket as systemd reads them."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-units-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def copy_units(self, twistd: str) -> str:
        """
        The units in a fresh directory, ExecStart's twistd pointed at
        C{twistd} (VENV/bin/twistd) by exactly the sed deploy/README.md
        gives for verifying the units from a checkout.
        """
        target = tempfile.mkdtemp(dir=self.dir)
        for name in UNITS:
            shutil.copy(os.path.join(DEPLOY, name), target)
        venv = os.path.dirname(os.path.dirname(twistd))
        subprocess.run(["sh", "-c", f"sed -i 's|/opt/netecho/|{venv}/|' *.service"], cwd=target, check=True,
                       timeout=30)
        with open(os.path.join(target, "netecho.service")) as f:
            self.assertIn(f"ExecStart={twistd} ", f.read())
        return target

    def analyze(self, *args: str, cwd: str) -> subprocess.CompletedProcess:
        analyze = peers.require("systemd-analyze", "systemd")
        return subprocess.run(
            [analyze, *args], cwd=cwd, capture_output=True, text=True, timeout=30,
            env=dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="cat", LC_ALL="C.UTF-8"),
        )

    def test_no_inline_comments(self):
        """A '#' after a value would be part of the value (systemd has no inline comments)."""
        for name in UNITS:
            for number, _, key, value in unit_lines(os.path.join(DEPLOY, name)):
                self.assertNotIn("#", value, f"{name}:{number}: {key}= has an inline comment")

    def test_units_all_start_the_installed_twistd(self):
        for name in SERVICE_UNITS:
            (start,) = unit_values(os.path.join(DEPLOY, name), "ExecStart")
            self.assertTrue(
                start.startswith(f"{INSTALLED_TWISTD} --nodaemon --pidfile= --logfile=- netecho "),
                f"{name}: ExecStart={start}",
            )

    def test_verify(self):
        """
        Every unit passes systemd-analyze verify with nothing on stderr.

        No running systemd is needed: verify loads the given files (and the
        units next to them, for Service= and Sockets=) in a private manager;
        a DynamicUser unit needs no real user. No --man=no is needed either
        (no unit has man: Documentation=).
        """
        units = self.copy_units(venv_twistd())
        for name in UNITS:
            out = self.analyze("verify", os.path.join(units, name), cwd=units)
            self.assertEqual(
                (out.returncode, out.stderr), (0, ""), f"systemd-analyze verify {name}: {out.stdout}"
            )

    def test_verify_instance(self):
        """The template verified as a concrete instance, netecho@1.service."""
        units = self.copy_units(venv_twistd())
        out = self.analyze("verify", "netecho@1.service", cwd=units)
        self.assertEqual((out.returncode, out.stderr), (0, ""), out.stdout)

    def test_verify_has_teeth(self):
        """The check above would see an unknown key, an inline comment and a missing binary."""
        units = self.copy_units(venv_twistd())
        path = os.path.join(units, "netecho.service")
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("[Service]\n", "[Service]\nNoSuchKey=1\nRestartSec=2s  # x\n"))
        out = self.analyze("verify", path, cwd=units)
        self.assertEqual(out.returncode, 0)  # the trap: unknown keys do not fail verify
        self.assertIn("Unknown key 'NoSuchKey'", out.stderr)
        self.assertIn("2s  # x", out.stderr)
        missing = self.copy_units(os.path.join(self.dir, "no-such-venv", "bin", "twistd"))
        out = self.analyze("verify", os.path.join(missing, "netecho.service"), cwd=missing)
        self.assertEqual(out.returncode, 1)
        self.assertIn("not executable", out.stderr)

    def test_security_medium_or_better(self):
        """systemd-analyze security --offline=true rates every service MEDIUM or better."""
        units = self.copy_units(venv_twistd())
        for name in SERVICE_UNITS:
            out = self.analyze("security", "--offline=true", os.path.join(units, name), cwd=units)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out.stdout)
            self.assertIsNotNone(m, f"no exposure level for {name}:\n{out.stdout}\n{out.stderr}")
            self.assertIn(m.group(2), GOOD_LEVELS, f"{name}: exposure {m.group(1)} {m.group(2)}:\n{out.stdout}")

    def test_activation_names_match(self):
        """
        Each socket unit names its descriptor (FileDescriptorName= is per
        unit, so three names need three units) and the activated service
        adopts exactly those names, from exactly those units.
        """
        names = {}
        for name in SOCKET_UNITS:
            path = os.path.join(DEPLOY, name)
            (fdname,) = unit_values(path, "FileDescriptorName")
            self.assertEqual(unit_values(path, "Service"), ["netecho-activated.service"], name)
            names[fdname] = name
        self.assertEqual(sorted(names), ["tcp", "udp", "unix"])
        service = os.path.join(DEPLOY, "netecho-activated.service")
        self.assertEqual(unit_values(service, "Sockets")[0].split(), list(SOCKET_UNITS))
        self.assertEqual(unit_values(service, "NonBlocking"), ["yes"])
        (start,) = unit_values(service, "ExecStart")
        for option in ("--tcp systemd:domain=INET6:name=tcp", "--unix systemd:domain=UNIX:name=unix",
                       "--udp systemd:udp"):
            self.assertIn(option, start)
        self.assertTrue(unit_values(os.path.join(DEPLOY, "netecho-unix.socket"), "ListenStream")[0]
                        .startswith("/run/netecho/"))
        self.assertEqual(unit_values(service, "RuntimeDirectory"), [])

    def test_example_environment_parses(self):
        """deploy/netecho.env's NETECHO_ARGS, split as systemd splits $NETECHO_ARGS, are valid options."""
        from netecho.tap import Options

        values = {}
        with open(os.path.join(DEPLOY, "netecho.env")) as f:
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    key, _, value = line.strip().partition("=")
                    values[key] = shlex.split(value)[0] if value.startswith('"') else value
        args = values["NETECHO_ARGS"].split()
        options = Options()
        options.parseOptions(args)
        self.assertTrue(options["listeners"])


class SocketActivationTests(TestCase):
    """systemd-socket-activate binds; the daemon adopts the sockets by name."""

    def setUp(self):
        self.activate = socket_activate()
        self.dir = tempfile.mkdtemp(prefix="netecho-act-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def daemon(self, prefix: list[str], *args: str, **kwargs) -> CommandDaemon:
        return CommandDaemon(self, [self.activate, *prefix], *args, **kwargs).start()

    def assert_clean_stop(self, daemon: CommandDaemon) -> str:
        code = daemon.stop()
        # twistd ends by re-raising SIGTERM: systemd counts that as clean.
        self.assertEqual(code, -signal.SIGTERM, daemon.log_text() + daemon.stderr)
        return daemon.wait_for("summary: ")

    def test_tcp(self):
        port = free_port()
        d = self.daemon(["-l", f"127.0.0.1:{port}", "--fdname=tcp"],
                        "--tcp", "systemd:domain=INET:name=tcp")
        data = os.urandom(200_000)
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", port), data), data)
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", port), b"again\n"), b"again\n")
        d.wait_for(f"--tcp systemd:domain=INET:name=tcp: listening on 127.0.0.1:{port}")
        self.assertIn(" tcp=2 ", self.assert_clean_stop(d))

    def test_unix(self):
        path = os.path.join(self.dir, "echo.sock")
        d = self.daemon(["-l", path, "--fdname=unix"], "--unix", "systemd:domain=UNIX:name=unix")
        self.assertEqual(stream_echo(socket.AF_UNIX, path, b"over unix\n"), b"over unix\n")
        d.wait_for(f"listening on unix:{path}")
        self.assertIn(" unix=1 ", self.assert_clean_stop(d))

    def test_udp(self):
        """Several datagrams: a blocking inherited fd would hang after the first."""
        port = free_port(socket.SOCK_DGRAM)
        d = self.daemon(["--datagram", "-l", f"127.0.0.1:{port}", "--fdname=udp"],
                        "--udp", "systemd:udp")
        for i in range(5):
            self.assertEqual(udp_echo(port, b"datagram %d" % i), b"datagram %d" % i)
        d.wait_for(f"--udp systemd:udp: listening on 127.0.0.1:{port}")
        self.assertIn(" datagrams_echoed=5 ", self.assert_clean_stop(d))

    def test_tcp_with_workers(self):
        """
        --workers 2 on systemd's socket: the parent adopts it and both
        workers accept from that one socket (systemd keeps it, so no
        SO_REUSEPORT group of netecho's own); the stop is clean.
        """
        port = free_port()
        d = self.daemon(["-l", f"127.0.0.1:{port}", "--fdname=tcp"],
                        "--workers", "2", "--tcp", "systemd:domain=INET:name=tcp")
        for i in range(10):  # the first connection starts the daemon
            data = b"activated %d\n" % i
            self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", port), data), data)
        d.wait_for("netecho ready")
        log = d.log_text()
        self.assertIn("worker 2 serving", log)
        self.assertNotIn("a listening socket for each worker", log)
        self.assertIn(" tcp=10 ", self.assert_clean_stop(d))

    def test_wrapped_systemd_socket_with_workers(self):
        """
        --workers 2 on systemd's socket wrapped in the PROXY protocol
        (haproxy:systemd:...): the workers adopt the parent's socket (they
        never see systemd's names), parse the header and log the client it
        names; the parent makes no SO_REUSEPORT group on systemd's socket.
        """
        port = free_port()
        d = self.daemon(["-l", f"127.0.0.1:{port}", "--fdname=tcp"],
                        "--workers", "2", "--max-per-ip", "0",
                        "--tcp", "haproxy:systemd:domain=INET:name=tcp")
        for i in range(6):
            header = b"PROXY TCP4 198.51.100.%d 192.0.2.1 4000%d 7\r\n" % (i + 1, i)
            with connect_retry(socket.AF_INET, ("127.0.0.1", port), 10) as s:  # (the first starts it)
                s.settimeout(10)
                s.sendall(header + b"proxied %d\n" % i)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    reply += chunk
            self.assertEqual(reply, b"proxied %d\n" % i)
            d.wait_for(f"echo tcp 198.51.100.{i + 1}:4000{i} closed after")
        log = d.log_text()
        self.assertNotIn("a listening socket for each worker", log)
        self.assertNotIn("Traceback", log + d.stderr)
        self.assertIn(" tcp=6 ", self.assert_clean_stop(d))

    def test_all_three_in_one_daemon(self):
        """
        TCP, Unix and UDP handed to one daemon, as the socket units do.
        systemd-socket-activate's --datagram applies to all its sockets, so
        an outer one binds UDP and execs an inner one, which binds TCP and
        Unix, passes the inherited descriptor through (first) and names all
        three in order (--fdname=udp:tcp:unix).
        """
        port = free_ports()
        path = os.path.join(self.dir, "echo.sock")
        d = self.daemon(
            ["--datagram", "-l", f"127.0.0.1:{port}", "--",
             self.activate, "-l", f"127.0.0.1:{port}", "-l", path, "--fdname=udp:tcp:unix"],
            "--tcp", "systemd:domain=INET:name=tcp",
            "--unix", "systemd:domain=UNIX:name=unix",
            "--udp", "systemd:udp",
        )
        # The outer program execs the inner one at the first datagram, and
        # the inner one sees that datagram waiting: one datagram starts both.
        self.assertEqual(udp_echo(port, b"udp\n"), b"udp\n")
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", port), b"tcp\n"), b"tcp\n")
        self.assertEqual(stream_echo(socket.AF_UNIX, path, b"unix\n"), b"unix\n")
        line = d.wait_for("netecho ready")
        for label in ("--tcp systemd:domain=INET:name=tcp", "--unix systemd:domain=UNIX:name=unix",
                      "--udp systemd:udp"):
            self.assertIn(label, line)
        summary = self.assert_clean_stop(d)
        for field in (" tcp=1 ", " unix=1 ", " udp_peers=1 "):
            self.assertIn(field, summary)

    def test_unix_socket_left_to_systemd(self):
        """
        The Unix socket belongs to the socket unit: the daemon must neither
        chmod it (SocketMode= decides) nor remove it on stop (systemd keeps
        listening on it and hands it to the next start of the service).
        """
        path = os.path.join(self.dir, "echo.sock")
        d = self.daemon(["-l", path, "--fdname=unix"], "--unix", "systemd:domain=UNIX:name=unix")
        deadline = time.monotonic() + 10
        while not os.path.exists(path):
            self.assertLess(time.monotonic(), deadline, "systemd-socket-activate did not bind")
            time.sleep(0.05)
        os.chmod(path, 0o660)  # as SocketMode=0660 would
        self.assertEqual(stream_echo(socket.AF_UNIX, path, b"hi\n"), b"hi\n")
        d.wait_for("netecho ready")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        self.assertEqual(oct(mode), oct(0o660), "the daemon changed the mode of systemd's socket")
        self.assert_clean_stop(d)
        self.assertTrue(os.path.exists(path), "the daemon removed systemd's socket file on stop")

    def test_unix_socket_owned_by_root(self):
        """
        Under DynamicUser=yes the daemon is not the owner of the socket file
        the socket unit created (as root): adopting it must still work.
        """
        peers.require_root("switching to an unprivileged user, as DynamicUser=yes does")
        setpriv = peers.require("setpriv", "util-linux")
        cwd = tempfile.mkdtemp(prefix="netecho-act-cwd-")
        self.addCleanup(shutil.rmtree, cwd, True)
        os.chmod(cwd, 0o755)
        unprivileged = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        python = python_for(self, unprivileged, "uid 65534")
        path = os.path.join(self.dir, "echo.sock")
        os.chmod(self.dir, 0o755)
        d = self.daemon(
            ["-l", path, "--fdname=unix", "--", *unprivileged],
            "--unix", "systemd:domain=UNIX:name=unix",
            cwd=cwd, twistd=os.path.join(os.path.dirname(python), "twistd"),
        )
        try:
            reply = stream_echo(socket.AF_UNIX, path, b"hi\n")
        except OSError as e:
            reply = repr(e)
        self.assertEqual(reply, b"hi\n", d.log_text() + "\n" + d.stderr)
        self.assert_clean_stop(d)


class NotifyTests(TestCase):
    """sd_notify to a NOTIFY_SOCKET of our own, as systemd's Type=notify does."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-notify-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_message(self, wanted: str, timeout: float = 15) -> None:
        """Receive notifications until one has the line C{wanted}."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {wanted} within {timeout}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode("utf-8", "replace")
            except TimeoutError:
                continue
            self.messages.append(data)
            if wanted in data.split("\n"):
                return

    def test_ready_then_stopping(self):
        port = free_port()
        d = Daemon(self, "--tcp", f"tcp:{port}:interface=127.0.0.1",
                   env={"NOTIFY_SOCKET": self.path}).start(wait_ready=False)
        self.wait_message("READY=1")
        # Right after READY=1, with no retry: the port must accept already.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"ready\n")
            self.assertEqual(s.recv(100), b"ready\n")
        self.assertEqual(sum("READY=1" in m.split("\n") for m in self.messages), 1)
        self.assertFalse(any("STOPPING=1" in m for m in self.messages), self.messages)
        d.signal(signal.SIGTERM)
        self.wait_message("STOPPING=1")
        self.assertEqual(d.wait(), -signal.SIGTERM)


class UnitCommandLineTests(TestCase):
    """netecho.service's own ExecStart and ExecReload, run by hand."""

    def test_exec_start_and_reload(self):
        """
        ExecStart's twistd options as written (--logfile=- for the journal),
        with NETECHO_ARGS split at whitespace as systemd splits an unbraced
        $NETECHO_ARGS; ExecReload's SIGHUP keeps it serving; SIGTERM ends it
        the way systemd counts as clean.
        """
        (start,) = unit_values(os.path.join(DEPLOY, "netecho.service"), "ExecStart")
        words = start.split()
        self.assertEqual(words[0], INSTALLED_TWISTD)
        at = words.index("netecho")
        self.assertEqual(words[at + 1:], ["$NETECHO_ARGS"])
        (reload_,) = unit_values(os.path.join(DEPLOY, "netecho.service"), "ExecReload")
        self.assertEqual(reload_, "/bin/kill -HUP $MAINPID")
        netecho_args = "--tcp tcp:0:interface=127.0.0.1 --udp 127.0.0.1:0"
        d = CommandDaemon(self, [], *netecho_args.split(), twistd_args=tuple(words[1:at]))
        d.start(wait_ready=True)
        port = d.port("--tcp tcp:0:interface=127.0.0.1")
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", port), b"before\n"), b"before\n")
        d.signal(signal.SIGHUP)
        d.wait_for("SIGHUP")
        self.assertIsNone(d.proc.poll())
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", port), b"after\n"), b"after\n")
        self.assertEqual(d.stop(), -signal.SIGTERM)
        self.assertIn(" tcp=2 ", d.wait_for("summary: "))


class HAProxyRig:
    """A real HAProxy on a config of deploy/, in front of daemons of the test's own."""

    def setUp(self):
        self.haproxy = peers.require("haproxy", "haproxy")
        self.dir = tempfile.mkdtemp(prefix="netecho-haproxy-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def config(self, front: int, backends: list[int], name: str = "haproxy.cfg") -> str:
        """deploy/NAME bound to 127.0.0.1:front, its servers on our ports."""
        with open(os.path.join(DEPLOY, name)) as f:
            text = f.read()
        text, binds = re.subn(r"(?m)^(\s*bind) \S+.*$", rf"\1 127.0.0.1:{front}", text)
        self.assertEqual(binds, 1)
        servers = iter(backends)
        text, count = re.subn(r"(?m)^(\s*server \S+) 127\.0\.0\.1:\d+",
                              lambda m: f"{m.group(1)} 127.0.0.1:{next(servers)}", text)
        self.assertEqual(count, len(backends), f"deploy/{name} should name {len(backends)} server(s)")
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_haproxy(self, cfg: str) -> subprocess.Popen:
        check = subprocess.run([self.haproxy, "-c", "-f", cfg], capture_output=True, text=True, timeout=10)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        proc = subprocess.Popen([self.haproxy, "-db", "-f", cfg], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        self.addCleanup(stop)
        return proc

    def start_front(self, cfg: str) -> int:
        """HAProxy on C{cfg}, once it accepts; its front end's port."""
        with open(cfg) as f:
            front = int(re.search(r"(?m)^\s*bind 127\.0\.0\.1:(\d+)", f.read()).group(1))
        proc = self.start_haproxy(cfg)
        deadline = time.monotonic() + 10
        while True:  # until HAProxy listens (a connect without data logs nothing)
            self.assertIsNone(proc.poll(), "haproxy exited")
            try:
                socket.create_connection(("127.0.0.1", front), timeout=5).close()
                return front
            except ConnectionRefusedError:
                self.assertLess(time.monotonic(), deadline, "haproxy does not accept")
                time.sleep(0.05)


class HAProxyTests(HAProxyRig, TestCase):
    """deploy/haproxy.cfg in front of two daemons, with the PROXY protocol."""

    def start_pair(self) -> tuple[list[Daemon], int]:
        """Two daemons behind HAProxy; the front end's port."""
        label = "--tcp haproxy:tcp:0:interface=127.0.0.1"
        # As deploy/haproxy.cfg says to run them (--max-per-ip would count HAProxy).
        daemons = [Daemon(self, *label.split(" ", 1), "--max-per-ip", "0").start() for _ in range(2)]
        return daemons, self.start_front(self.config(free_port(), [d.port(label) for d in daemons]))

    def test_two_instances_see_the_real_client(self):
        """
        Echo works through HAProxy, connections are spread over both
        instances, and each instance logs the client's own address and port
        (from the PROXY header), not HAProxy's.
        """
        daemons, front = self.start_pair()
        served = set()
        for i in range(4):
            with socket.create_connection(("127.0.0.1", front), timeout=5) as s:
                host, port = s.getsockname()
                data = b"through haproxy %d\n" % i
                s.sendall(data)
                reply = b""
                while len(reply) < len(data):
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    reply += chunk
                self.assertEqual(reply, data)
            wanted = f"echo tcp {host}:{port} closed after"
            deadline = time.monotonic() + 10
            while not any(wanted in d.log_text() for d in daemons):
                if time.monotonic() > deadline:
                    self.fail(f"no instance logged {wanted!r}; logs:\n"
                              + "\n---\n".join(d.log_text() for d in daemons))
                time.sleep(0.05)
            served.update(n for n, d in enumerate(daemons) if wanted in d.log_text())
        self.assertEqual(served, {0, 1}, "HAProxy did not use both instances")

    def test_half_close_through_haproxy(self):
        """A client that half-closes (nc -N) still gets its whole echo through HAProxy."""
        daemons, front = self.start_pair()
        data = os.urandom(100_000)
        self.assertEqual(stream_echo(socket.AF_INET, ("127.0.0.1", front), data), data)


class HAProxyWorkersTests(HAProxyRig, TestCase):
    """deploy/haproxy-workers.cfg in front of one daemon with --workers 2."""

    def test_workers_see_the_real_client(self):
        """
        Through HAProxy (PROXY protocol) to one daemon with 2 workers: every
        echo comes back, both workers serve, and the workers log each
        client's own address and port (they parse the PROXY header).
        """
        label = "--tcp haproxy:tcp:0:interface=127.0.0.1"
        d = Daemon(self, "--workers", "2", *label.split(" ", 1), "--max-per-ip", "0").start()
        front = self.start_front(self.config(free_port(), [d.port(label)], "haproxy-workers.cfg"))
        clients = []
        for i in range(20):
            data = b"through haproxy to a worker %d\n" % i
            with socket.create_connection(("127.0.0.1", front), timeout=5) as s:
                clients.append("%s:%d" % s.getsockname()[:2])
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while True:
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    reply += chunk
            self.assertEqual(reply, data)
        served = {}
        deadline = time.monotonic() + 10
        while len(served) < len(clients):
            self.assertLess(time.monotonic(), deadline, f"not every client logged: {served}\n{d.log_text()}")
            for line in d.log_text().splitlines():
                m = re.search(r"worker (\d): echo tcp (\S+) closed after", line)
                if m and m.group(2) in clients:
                    served[m.group(2)] = m.group(1)
            time.sleep(0.05)
        self.assertEqual(set(served.values()), {"1", "2"}, "both workers should serve")
        self.assertEqual(d.stop(), -signal.SIGTERM)


class CaptureTests(TestCase):
    """A tshark capture on the loopback interface while a client talks to the daemon."""

    def test_handshake_and_echo_on_the_wire(self):
        tshark = peers.require("tshark", "tshark")
        d = Daemon(self, "--tcp", "tcp:0:interface=127.0.0.1").start()
        port = d.port("--tcp tcp:0:interface=127.0.0.1")
        # Live, line-buffered fields on stdout: we see what was captured as it
        # is captured, so nothing depends on a file being flushed. "port P"
        # also matches our UDP probes (nobody listens there on UDP).
        proc = subprocess.Popen(
            [tshark, "-i", "lo", "-f", f"port {port}", "-l", "-a", "duration:30",
             "-T", "fields", "-E", "separator=,",
             "-e", "udp.dstport", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags",
             "-e", "tcp.payload"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        self.addCleanup(stop)
        lines: list[str] = []
        stderr: list[str] = []
        cond = threading.Condition()

        def read(stream, into):
            for line in stream:
                with cond:
                    into.append(line.rstrip("\n"))
                    cond.notify_all()
            with cond:
                cond.notify_all()

        threading.Thread(target=read, args=(proc.stdout, lines), daemon=True).start()
        threading.Thread(target=read, args=(proc.stderr, stderr), daemon=True).start()

        def wait(predicate, what: str, timeout: float = 10, poke=None) -> None:
            deadline = time.monotonic() + timeout
            with cond:
                while not predicate():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        text = "\n".join(stderr)
                        if proc.poll() is not None and os.geteuid() != 0 and "ermission" in text:
                            raise SkipTest(f"tshark cannot capture on lo without privileges: {text}")
                        self.fail(f"tshark: no {what} within {timeout}s; stdout:\n"
                                  + "\n".join(lines) + "\nstderr:\n" + text)
                    if poke is not None:
                        cond.release()
                        try:
                            poke()
                        finally:
                            cond.acquire()
                    cond.wait(0.1)

        # "Capturing on 'Loopback: lo'" comes before the filter is in place:
        # probe with UDP datagrams until tshark shows one.
        def probe():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"probe", ("127.0.0.1", port))

        wait(lambda: any("Capturing on" in line for line in stderr), "'Capturing on' on stderr")
        wait(lambda: any(line.startswith(str(port)) for line in lines), "probe seen", poke=probe)

        payload = b"netecho on the wire " + os.urandom(6).hex().encode() + b"\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            client = s.getsockname()[1]
            s.sendall(payload)
            reply = b""
            while len(reply) < len(payload):
                chunk = s.recv(100)
                if not chunk:
                    break
                reply += chunk
        self.assertEqual(reply, payload)

        def packets():
            out = []
            for line in list(lines):
                _, src, dst, flags, data = (line.split(",") + [""] * 5)[:5]
                if src and client in (int(src), int(dst)):
                    out.append((int(src), int(dst), int(flags, 16) & 0x3F,
                                bytes.fromhex(data.replace(":", ""))))
            return out

        FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
        # Both FINs seen: the whole exchange is in.
        wait(lambda: sum(1 for p in packets() if p[2] & FIN) >= 2, "FIN from both sides")
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        mine = packets()
        self.assertEqual(
            [p[:3] for p in mine[:3]],
            [(client, port, SYN), (port, client, SYN | ACK), (client, port, ACK)],
            "packets:\n" + "\n".join(lines),
        )
        self.assertEqual(b"".join(p[3] for p in mine if p[0] == client), payload)
        self.assertEqual(b"".join(p[3] for p in mine if p[0] == port), payload)
        self.assertTrue(any(p[0] == port and p[2] & PSH and p[3] == payload for p in mine))
