"""
The UDP guards a public echo service needs: no reply that could start an
echo loop or serve a reflection attack, and bounded rates.
"""

from __future__ import annotations

from functools import lru_cache

from twisted.logger import Logger

from netecho.address import join_host_port, unmap
from netecho.limits import RateWindow, source_prefix
from netecho.stats import Stats
from netecho.throttle import ThrottledLog

#: Largest UDP payload over IPv4; IPv6 allows 65,527, so read 65,536 to see
#: every datagram whole (Twisted reads only 8,192 bytes by default).
MAX_DATAGRAM = 65536

log = Logger()


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


class DatagramGuard:
    """
    Which datagrams get an answer: none to sources that could turn the echo
    into a loop or a reflection attack — privileged source ports (below
    1024), our own service ports, our own socket, multicast or broadcast
    sources — and none beyond the per-source-network and global rates
    (when given). Every refusal is counted and logged (rate-limited).
    L{netecho.policies.ServedDatagrams} asks it about every datagram.

    @ivar own_ports: the ports of every netecho listener (a shared set,
        filled in as listeners bind).
    """

    def __init__(
        self,
        stats: Stats,
        own_ports: set[int],
        rate: RateWindow | None = None,
        global_rate: RateWindow | None = None,
    ) -> None:
        self.stats = stats
        self.own_ports = own_ports
        self.rate = rate
        self.global_rate = global_rate
        self.throttled = ThrottledLog(log)
        self._own: tuple[str, int] = ("", -1)

    def bound(self, host) -> None:
        """The port this guard serves is bound at C{host} (its getHost())."""
        self._own = (unmap(host.host), host.port)

    def admit(self, addr: tuple) -> bool:
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

    def _refuse(self, reason: str, host: str, port: int) -> bool:
        """Count and log a datagram that gets no echo; False (for L{admit})."""
        self.stats.drop(reason)
        self.throttled.warn(
            reason,
            "udp: no reply to {peer} ({why})",
            peer=join_host_port(unmap(host), port),
            why=reason.removeprefix("udp_").replace("_", " "),
        )
        return False
