"""
Turning ``--tcp/--udp/--unix/...`` values into listening services.

A bare PORT becomes a dual-stack (IPv6 and IPv4) listener, or a loopback one
for services not made for untrusted networks; anything else is a Twisted
server endpoint description. Every listener that cannot start stops the
daemon with one line naming it (L{ListenerError}), never a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass

from twisted.application import service
from twisted.internet import defer, endpoints, error, fdesc, interfaces
from twisted.python import failure
from twisted.logger import Logger

from netecho.address import ipv6_available, join_host_port, parse_port, split_host_port, unmap
from netecho.datagram import MAX_DATAGRAM
from netecho.transports import (
    LIVENESS_PROBE,
    InheritedUNIXEndpoint,
    inherited_sockets,
    unix_socket_path,
)

log = Logger()


class ListenerError(Exception):
    """A listener could not start; the message is the line users see."""


#: The listen backlog where net.core.somaxconn cannot be read (Linux's
#: default for it since 5.4).
FALLBACK_BACKLOG = 4096

#: SO_RCVBUFFORCE (Linux; Python names it only from 3.12 on).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)


def default_backlog(path: str = "/proc/sys/net/core/somaxconn") -> int:
    """The kernel's cap on listen backlogs (net.core.somaxconn), else 4096."""
    try:
        with open(path) as f:
            value = int(f.read())
    except (OSError, ValueError):
        return FALLBACK_BACKLOG
    return value if value > 0 else FALLBACK_BACKLOG


def _escape(text: str) -> str:
    """Quote a value for use inside an endpoint description."""
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _fields(description: str) -> list[str]:
    """The colon-separated fields of an endpoint description, escapes kept."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in description:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            fields.append("".join(current))
            current = []
            continue
        current.append(ch)
    fields.append("".join(current))
    return fields


def _keyword(description: str, name: str) -> str | None:
    """The value of C{name=...} in an endpoint description, or None."""
    for field in _fields(description)[1:]:
        key, eq, value = field.partition("=")
        if eq and key == name:
            return value
    return None


def with_backlog(description: str, backlog: int | None) -> str:
    """
    C{description} with C{backlog=} added, if its endpoint type takes one
    (tcp, tcp6, unix, ssl, haproxy:...; not systemd:, whose socket is
    already listening) and the description has none of its own.
    """
    if backlog is None or _keyword(description, "backlog") is not None:
        return description
    candidate = f"{description}:backlog={backlog}"
    try:
        endpoints.serverFromString(None, candidate)
    except Exception:  # this endpoint type takes no backlog
        return description
    return candidate


def unix_socket_mode(description: str) -> int | None:
    """The file mode a C{unix:} (or C{haproxy:unix:}) description binds with; None for others."""
    fields = _fields(description)
    if fields[0] == "haproxy":
        fields = fields[1:]
    if not fields or fields[0] != "unix":
        return None
    mode = _keyword(":".join(fields), "mode")
    try:
        return int(mode, 8) if mode is not None else 0o666  # Twisted's default
    except ValueError:
        return None


@contextmanager
def umask_at_most(mode: int | None):
    """
    Run the block with a umask that lets new files be at most C{mode}
    (the current umask tightened, never loosened), so that a Unix socket is
    never more open than its mode between bind() and Twisted's chmod().
    """
    if mode is None:
        yield
        return
    old = os.umask(0o777)
    os.umask(old | (~mode & 0o777))
    try:
        yield
    finally:
        os.umask(old)


@dataclass(frozen=True)
class Listener:
    """
    One listener as given on the command line.

    @ivar option: the option's name without dashes (``tcp``, ``unix``...).
    @ivar value: what the user typed.
    @ivar description: the Twisted endpoint description it stands for
        (for UDP: C{PORT}, C{HOST:PORT} or C{systemd:NAME}, as typed).
    """

    option: str
    value: str
    description: str

    @property
    def label(self) -> str:
        """The listener as the user wrote it, for messages."""
        return f"--{self.option} {self.value}"


def stream_listener(
    option: str, value: str, loopback_only: bool = False, backlog: int | None = None
) -> Listener:
    """
    The listener for C{--tcp}, C{--random}, C{--pb}, C{--metrics} values,
    with C{backlog} (L{with_backlog}) unless None.

    @raise ValueError: the value is neither a port nor a valid endpoint.
    """
    port = parse_port(value)
    if port is None and value.lstrip("-").isdigit():
        raise ValueError("port out of range (0-65535)")
    if port is not None:
        if loopback_only:
            description = f"tcp:{port}:interface=127.0.0.1"
        elif ipv6_available():
            # tcp6 on :: accepts IPv4 peers too (as ::ffff:a.b.c.d).
            description = f"tcp6:{port}:interface=\\:\\:"
        else:
            description = f"tcp:{port}"
    else:
        description = value
    _check_endpoint(value, description)
    return Listener(option, value, with_backlog(description, backlog))


def unix_listener(value: str, mode: int, backlog: int | None = None) -> Listener:
    """
    The listener for a C{--unix} value: a path, or an endpoint description
    (C{unix:...}, C{systemd:...}). A path or a C{unix:} endpoint without its
    own C{mode=} gets C{mode}; and C{backlog} as L{stream_listener} does.
    """
    if value.startswith("unix:"):
        description = value
        if ":mode=" not in value:
            description += f":mode={mode:o}"
    elif value.startswith("systemd:") or (":" in value and not value.startswith(("/", "."))):
        description = value
    else:
        if not value:
            raise ValueError("empty path")
        description = f"unix:{_escape(value)}:mode={mode:o}:lockfile=1"
    _check_endpoint(value, description)
    return Listener("unix", value, with_backlog(description, backlog))


def udp_listener(value: str) -> Listener:
    """The listener for a C{--udp} value: C{PORT}, C{HOST:PORT} or C{systemd:NAME}."""
    if value.startswith("systemd:"):
        if not value[len("systemd:") :]:
            raise ValueError("systemd: needs the socket's name (FileDescriptorName=)")
    elif parse_port(value) is None:
        if value.lstrip("-").isdigit():
            raise ValueError("port out of range (0-65535)")
        split_host_port(value)
    return Listener("udp", value, value)


def _check_endpoint(value: str, description: str) -> None:
    # Parsing binds nothing; it catches unknown types, bad parameters and
    # missing TLS files while a UsageError can still say so. A systemd:
    # endpoint depends on the sockets inherited when the daemon starts: it
    # is checked then (StreamListenerService).
    if systemd_endpoint(description) is not None:
        return
    try:
        endpoints.serverFromString(None, description)
    except Exception as e:
        raise ValueError(f"not a port or a server endpoint description: {_endpoint_problem(e)}") from None


def _endpoint_problem(e: Exception) -> str:
    """What Twisted's endpoint parser objected to, without Python's wording."""
    text = str(e)
    literal = re.search(r"invalid literal for int\(\) with base \d+: (.*)$", text)
    if literal:
        return f"{literal.group(1)} is not a number"
    if isinstance(e, KeyError):
        return f"no {text}"
    return text or type(e).__name__


def systemd_endpoint(description: str) -> str | None:
    """
    The C{systemd:...} endpoint in a description: the description itself,
    or the one a wrapper wraps (C{haproxy:systemd:domain=INET:name=tcp});
    None when its socket does not come from systemd.
    """
    if description.startswith("systemd:"):
        return description
    at = description.find(":systemd:")
    return description[at + 1:] if at >= 0 else None


def inherited_problem(description: str) -> str | None:
    """
    For a C{systemd:...:name=NAME} description, wrapped or not (or a bare
    C{systemd:NAME} for UDP), why it cannot be served: no inherited socket
    of that name.
    """
    part = systemd_endpoint(description)
    if part is None:
        return None
    rest = part[len("systemd:"):]
    params = dict(p.partition("=")[::2] for p in rest.split(":") if "=" in p)
    name = params.get("name") if params else rest
    if not name:
        return None
    named = inherited_sockets()
    if name in named:
        return None
    known = ", ".join(sorted(named)) or "none"
    return f"no inherited socket named {name!r} (inherited: {known})"


def _reason(exc: BaseException) -> str:
    """The short, lower-case reason in an exception from listen()."""
    if isinstance(exc, error.CannotListenError):
        inner = exc.socketError
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
        if inner == "Cannot acquire lock":
            return "in use by a live server (its lock file is held)"
        return str(inner)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or exc.__class__.__name__


def _bound(label: str, port: object, own_ports: set[int]) -> None:
    host = port.getHost()
    if hasattr(host, "port"):
        own_ports.add(host.port)
        where = join_host_port(unmap(host.host), host.port)
    else:
        name = host.name.decode() if isinstance(host.name, bytes) else host.name
        where = f"unix:{name}"
    log.info("{label}: listening on {where}", label=label, where=where)


class StreamListenerService(service.Service):
    """
    A stream listener that fails fast (as C{strports.service} does) with a
    L{ListenerError} naming it, and logs where it listens.
    """

    def __init__(self, reactor, listener: Listener, factory, own_ports: set[int]) -> None:
        #: Why this listener cannot start (an inherited socket that is not
        #: there), said when it starts, as for any listener that cannot.
        self.problem = inherited_problem(listener.description)
        self.endpoint = None
        if self.problem is None:
            try:
                self.endpoint = endpoints.serverFromString(reactor, listener.description)
            except Exception as e:
                self.problem = _endpoint_problem(e)
        if (
            isinstance(self.endpoint, endpoints.AdoptedStreamServerEndpoint)
            and self.endpoint.addressFamily == socket.AF_UNIX
        ):
            self.endpoint = InheritedUNIXEndpoint(reactor, self.endpoint.fileno)
        self.factory = factory
        self.listener = listener
        self.own_ports = own_ports
        self.port = None
        self.setName(listener.label)

    def privilegedStartService(self) -> None:
        if self.problem is not None:
            raise ListenerError(f"cannot listen on {self.listener.label}: {self.problem}")
        path = unix_socket_path(self.endpoint)
        if path is not None:
            reclaim_unix_path(path, self.listener.label)
        outcome: list = []
        with umask_at_most(unix_socket_mode(self.listener.description)):
            d = self.endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], failure.Failure):
            e = outcome[0].value
            raise ListenerError(f"cannot listen on {self.listener.label}: {_reason(e)}") from e
        if outcome:
            self._bound(outcome[0])
        else:  # an endpoint that listens later: its failure can only be logged
            d.addCallbacks(self._bound, lambda f: log.failure("cannot listen on {label}", f, label=self.listener.label))
        service.Service.privilegedStartService(self)

    def _bound(self, port) -> None:
        self.port = port
        _bound(self.listener.label, port, self.own_ports)

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)


def reclaim_unix_path(path: str, label: str) -> None:
    """
    Make C{path} free for a new Unix socket. A socket nobody accepts on is
    stale whatever its lock file (C{PATH.lock}) says: the PID there may
    have been reused by an unrelated process since its server was killed
    (or be PID 1 in a container). Decide first, delete after: a live
    socket or anything that is not a socket is refused and nothing is
    removed; a stale socket and its stale lock are removed.

    @raise ListenerError: the path is in use or is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ListenerError(f"cannot listen on {label}: {e.strerror.lower()}") from None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenerError(
                f"cannot listen on {label}: {path} exists and is not a socket (not replacing it)"
            )
        if _accepting(path, label):
            raise ListenerError(f"cannot listen on {label}: in use by a live server")
    # Decided: nobody accepts on path.
    _remove_stale_lock(path + ".lock", label)
    if st is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        log.info("{label}: removed stale socket {path}", label=label, path=path)


def _probe_socket() -> socket.socket:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if sys.platform.startswith("linux"):
        try:
            probe.bind(LIVENESS_PROBE + f":{os.getpid()}:{os.urandom(4).hex()}".encode())
        except OSError:
            pass  # unnamed, as any client (and counted as one by the server)
    return probe


def _accepting(path: str, label: str) -> bool:
    """
    Whether a server accepts on the Unix socket at C{path}: connect, send
    nothing, close. The probe names itself (L{LIVENESS_PROBE}), so that a
    live netecho there does not count it as a client served.
    """
    probe = _probe_socket()
    probe.settimeout(2)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise ListenerError(f"cannot listen on {label}: permission denied") from None
        return True  # a timeout: a live but busy server
    finally:
        probe.close()
    return True


def _remove_stale_lock(lock: str, label: str) -> None:
    # Twisted's lock (twisted.python.lockfile) is a symbolic link naming
    # the PID; anything else there is not ours to delete.
    try:
        pid = os.readlink(lock)
    except OSError:
        return
    try:
        os.unlink(lock)
    except FileNotFoundError:
        return
    log.info(
        "{label}: removed stale lock {lock} (PID {pid} does not accept on the socket)",
        label=label, lock=lock, pid=pid,
    )


def set_receive_buffer(sock: socket.socket, size: int, only_raise: bool = False) -> int:
    """
    Ask for a C{size}-byte receive buffer: as root with SO_RCVBUFFORCE,
    which may pass net.core.rmem_max, else (or if refused) with SO_RCVBUF,
    which the kernel caps at it. With C{only_raise}, a buffer already that
    large (a socket systemd made with ReceiveBuffer=) is left alone.

    @return: the receive buffer the kernel reports now (Linux: twice what
        it granted, the other half being room for its bookkeeping).
    """
    if only_raise:
        current = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if current >= _reported(size):
            return current
    forced = False
    if SO_RCVBUFFORCE is not None and os.geteuid() == 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            forced = True
        except OSError:
            pass  # no CAP_NET_ADMIN after all (a user namespace): the capped way
    if not forced:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def _reported(size: int) -> int:
    """What SO_RCVBUF reports once C{size} bytes were granted in full."""
    return 2 * size if sys.platform.startswith("linux") else size


class DatagramListenerService(service.Service):
    """
    A UDP listener (Twisted has no datagram endpoint strings): a port on
    every interface, C{HOST:PORT}, or a socket inherited from systemd by name.
    """

    def __init__(
        self, reactor, listener: Listener, protocol, own_ports: set[int], rcvbuf: int = 0
    ) -> None:
        self.reactor = reactor
        self.listener = listener
        self.protocol = protocol
        self.own_ports = own_ports
        self.rcvbuf = rcvbuf
        self.port = None
        self.setName(listener.label)

    def privilegedStartService(self) -> None:
        try:
            self.port = self._listen()
        except ListenerError:
            raise
        except Exception as e:
            raise ListenerError(f"cannot listen on {self.listener.label}: {_reason(e)}") from e
        _bound(self.listener.label, self.port, self.own_ports)
        if self.rcvbuf:
            self._set_receive_buffer()
        service.Service.privilegedStartService(self)

    def _set_receive_buffer(self) -> None:
        label = self.listener.label
        inherited = self.listener.description.startswith("systemd:")
        try:
            granted = set_receive_buffer(self.port.getHandle(), self.rcvbuf, only_raise=inherited)
        except OSError as e:
            log.warn("{label}: cannot set the receive buffer: {why}", label=label, why=_reason(e))
            return
        capped = "" if granted >= _reported(self.rcvbuf) else "; net.core.rmem_max caps it"
        log.info(
            "{label}: receive buffer {granted} bytes (asked for {asked}{capped})",
            label=label, granted=granted, asked=self.rcvbuf, capped=capped,
        )

    def _listen(self):
        value = self.listener.description
        reactor = self.reactor
        if value.startswith("systemd:"):
            return self._adopt(value[len("systemd:") :])
        port = parse_port(value)
        if port is not None:
            host = "::" if ipv6_available() else ""
        else:
            host, port = split_host_port(value)
        return reactor.listenUDP(port, self.protocol, interface=host, maxPacketSize=MAX_DATAGRAM)

    def _adopt(self, name: str):
        problem = inherited_problem(f"systemd:{name}")
        if problem is not None:
            raise ListenerError(f"cannot listen on {self.listener.label}: {problem}")
        fd = inherited_sockets()[name]
        sock = socket.socket(fileno=os.dup(fd))
        try:
            if sock.type != socket.SOCK_DGRAM:
                raise ListenerError(
                    f"cannot listen on {self.listener.label}: inherited socket {name!r} "
                    "is not a datagram socket"
                )
            family = sock.family
        finally:
            sock.close()
        # A blocking inherited fd would hang the reactor after one datagram.
        fdesc.setNonBlocking(fd)
        if not interfaces.IReactorSocket.providedBy(self.reactor):
            raise ListenerError(f"cannot listen on {self.listener.label}: reactor cannot adopt sockets")
        return self.reactor.adoptDatagramPort(fd, family, self.protocol, MAX_DATAGRAM)

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
