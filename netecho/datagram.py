"""UDP echo with the guards a public echo service needs."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import os
import socket
from errno import EAGAIN, ECONNREFUSED, EINTR, EWOULDBLOCK

from twisted.internet import protocol, udp
from twisted.logger import Logger

from netecho.address import join_host_port, unmap
from netecho.echo import escape
from netecho.limits import RateWindow, source_prefix
from netecho.stats import Stats
from netecho.throttle import ThrottledLog

#: Largest UDP payload over IPv4; IPv6 allows 65,527, so read 65,536 to see
#: every datagram whole (Twisted reads only 8,192 bytes by default).
MAX_DATAGRAM = 65536

try:
    # One recvmmsg() for several datagrams, and a whole batch of the echo
    # (guards, sendmmsg(), counting) in C (netecho/_speedups.c), if built.
    from netecho._speedups import Window, echo_datagrams, recv_datagrams
except ImportError:  # pragma: no cover - depends on the build
    Window = echo_datagrams = recv_datagrams = None

#: Datagrams read per recvmmsg() call (netecho._speedups reads at most 16).
BATCH = 16

#: Read errors that end a read turn without closing the port: nothing left,
#: interrupted, or an ICMP "port unreachable" left over from an earlier reply.
_READ_IGNORED = frozenset((EAGAIN, EWOULDBLOCK, EINTR, ECONNREFUSED))


@lru_cache(maxsize=4096)
def source_network(host: str) -> str | None:
    """
    The network a source is rate-limited by (see L{source_prefix}), or None
    for a multicast or broadcast source, which never gets a reply. One cached
    call per datagram does both.
    """
    return None if is_group_address(host) else source_prefix(host)


def is_group_address(host: str) -> bool:
    """True for multicast and limited-broadcast sources, which get no reply."""
    host = unmap(host)
    if host.startswith(("ff", "FF")):
        return True
    if host == "255.255.255.255":
        return True
    first, dot, _ = host.partition(".")
    return bool(dot) and first.isdigit() and 224 <= int(first) <= 239


class DatagramEcho(protocol.DatagramProtocol):
    """
    Echoes every datagram whole to its sender, except to sources that could
    turn the echo into a loop or a reflection attack: privileged source ports
    (below 1024), our own service ports, our own socket, and multicast or
    broadcast sources; and beyond the per-source-network and global rates
    (token buckets, when given). Every drop is counted.

    @ivar own_ports: the ports of every netecho listener (shared set, filled
        in as listeners bind).
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        stats: Stats,
        own_ports: set[int],
        stop_word: bytes = b"STOP",
        on_stop_word: Callable[[], None] | None = None,
        log_data: bool = False,
        rate: RateWindow | None = None,
        global_rate: RateWindow | None = None,
    ) -> None:
        self.stats = stats
        self.rate = rate
        self.global_rate = global_rate
        self.own_ports = own_ports
        self.stop_word = stop_word
        self.on_stop_word = on_stop_word
        self.log_data = log_data
        self.throttled = ThrottledLog(self.log)
        self._own: tuple[str, int] = ("", -1)

    def startProtocol(self) -> None:
        host = self.transport.getHost()
        self._own = (unmap(host.host), host.port)
        # Replies go straight to sendto(): the address came from recvfrom(),
        # so Port.write()'s address checks are work for nothing.
        self._sendto = self.transport.socket.sendto
        if type(self.transport) is udp.Port:
            self._recvfrom = self.transport.socket.recvfrom
            self.transport.doRead = self._doRead
            if recv_datagrams is not None and self.transport.socket.family == socket.AF_INET:
                self.transport.doRead = self._doReadBatches
                if (echo_datagrams is not None and not self.log_data
                        and all(w is None or type(w) is Window for w in (self.rate, self.global_rate))):
                    self.transport.doRead = self._doReadInC

    def _doRead(self) -> None:
        """
        The port's doRead: what Twisted's udp.Port.doRead does (read until
        the socket is empty or maxThroughput bytes were read, ignore a
        refused or interrupted read, log what datagramReceived raises), in
        fewer steps per datagram.
        """
        recvfrom = self._recvfrom
        received = self.datagramReceived
        budget = self.transport.maxThroughput
        while budget > 0:
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except OSError as e:
                if e.errno in _READ_IGNORED:
                    return
                raise
            budget -= len(data) or 1
            try:
                received(data, addr)
            except Exception:
                self.log.failure("udp: unexpected error for a datagram from {addr}", addr=addr)

    def _doReadBatches(self) -> None:
        """
        L{_doRead} with netecho._speedups.recv_datagrams (IPv4 only): up to
        L{BATCH} datagrams per recvmmsg() system call, and no last call that
        only says "nothing left" when a batch comes back short.
        """
        fd = self.transport.fileno()
        received = self.datagramReceived
        budget = self.transport.maxThroughput
        while budget > 0:
            try:
                batch = recv_datagrams(fd, BATCH)
            except OSError as e:
                if e.errno in _READ_IGNORED:
                    return
                raise
            for data, addr in batch:
                budget -= len(data) or 1
                try:
                    received(data, addr)
                except Exception:
                    self.log.failure("udp: unexpected error for a datagram from {addr}", addr=addr)
            if len(batch) < BATCH:
                return

    def _doReadInC(self) -> None:
        """
        L{_doReadBatches} with the batch's work in C
        (netecho._speedups.echo_datagrams): the same guards in the same
        order (L{_admit}; the C rate windows, one clock read per batch),
        the admitted datagrams echoed by one sendmmsg() from the buffers
        they were read into, counted and their peers remembered in C. What
        needs Python (a refusal's log line, a failed send, the stop word)
        comes back and is done here, after the batch. Not with
        C{--log-data}, which needs each payload.
        """
        fd = self.transport.fileno()
        stats = self.stats
        peers, bound = stats.udp_peer_table()
        word = self.stop_word if self.on_stop_word is not None and self.stop_word else None
        guards = (self.own_ports, self._own[0], self._own[1], self.rate, self.global_rate, word, peers, bound)
        budget = self.transport.maxThroughput
        while budget > 0:
            try:
                got, used, echoed, nbytes, later = echo_datagrams(fd, BATCH, guards)
            except OSError as e:
                if e.errno in _READ_IGNORED:
                    return
                raise
            budget -= used
            stats.datagrams_echoed += echoed
            stats.bytes_counted += nbytes
            for what, detail, addr in later:
                try:
                    if what == "refuse":
                        self._refuse(detail, addr[0], addr[1])
                    elif what == "send_error":
                        self._send_failed(addr, os.strerror(detail))
                    else:  # "stop"
                        self.on_stop_word()
                except Exception:
                    self.log.failure("udp: unexpected error for a datagram from {addr}", addr=addr)
            if got < BATCH:
                return

    def _refuse(self, reason: str, host: str, port: int) -> bool:
        """Count and log a datagram that gets no echo; False (for L{_admit})."""
        self.stats.drop(reason)
        self.throttled.warn(
            reason,
            "udp: no reply to {peer} ({why})",
            peer=join_host_port(unmap(host), port),
            why=reason.removeprefix("udp_").replace("_", " "),
        )
        return False

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        if not self._admit(addr):
            return
        try:
            self._sendto(data, addr)
        except OSError as e:
            # EAGAIN, EMSGSIZE, ENETUNREACH...: one datagram lost, not the service.
            self._send_failed(addr, e.strerror or str(e))
            return
        self._echoed(data, addr)

    def _admit(self, addr: tuple) -> bool:
        """
        Whether a datagram from C{addr} gets its echo: the guards, in order
        (a datagram that passes them is counted against the rates); a
        refusal is counted and logged.
        """
        host, port = addr[0], addr[1]
        if port < 1024:
            return self._refuse("udp_privileged_source_port", host, port)
        if port in self.own_ports:
            return self._refuse("udp_own_service_port", host, port)
        network = source_network(host)
        if network is None:
            return self._refuse("udp_group_source", host, port)
        if port == self._own[1] and unmap(host) == self._own[0]:
            return self._refuse("udp_own_address", host, port)
        rate, global_rate = self.rate, self.global_rate
        if rate is not None:
            now = rate.clock()  # one read for both windows (they share a clock)
            if not rate.allow(network, now):
                return self._refuse("udp_rate_limited", host, port)
            if global_rate is not None and not global_rate.allow(None, now):
                return self._refuse("udp_global_rate_limited", host, port)
        elif global_rate is not None and not global_rate.allow(None):
            return self._refuse("udp_global_rate_limited", host, port)
        return True

    def _send_failed(self, addr: tuple, error: str) -> None:
        """The echo to C{addr} failed (C{error}: its strerror): one datagram lost."""
        self.stats.drop("udp_send_error")
        self.throttled.warn(
            "udp_send_error",
            "udp: reply to {peer} failed: {error}",
            peer=join_host_port(unmap(addr[0]), addr[1]),
            error=error.lower(),
        )

    def _echoed(self, data: bytes, addr: tuple) -> None:
        """The echo of C{data} went to C{addr}: count it, log it, heed the stop word."""
        host, port = addr[0], addr[1]
        stats = self.stats
        stats.datagrams_echoed += 1
        stats.bytes_counted += len(data)
        stats.udp_peer((host, port))
        if self.log_data:
            self.log.info(
                "{peer} -> {data}", peer=join_host_port(unmap(host), port), data=escape(data)
            )
        if self.on_stop_word is not None and self.stop_word and data.strip() == self.stop_word:
            self.on_stop_word()
