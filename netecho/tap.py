"""``twistd netecho``: the options and the service tree they describe."""

from __future__ import annotations

import signal

from twisted.logger import Logger
from twisted.python import usage

from netecho import __version__, faults
from netecho.daemon import NetechoService, use_for_twistd
from netecho.datagram import DatagramGuard
from netecho.echo import DatagramEcho, EchoFactory
from netecho.listeners import (
    DatagramListenerService,
    StreamListenerService,
    default_backlog,
    stream_listener,
    udp_listener,
    unix_listener,
)
from netecho.limits import ConnectionLimits, Guard, IdleSweeper, RateWindow
from netecho.metrics import metrics_site
from netecho.policies import Served, ServedDatagrams
from netecho.randomnum import RandomNumberFactory
from netecho.rpc import RPCService, UsersFileError, load_users, readable_by_others
from netecho.stats import Stats

log = Logger()

DEFAULT_LISTENERS = {"tcp": ["1234"], "udp": ["1234"], "pb": ["8787"]}
LISTENER_OPTIONS = ("tcp", "udp", "unix", "random", "pb", "metrics")


def _signal_number(value: str) -> int:
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        number = signal.Signals[name]
    except KeyError:
        raise usage.UsageError(f"--stop-signal: unknown signal {value!r} (try USR1)") from None
    if number in (signal.SIGKILL, signal.SIGSTOP):
        raise usage.UsageError(f"--stop-signal: {name} cannot be caught")
    return int(number)


def _nonnegative(name: str, cast: type):
    """A coerce function naming its option, as Twisted's own message does not."""

    def coerce(value: str):
        try:
            number = cast(value)
        except ValueError:
            kind = "a whole number" if cast is int else "a number"
            raise ValueError(f"--{name}: {value!r} is not {kind}") from None
        if number < 0:
            raise ValueError(f"--{name}: must be 0 or more, got {value}")
        return number

    coerce.coerceDoc = ""
    return coerce


def _whole(name: str, low: int, high: int):
    """A coerce function for a whole number from C{low} to C{high}, naming its option."""

    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"--{name}: {value!r} is not a whole number") from None
        if not low <= number <= high:
            raise ValueError(f"--{name}: must be from {low} to {high}, got {value}")
        return number

    coerce.coerceDoc = ""
    return coerce


#: --udp-rcvbuf's default (4 MiB): a burst waits there instead of being dropped by the kernel.
DEFAULT_UDP_RCVBUF = 4 << 20


def _mode(value: str) -> int:
    text = value.lower().removeprefix("0o")
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise usage.UsageError(f"--unix-mode: {value!r} is not an octal file mode such as 0660")
    return mode


class Options(usage.Options):
    """Command-line options of ``twistd netecho``."""

    synopsis = "[options]"
    longdesc = (
        "TCP, UDP and Unix-socket echo (RFC 862), a random-number service and "
        "Perspective Broker RPC. "
        "Listener options can be repeated; with none, "
        "netecho listens on --tcp 1234 --udp 1234 --pb 8787. A bare PORT listens "
        "on every interface, IPv6 and IPv4 alike (loopback only for --pb); anything "
        "else is a Twisted server endpoint description, e.g. "
        "tcp:1234:interface=127.0.0.1, ssl:1234:privateKey=key.pem, "
        "haproxy:tcp:1234, systemd:domain=INET6:name=echo."
    )

    optFlags = [
        ["exit-on-stop", None, "A stop word from any client (TCP, UDP or Unix) stops the "
         "whole daemon with exit status 0 (the classic demo). Off by default."],
        ["log-data", None, "Log each payload received as '-> message' (escaped, "
         "truncated to 200 bytes). Off by default."],
    ]
    optParameters = [
        ["unix-mode", None, "0660", "File mode of Unix sockets given as a path or "
         "unix: endpoint without mode=. Example: --unix-mode 0600."],
        ["stop-word", None, "STOP", "A line equal to WORD after trimming whitespace "
         "(case-sensitive) is echoed, then that client is disconnected. "
         "Empty disables. Example: --stop-word QUIT."],
        ["pb-users", None, None, "A file of user:password lines: these users may log in "
         "to PB and call quit(); anonymous logins may not. Keep it mode 0600. "
         "Example: --pb-users /etc/netecho/users."],
        ["idle-timeout", None, 300.0, "Seconds a stream connection may make no progress "
         "(idle, or its peer stopped reading) before it is aborted; 0 disables. "
         "Example: --idle-timeout 60.", _nonnegative("idle-timeout", float)],
        ["max-connections", None, 10000, "Stream connections open at once (TCP, Unix, PB); "
         "more are refused and counted; 0: no cap.", _nonnegative("max-connections", int)],
        ["max-per-ip", None, 1000, "Stream connections open at once from one IP address; "
         "0: no cap.", _nonnegative("max-per-ip", int)],
        ["udp-rate", None, 1000.0, "UDP datagrams a second answered per source network "
         "(/24 for IPv4, /56 for IPv6), counted in one-second windows; 0: no limit.", _nonnegative("udp-rate", float)],
        ["udp-global-rate", None, 100000.0, "UDP datagrams a second answered in all; "
         "0: no limit.", _nonnegative("udp-global-rate", float)],
        ["backlog", None, default_backlog(), "Listen backlog of every stream listener (TCP, "
         "Unix, random, PB, metrics): connections the kernel completes and queues until "
         "netecho accepts them. The kernel caps it at net.core.somaxconn (the default "
         "here; 4096 where it cannot be read). An endpoint with its own backlog= keeps "
         "it; sockets inherited from systemd keep systemd's (Backlog=).",
         _whole("backlog", 1, 2**31 - 1)],
        ["udp-rcvbuf", None, DEFAULT_UDP_RCVBUF, "Receive buffer (SO_RCVBUF), in bytes, of "
         "every UDP listener's socket: datagrams that arrive while netecho is busy wait "
         "there instead of being dropped by the kernel. The kernel caps it at "
         "net.core.rmem_max unless netecho runs as root (SO_RCVBUFFORCE); the log says "
         "what was granted. 0: the kernel's default.", _whole("udp-rcvbuf", 0, 2**30)],
        ["log-format", None, "text", "text, or json: every line of twistd's log (start-up "
         "lines included) one JSON object with time (ISO 8601, UTC), level, logger, msg "
         "and the event's fields (NDJSON), for log shippers."],
        ["faults", None, "", "Faults on purpose in every TCP, Unix and UDP echo: comma-separated "
         "items such as delay=50ms, jitter=10ms, drop=0.1, duplicate=0.1, corrupt=0.01, "
         "bandwidth=64KB, slice=16, slice-delay=1ms, reset-after=1000, close-after=1000, stall, "
         "seed=1 (see the README). An admin can change them over PB (faults)."],
        ["stop-signal", None, None, "An extra signal that stops the daemon cleanly "
         "(SIGTERM and SIGINT always do). Example: --stop-signal USR1.", _signal_number],
    ]

    def __init__(self) -> None:
        super().__init__()
        for name in LISTENER_OPTIONS:
            self[name] = []

    def opt_tcp(self, value: str) -> None:
        """TCP echo on PORT or a server ENDPOINT. Example: --tcp 7 or --tcp tcp:7:interface=127.0.0.1"""
        self["tcp"].append(value)

    def opt_udp(self, value: str) -> None:
        """UDP echo on PORT, HOST:PORT ([::1]:PORT for IPv6) or systemd:NAME (an inherited socket). Example: --udp 127.0.0.1:7"""
        self["udp"].append(value)

    def opt_unix(self, value: str) -> None:
        """Unix stream socket echo on PATH or an ENDPOINT (unix:..., systemd:...). Example: --unix /run/netecho/echo.sock"""
        self["unix"].append(value)

    def opt_random(self, value: str) -> None:
        """Random-number service on PORT or ENDPOINT: each line gets a random number (0 to 2^31-1) and a newline. Example: --random 1235"""
        self["random"].append(value)

    def opt_pb(self, value: str) -> None:
        """Perspective Broker RPC on PORT (loopback only: PB is not made for untrusted networks) or an ENDPOINT (e.g. ssl:8787:..., tcp6:8787, unix:/run/netecho/pb.sock). Example: --pb 8787"""
        self["pb"].append(value)

    def opt_metrics(self, value: str) -> None:
        """Prometheus exposition at /metrics (and readiness at /ready: 200 or 503) on PORT (loopback only) or an ENDPOINT. It is not an echo listener: with --metrics alone, the defaults (--tcp 1234 --udp 1234 --pb 8787) are started too. Example: --metrics 9101"""
        self["metrics"].append(value)

    def opt_workers(self, value: str) -> None:
        """Worker processes serving the same listeners (default 1; auto: one a usable CPU). The parent binds every listener and serves PB and metrics; the workers serve TCP, UDP, Unix and random. Example: --workers auto"""
        from netecho.workers import parse_workers

        try:
            self["workers"] = parse_workers(value)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options=None) -> None:
        #: The arguments as given, for the worker processes of --workers.
        self.argv = list(options) if options is not None else []
        super().parseOptions(options)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"netecho {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if not any(self[name] for name in LISTENER_OPTIONS if name != "metrics"):
            for name, values in DEFAULT_LISTENERS.items():
                self[name] = list(values)
        self["stop-word"] = self["stop-word"].strip()
        if "\n" in self["stop-word"]:
            raise usage.UsageError("--stop-word must be one line")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format: {self['log-format']!r} is not text or json")
        try:
            self["faults"] = faults.parse(self["faults"])
        except ValueError as e:
            raise usage.UsageError(f"--faults: {e}") from None
        self["unix-mode"] = _mode(str(self["unix-mode"]))
        try:
            # Under twistd (our parent options), netecho writes twistd's log.
            self["twistd-log"] = use_for_twistd(self.parent, self["log-format"])
        except ValueError as e:
            raise usage.UsageError(f"--log-format {self['log-format']}: {e}") from None
        backlog = self["backlog"]
        listeners = []
        for name in LISTENER_OPTIONS:
            for value in self[name]:
                try:
                    if name == "udp":
                        listeners.append(udp_listener(value))
                    elif name == "unix":
                        listeners.append(unix_listener(value, self["unix-mode"], backlog=backlog))
                    else:
                        listeners.append(
                            stream_listener(
                                name, value, loopback_only=name in ("pb", "metrics"), backlog=backlog
                            )
                        )
                except ValueError as e:
                    raise usage.UsageError(f"--{name} {value}: {e}") from None
        self["listeners"] = listeners
        self["users"] = None
        if self["pb-users"] is not None:
            try:
                self["users"] = load_users(self["pb-users"])
            except UsersFileError as e:
                raise usage.UsageError(f"--pb-users {e}") from None


def makeService(config: Options, reactor=None, worker=None) -> NetechoService:
    """
    Build the daemon's service tree from parsed options; binds nothing yet.
    With C{--workers} above 1, the tree of the parent (L{netecho.workers});
    C{worker} is given only in a worker process (a L{netecho.workers.WorkerRole}).
    """
    if reactor is None:
        try:
            from netecho.reactor import for_netecho
        except ImportError:  # no epoll here: Twisted's default reactor
            from twisted.internet import reactor
        else:
            reactor = for_netecho()
    supervising = worker is None and config.get("workers", 1) > 1
    if supervising:
        from netecho import workers
    stats = workers.DaemonStats() if supervising else Stats()
    top = (worker.service if worker is not None else NetechoService)(
        reactor,
        stats,
        exit_on_stop=config["exit-on-stop"],
        stop_signal=config["stop-signal"],
        twistd_log=config["twistd-log"],
    )
    sweeper = IdleSweeper(reactor, config["idle-timeout"])
    sweeper.setServiceParent(top)
    guard = Guard(
        stats, ConnectionLimits(config["max-connections"], config["max-per-ip"]), sweeper, log
    )
    rate = config["udp-rate"]
    global_rate = config["udp-global-rate"]
    own_ports: set[int] = set()
    policy = dict(
        stop_word=config["stop-word"].encode("utf-8"),
        on_stop_word=top.stop_word_heard if config["exit-on-stop"] else None,
        log_data=config["log-data"],
    )
    trouble = (workers.SharedFaults if supervising else faults.Faults)(stats, config["faults"], reactor)
    if worker is not None:
        worker.trouble = trouble
    if config["faults"].stream or config["faults"].datagram:
        log.warn("faults on purpose (--faults {spec}): the echo services misbehave", spec=config["faults"])
    rpc = RPCService(reactor, stats, top.stop_daemon, users=config["users"], guard=guard, faults=trouble)
    if config["pb-users"] is not None and readable_by_others(config["pb-users"]):
        log.warn("--pb-users {path} is readable by others: chmod 600 it", path=config["pb-users"])

    def udp_echo() -> ServedDatagrams:
        udp_guard = DatagramGuard(
            stats, own_ports,
            rate=RateWindow(rate) if rate else None,
            global_rate=RateWindow(global_rate, size=1) if global_rate else None,
        )
        return ServedDatagrams(DatagramEcho(), stats, guard=udp_guard, faults=trouble, **policy)

    echo = Served(EchoFactory(), stats, "echo", guard=guard, faults=trouble, **policy)
    # Listener option -> what serves it (built once per listener, or shared).
    serves = {
        "tcp": lambda: echo,
        "unix": lambda: echo,
        "udp": udp_echo,
        "random": lambda: Served(RandomNumberFactory(), stats, "random", guard=guard, **policy),
        "pb": rpc.factory,
        "metrics": lambda: metrics_site(stats, ready=top.is_ready),
    }
    for index, listener in enumerate(config["listeners"]):
        if worker is not None:  # a worker of --workers adopts what its parent bound
            child = worker.listener_service(index, listener, serves[listener.option], own_ports)
            if child is not None:
                child.setServiceParent(top)
            continue
        if listener.option == "udp":
            child = DatagramListenerService(
                reactor, listener, serves["udp"](), own_ports, rcvbuf=config["udp-rcvbuf"]
            )
        else:
            child = StreamListenerService(reactor, listener, serves[listener.option](), own_ports)
        child.setServiceParent(top)
    if supervising:
        workers.Supervisor(reactor, config, stats, trouble).setServiceParent(top)
    return top
