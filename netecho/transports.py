"""
Where netecho's speed lives: transports and ports that serve any Twisted
protocol (echo, random, PB, TLS and PROXY wrappers alike) with fewer
system calls and less Python per message. netecho's reactor
(L{netecho.reactor}) listens with them; on any other reactor Twisted's own
are used and everything behaves the same, only slower.

 - Stream writes go straight to the socket when nothing is buffered.
   Twisted's C{write()} holds every byte until the next reactor iteration
   (Twisted issue 5303): one more epoll round, two epoll_ctl() calls and
   the latency of a whole iteration per reply.
 - TCP connections have Nagle's algorithm off (as Go's do): an echo's
   replies are the application's own message boundaries.
 - Unix connections whose protocol does not take file descriptors read
   with C{recv()} instead of C{recvmsg()}, which costs more; the kernel
   discards descriptors sent to a reader that does not ask for them.
 - UDP ports read a batch of datagrams per C{recvmmsg()} (with
   netecho._speedups; otherwise one C{recvmsg()} a datagram, whole up to
   64 KiB), IPv4, IPv6 and dual-stack alike; send the replies to a full
   batch by one C{sendmmsg()} (for protocols that take late send failures);
   write a reply to the datagram just read without re-validating its
   address; and count what the kernel dropped (C{SO_RXQ_OVFL}).

Also here, because they touch sockets and Twisted's buffers: what a policy
may ask of a stream connection (L{peer_gone}, L{peer_credentials},
L{unsent_bytes}, L{reset_connection}), and the port for Unix sockets
inherited from systemd.

With L{netecho.reactor}, this module holds the private Twisted API the
speed needs; each use says why (rpc.py and daemon.py lean on Twisted
internals too, for what Twisted offers no hook for). setup.cfg bounds
Twisted to the release the tests pass on.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys
import termios
from errno import EAGAIN, ECONNREFUSED, EINTR, EMSGSIZE, EWOULDBLOCK
from functools import lru_cache

from twisted.internet import abstract, defer, endpoints, error, fdesc, interfaces, main, tcp, udp, unix
from twisted.logger import Logger

try:
    # recvmmsg() and sendmmsg() in C (netecho/_speedups.c), where it could be built.
    from netecho._speedups import recv_datagrams, send_datagrams
except ImportError:  # pragma: no cover - depends on the build
    recv_datagrams = send_datagrams = None

log = Logger()

#: Datagrams read per recvmmsg() call (netecho._speedups reads at most 16).
BATCH = 16

#: Read errors that end a UDP read turn without closing the port: nothing
#: left, interrupted, or an ICMP "port unreachable" from an earlier reply.
_READ_IGNORED = frozenset((EAGAIN, EWOULDBLOCK, EINTR, ECONNREFUSED))


class _EagerWrites:
    """
    For L{tcp.Connection} subclasses: C{write()} tries C{send()} first when
    nothing is waiting to be written, and buffers only what the kernel did
    not take, through Twisted's own C{write()} (so ordering, flow control,
    producers and error reporting stay Twisted's). C{doRead()} is
    Twisted's in one frame instead of two.
    """

    def doRead(self):
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as e:
            return None if e.errno == EWOULDBLOCK else main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def write(self, data: bytes) -> None:
        # Private: _tempDataLen/dataBuffer are FileDescriptor's write
        # buffer, _writeDisconnected its half-close state (abstract.py);
        # nothing public says whether bytes are waiting.
        if (
            self._tempDataLen
            or self.dataBuffer
            or self._writeDisconnected
            or not self.connected
            or self.TLS  # after startTLS(), writes go through the TLS layer (Twisted's write)
            or type(data) is not bytes
        ):
            return super().write(data)
        try:
            sent = self._send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error Twisted's write path will meet and report
        if sent < len(data):
            super().write(data[sent:])

    def __init__(self, sock, *args) -> None:
        super().__init__(sock, *args)
        self._send = sock.send


class TCPServer(_EagerWrites, tcp.Server):
    """A TCP server connection with eager writes and TCP_NODELAY."""

    def __init__(self, sock, protocol, client, server, sessionno, reactor) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, protocol, client, server, sessionno, reactor)


class UNIXServer(_EagerWrites, unix.Server):
    """A Unix server connection with eager writes, reading with recv()."""


class UNIXDescriptorServer(_EagerWrites, unix.Server):
    """A Unix server connection with eager writes, for protocols that take descriptors."""

    doRead = unix.Server.doRead  # recvmsg(), for the descriptors


#: The transports whose doRead() netecho's reactor may do in C
#: (netecho._speedups.poll_dispatch: the same recv() and dataReceived()).
DIRECT_READS = (TCPServer, UNIXServer)


def _unix_server(sock, protocol, client, server, sessionno, reactor):
    kind = UNIXDescriptorServer if interfaces.IFileDescriptorReceiver.providedBy(protocol) else UNIXServer
    return kind(sock, protocol, client, server, sessionno, reactor)


class TCPPort(tcp.Port):
    """A TCP listening port whose connections are L{TCPServer}s."""

    transport = TCPServer


class UNIXPort(unix.Port):
    """A Unix listening port whose connections are L{UNIXServer}s."""

    transport = staticmethod(_unix_server)


@lru_cache(maxsize=1024)
def _address_family(host: str) -> int | None:
    """The family of an IP address literal; None for anything else (a host name)."""
    if abstract.isIPAddress(host):
        return socket.AF_INET
    if abstract.isIPv6Address(host):
        return socket.AF_INET6
    return None


#: setsockopt() option (Linux only): every datagram read carries the
#: socket's count of datagrams the kernel dropped for want of buffer space.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40 if sys.platform.startswith("linux") else None)
_DROPS_SPACE = socket.CMSG_SPACE(4)


class DatagramPort(udp.Port):
    """
    A UDP port that reads in batches and writes with fewer checks; what the
    protocol sees (C{datagramReceived(data, (host, port))}, C{write()} and
    its errors) is Twisted's, with one opt-in difference: for a protocol
    that has a C{datagramNotSent(data, addr, error)} method, the replies it
    writes while a batch is read are sent together after the batch (one
    C{sendmmsg()}), and a reply that could not be sent is reported there
    (C{error}: what C{write()} would have raised) instead of raised.

    It also reads the kernel's count of datagrams dropped before they could
    be read (a full receive buffer): when it grows, a protocol that has a
    C{kernelDropped(n)} method is told how many more were lost.
    """

    _drops = 0
    _queue = None
    #: The address the datagram being handled came from (it needs no checks).
    _fromKernel = None

    def _connectToProtocol(self) -> None:
        # Private: udp.Port's step between binding and reading, the one
        # place that knows the socket and the protocol and starts nothing.
        self._batched = recv_datagrams is not None and self.addressFamily in (
            socket.AF_INET,
            socket.AF_INET6,
        )
        self._sendsLater = (
            self._batched and send_datagrams is not None and hasattr(self.protocol, "datagramNotSent")
        )
        self._drops_counted = False
        if SO_RXQ_OVFL is not None:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                self._drops_counted = True
            except OSError:  # no count here
                pass
        super()._connectToProtocol()

    def doRead(self) -> None:
        if self._connectedAddr:  # (private: udp.Port's connected mode)
            return super().doRead()
        received = self.protocol.datagramReceived
        budget = self.maxThroughput
        fd = self.socket.fileno()
        sock = self.socket
        size = self.maxPacketSize
        control = _DROPS_SPACE if self._drops_counted else 0
        while budget > 0:
            try:
                if self._batched:
                    batch, dropped = recv_datagrams(fd, BATCH)
                else:
                    data, ancillary, _, addr = sock.recvmsg(size, control)
                    batch = ((data, addr[:2]),)
                    dropped = _dropped(ancillary)
            except OSError as e:
                if e.errno in _READ_IGNORED:
                    return
                raise
            if dropped >= 0 and dropped != self._drops:
                self._kernelDropped(dropped)
            # Replies go out together only after a full batch: then the
            # socket is busy and one sendmmsg() saves system calls; after a
            # short one, holding a reply back would only add latency (with
            # few peers in a closed loop it lowered throughput).
            if self._sendsLater and len(batch) == BATCH:
                self._queue = []
            try:
                for data, addr in batch:
                    budget -= len(data) or 1
                    self._fromKernel = addr
                    try:
                        received(data, addr)
                    except Exception:
                        log.failure("udp: unexpected error for a datagram from {addr}", addr=addr)
            finally:
                if self._queue:
                    self._sendQueued()
                self._queue = None
            if len(batch) < BATCH and self._batched:
                return

    def _sendQueued(self) -> None:
        """Send the replies written during a batch; report the ones that failed."""
        queue = self._queue
        for index, err in send_datagrams(self.socket.fileno(), self.addressFamily, queue):
            if err == ECONNREFUSED:  # as write() does: an ICMP error left from an earlier reply
                continue
            data, addr = queue[index]
            if err == EMSGSIZE:
                failure = error.MessageLengthError("message too long")
            else:
                failure = OSError(err, os.strerror(err))
            try:
                self.protocol.datagramNotSent(data, addr, failure)
            except Exception:
                log.failure("udp: unexpected error for a reply to {addr}", addr=addr)

    def _kernelDropped(self, total: int) -> None:
        """The kernel's drop count is now C{total} (a 32-bit counter)."""
        more = (total - self._drops) % (1 << 32)
        self._drops = total
        tell = getattr(self.protocol, "kernelDropped", None)
        if tell is not None and more:
            tell(more)

    def write(self, datagram: bytes, addr: tuple[str, int] | None = None) -> None:
        if addr is None or addr is not self._fromKernel:  # (a reply to the datagram just read needs no check)
            if self._connectedAddr or addr is None:
                return super().write(datagram, addr)
            family = _address_family(addr[0])
            if family is None or (family == socket.AF_INET6 and self.addressFamily == socket.AF_INET) or (
                family == socket.AF_INET and self.addressFamily == socket.AF_INET6
            ):
                return super().write(datagram, addr)  # which raises what Twisted raises
        queue = self._queue
        if queue is not None and type(datagram) is bytes:
            queue.append((datagram, addr))
            return
        try:
            self.socket.sendto(datagram, addr)
        except OSError as e:
            if e.errno == EINTR:
                return self.write(datagram, addr)
            if e.errno == EMSGSIZE:
                raise error.MessageLengthError("message too long") from None
            if e.errno == ECONNREFUSED:
                return
            raise


def _dropped(ancillary) -> int:
    """The SO_RXQ_OVFL count in a recvmsg() result's ancillary data, or -1."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return -1


class InheritedUNIXPort(UNIXPort):
    """
    A Unix listening socket inherited from systemd. Its file belongs to
    systemd (which set its owner and mode and removes it itself): unlike
    Twisted's adopted port, never chmod it (a DynamicUser daemon may not)
    and never unlink it on stop (the next activation needs it).
    """

    def startListening(self) -> None:
        # What unix.Port.startListening does for an adopted socket, minus
        # its chmod; _preexistingSocket is where _fromListeningDescriptor
        # put the socket.
        self.factory.doStart()
        skt, self._preexistingSocket = self._preexistingSocket, None
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason) -> None:
        tcp.Port.connectionLost(self, reason)  # unix.Port's would unlink the file


class InheritedUNIXEndpoint:
    """Listens on an inherited Unix socket through L{InheritedUNIXPort}."""

    def __init__(self, reactor, fileno: int) -> None:
        self.reactor = reactor
        self.fileno = fileno

    def listen(self, factory):
        try:
            fdesc.setNonBlocking(self.fileno)
            port = InheritedUNIXPort._fromListeningDescriptor(self.reactor, self.fileno, factory)
            port.startListening()
            os.close(self.fileno)
        except Exception:
            return defer.fail()
        return defer.succeed(port)


def unix_socket_path(endpoint) -> str | None:
    """
    The path of a C{unix:} server endpoint that takes a lock file (which a
    stale socket left by a dead server may be reclaimed for), else None.
    """
    # Private: the endpoint keeps what its description said only in
    # _address and _wantPID.
    if isinstance(endpoint, endpoints.UNIXServerEndpoint) and endpoint._wantPID:
        return endpoint._address
    return None


def inherited_sockets() -> dict[str, int]:
    """The sockets systemd passed, by name (C{FileDescriptorName=}): name -> descriptor."""
    # Private: importing twisted.internet.endpoints took LISTEN_FDS and
    # LISTEN_FDNAMES out of the environment; its systemd parser keeps what
    # it found, and nothing public reads it.
    return endpoints._SystemdParser._sddaemon.inheritedNamedDescriptors()


def unsent_bytes(transport) -> int:
    """
    Bytes written to a stream connection that its peer has not had yet:
    what the transport still buffers, plus (TCP) what the kernel has not
    sent or the peer not acknowledged (SIOCOUTQ). Through protocol
    wrappers (Twisted's or netecho's), the transport underneath.
    """
    while not isinstance(transport, abstract.FileDescriptor) and hasattr(transport, "transport"):
        transport = transport.transport
    if not isinstance(transport, abstract.FileDescriptor):
        return 0
    # Private: FileDescriptor's write buffer (abstract.py).
    pending = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    sock = getattr(transport, "socket", None)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            pending += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            pass
    return pending


def reset_connection(transport) -> None:
    """
    Abort a stream connection with a TCP RST (SO_LINGER 0), as a crashed or
    rebooted peer does; on anything but TCP, a plain abort.
    """
    try:
        sock = transport.getHandle()
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    transport.abortConnection()


def peer_gone(transport) -> bool:
    """
    Whether a stream connection's peer has closed and the connection owes
    it nothing: its end of file waits on the socket (not yet read by the
    reactor) and no byte written to it is still unsent. (A peer that only
    shut down its sending side and still has an echo to read is not gone.)
    """
    try:
        sock = transport.getHandle()
        if not isinstance(sock, socket.socket):
            return False  # TLS and the like: leave it to the reactor
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" and not unsent_bytes(transport)
    except OSError:  # nothing to read (EAGAIN), or an error the reactor will meet
        return False


def bound_socket(port) -> tuple[socket.socket, int] | None:
    """
    A listening stream port's socket and backlog, if the port bound its
    socket itself (a Twisted C{tcp.Port} from C{listenTCP}); None for a
    socket it adopted (C{adoptStreamPort}: systemd's), whose backlog is not
    its own, and for anything else.
    """
    # Private: tcp.Port keeps its socket.socket in .socket and the backlog
    # it listened with in .backlog (None on an adopted port). Used by
    # netecho.workers to bind one socket a worker next to it.
    sock = getattr(port, "socket", None)
    backlog = getattr(port, "backlog", None)
    if not isinstance(sock, socket.socket) or not isinstance(backlog, int):
        return None
    return sock, backlog


#: The abstract Unix address (Linux) a liveness probe binds (netecho.listeners)
#: before it connects, followed by C{:PID:TOKEN}: the server it reaches sees
#: it as the peer's address, and netecho's (L{netecho.policies.Session})
#: does not take a connection so named that sends nothing for a client.
LIVENESS_PROBE = b"\0netecho-liveness-probe"


def is_liveness_probe(address: object) -> bool:
    """Whether C{address} (a Unix peer's L{UNIXAddress} name) is the one a liveness probe binds."""
    return isinstance(address, bytes) and address.startswith(LIVENESS_PROBE + b":")


def peer_credentials(transport) -> str | None:
    """A Unix stream peer as its process and user (SO_PEERCRED): C{unix:pid=1234,uid=1000}; None if unknown."""
    try:
        sock = transport.getHandle()
        if not isinstance(sock, socket.socket) or sock.family != socket.AF_UNIX:
            return None
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         struct.calcsize("3i")))
    except (OSError, AttributeError):
        return None
    return f"unix:pid={pid},uid={uid}"
