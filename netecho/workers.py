"""
``--workers N``: one daemon on every core.

The parent (twistd's process) binds every listener once, as a single
netecho does, so a port in use is still one line and exit status 1 before
anything starts. Then it stops reading its echo listeners (TCP, UDP, Unix,
random) and starts N worker processes with C{spawnProcess}, each inheriting
those listening sockets as descriptors and adopting them
(C{adoptStreamPort}, C{adoptDatagramPort}, or netecho's inherited Unix
port, which neither chmods nor removes the parent's socket file).

A TCP listener the parent bound itself becomes N sockets, one a worker, in
one C{SO_REUSEPORT} group (L{reuseport_group}): the kernel picks the socket
of each new connection by a hash of its addresses and ports, so connections
spread evenly whichever worker is awake. The workers share the one socket of
the others (UDP, Unix, sockets from systemd): the kernel hands each new
connection or datagram to whichever worker takes it first.

PB and the metrics page stay in the parent: PB calls that change the daemon
(C{quit}, C{faults}) act on the whole daemon, C{stats()}, the summary line
and C{/metrics} show the sum over the parent and every worker.

Each worker talks to its parent over three pipes: its standard input
(the parent's orders, one JSON object a line; end of file: the parent is
gone, stop), its standard output (its log events, one JSON object a line,
which the parent logs as its own with the worker's number) and descriptor 3
(its reports: ready, counters, a stop word heard with C{--exit-on-stop}).
A worker also asks Linux to kill it when its parent dies
(C{PR_SET_PDEATHSIG}), so no worker outlives the daemon.
"""

from __future__ import annotations

import collections
import ctypes
import json
import math
import os
import signal
import socket
import sys
import time

from twisted.application import service
from twisted.internet import defer, error, fdesc, protocol, task
from twisted.logger import Logger, LogLevel, formatEvent, globalLogBeginner

from netecho import faults
from netecho.daemon import AcceptErrors, NetechoService, report_fatal
from netecho.datagram import MAX_DATAGRAM
from netecho.listeners import ListenerError, _reason, systemd_endpoint
from netecho.stats import Stats
from netecho.transports import InheritedUNIXEndpoint, bound_socket

log = Logger()

#: Listener options whose sockets the workers serve; the others (pb,
#: metrics) are served by the parent.
SERVED_BY_WORKERS = ("tcp", "udp", "unix", "random")

#: The first descriptor of the inherited listening sockets in a worker
#: (0: orders, 1: log, 2: stderr, 3: reports).
FIRST_LISTENER_FD = 4
REPORTS_FD = 3

#: Seconds between two reports of a worker's counters.
REPORT_INTERVAL = 0.5

#: Restarts of dead workers allowed in any minute; one more stops the daemon (exit 1).
MAX_RESTARTS_A_MINUTE = 5
#: The first restart's delay; each restart within the minute doubles it, up to MAX_RESTART_DELAY.
FIRST_RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 5.0
#: Seconds workers get to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT = 10.0

#: Options whose limit is per daemon: each worker enforces its share.
SPLIT_LIMITS = ("max-connections", "max-per-ip", "udp-global-rate", "udp-rate")

#: Environment a worker must not see: systemd's notifications are the parent's.
_PARENT_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")

PR_SET_PDEATHSIG = 1


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str) -> int:
    """C{--workers}: a whole number from 1 to 256, or C{auto} (the usable CPUs)."""
    if value.strip().lower() == "auto":
        return usable_cpus()
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--workers: {value!r} is not a whole number or auto") from None
    if not 1 <= number <= 256:
        raise ValueError(f"--workers: must be from 1 to 256 (or auto), got {value}")
    return number


def share(limit: float, workers: int) -> float:
    """A worker's share of a per-daemon C{limit} (0: none, stays 0), rounded up."""
    if not limit:
        return limit
    part = math.ceil(limit / workers)
    return type(limit)(max(1, part))


# --- the counters --------------------------------------------------------------


def snapshot(stats: Stats) -> dict:
    """C{stats} as plain data a worker reports (JSON)."""
    return {
        "opened": dict(stats.opened),
        "active": dict(stats.active),
        "bytes_sent": dict(stats.bytes_sent),
        "datagrams_echoed": stats.datagrams_echoed,
        "rpc_calls": stats.rpc_calls,
        "rpc_by_method": dict(stats.rpc_by_method),
        "rpc_outcomes": [[m, o, n] for (m, o), n in stats.rpc_outcomes.items()],
        "lookups": dict(stats.lookups),
        "faults": dict(stats.faults),
        "dropped": dict(stats.dropped),
        "udp_peers": stats.udp_peers,
    }


_SUMMED_DICTS = ("opened", "active", "bytes_sent", "rpc_by_method", "lookups", "faults", "dropped")


class Totals(Stats):
    """Counters summed over processes (read only); UDP peers are a sum of counts."""

    peers = 0

    @property
    def udp_peers(self) -> int:
        return self.peers

    def add(self, snap: dict) -> None:
        """Add one process's L{snapshot}."""
        for key in _SUMMED_DICTS:
            into = getattr(self, key)
            for k, v in snap.get(key, {}).items():
                into[k] = into.get(k, 0) + v
        self.datagrams_echoed += snap.get("datagrams_echoed", 0)
        self.rpc_calls += snap.get("rpc_calls", 0)
        for method, outcome, n in snap.get("rpc_outcomes", ()):
            self.rpc_outcomes[(method, outcome)] = self.rpc_outcomes.get((method, outcome), 0) + n
        self.peers += snap.get("udp_peers", 0)


class DaemonStats(Stats):
    """
    The parent's counters with workers: it counts what the parent serves
    (PB) itself, and reads (summary, C{stats()}, metrics) the sum of that,
    of every live worker's last report and of the workers that died.
    """

    def __init__(self, clock=time.monotonic) -> None:
        super().__init__(clock)
        #: The last report of each live worker, by worker number.
        self.reports: dict[int, dict] = {}
        #: What workers that ended had counted (their connections closed with them).
        self.retired: dict = {}

    def _totals(self) -> Totals:
        totals = Totals(self._clock)
        totals.started = self.started
        return totals

    def combined(self) -> Stats:
        totals = self._totals()
        totals.add(snapshot(self))
        totals.add(self.retired)
        for report in self.reports.values():
            totals.add(report)
        return totals

    def by_worker(self) -> dict[str, Stats]:
        out = {}
        for number, report in sorted(self.reports.items()):
            totals = self._totals()
            totals.add(report)
            out[str(number)] = totals
        return out

    def worker_report(self, number: int, report: dict) -> None:
        """Worker C{number}'s counters are now C{report}."""
        self.reports[number] = report

    def worker_ended(self, number: int) -> None:
        """Worker C{number} has ended: keep its counts, not its open connections."""
        report = self.reports.pop(number, None)
        if report is None:
            return
        report["active"] = {}
        totals = self._totals()
        totals.add(self.retired)
        totals.add(report)
        self.retired = snapshot(totals)

    def summary(self) -> str:
        return Stats.summary(self.combined())

    def as_dict(self) -> dict:
        return Stats.as_dict(self.combined())


class SharedFaults(faults.Faults):
    """The parent's faults: a change (PB C{faults()}) is passed on to every worker."""

    supervisor: "Supervisor | None" = None

    def set(self, spec):
        spec = super().set(spec)
        if self.supervisor is not None:
            self.supervisor.tell_all({"faults": str(spec)})
        return spec


# --- the parent ------------------------------------------------------------------


def own_socket_each(listener, sock: socket.socket) -> bool:
    """
    Whether each worker gets a listening socket of its own
    (L{reuseport_group}) for C{listener}, which the parent bound as
    C{sock}: yes for TCP sockets the parent bound itself. Not for UDP (one
    datagram socket shared by every worker spreads even a single client's
    flood over them all), Unix sockets (C{SO_REUSEPORT} does not balance
    them) or sockets from systemd (systemd owns them and keeps them across
    restarts; netecho's extra sockets would not be).
    """
    return (
        hasattr(socket, "SO_REUSEPORT")
        and sock.type == socket.SOCK_STREAM
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and systemd_endpoint(listener.description) is None
    )


def adopted_description(description: str) -> str:
    """
    The endpoint description a worker listens with: a wrapped C{systemd:}
    endpoint (C{haproxy:systemd:domain=INET:name=tcp}) becomes the same
    wrapper around C{tcp:0} (C{unix:...} for C{domain=UNIX}), whose listen
    L{AdoptingReactor} turns into adopting the socket the parent passed:
    the worker does not see systemd's descriptors or their names.
    """
    part = systemd_endpoint(description)
    if part is None or part == description:
        return description
    params = dict(p.partition("=")[::2] for p in part[len("systemd:"):].split(":"))
    inner = "unix:address=adopted" if params.get("domain", "").upper() == "UNIX" else "tcp:0"
    return description[: -len(part)] + inner


def reuseport_group(sock: socket.socket, more: int, backlog: int) -> list[socket.socket]:
    """
    C{more} listening sockets bound where the listening TCP socket C{sock}
    is, in one C{SO_REUSEPORT} group with it: Linux gives each new
    connection to one socket of the group, by a hash of its addresses and
    ports. The caller owns (and closes) the new sockets.

    C{sock} was bound and listens without C{SO_REUSEPORT}, as a single
    netecho binds it (so a port in use failed there, as ever). It gains the
    option now: Linux puts a listening socket that has it into the group of
    the next socket with the option that listens on its address. Only
    processes of the same user can join the group.

    @raise OSError: the group cannot be made (C{sock} is as it was, and
        nothing new is left open).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    address = sock.getsockname()
    v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) if sock.family == socket.AF_INET6 else None
    made: list[socket.socket] = []
    try:
        for _ in range(more):
            s = socket.socket(sock.family, socket.SOCK_STREAM)
            made.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's ports do
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if v6only is not None:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            s.bind(address)
            s.listen(backlog)
    except OSError:
        for s in made:
            s.close()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        raise
    return made


class WorkerProcess(protocol.ProcessProtocol):
    """One worker as its parent sees it: its pipes and its end."""

    def __init__(self, supervisor: "Supervisor", number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.pid: int | None = None
        self.ended = defer.Deferred()
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._partial.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[fd] = rest[-65536:]
        for line in lines:
            if fd == REPORTS_FD:
                self._report(line)
            elif fd == 1:
                self._logged(line)
            elif line.strip():
                log.warn("worker {worker}: {line}", worker=self.number,
                         line=line.decode("utf-8", "backslashreplace"))

    def _report(self, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            return
        self.supervisor.reported(self, report)

    def _logged(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            level = LogLevel.levelWithName(event["level"])
            text = str(event["msg"])
        except Exception:  # not one of ours: log it as it came
            level, text = LogLevel.info, line.decode("utf-8", "backslashreplace")
        log.emit(level, "worker {worker}: {text}", worker=self.number, text=text)

    def tell(self, order: dict) -> None:
        """Send an order to the worker (its standard input)."""
        try:
            self.transport.writeToChild(0, json.dumps(order).encode() + b"\n")
        except Exception:  # it is ending; processEnded will say so
            pass

    def processEnded(self, reason) -> None:
        self.supervisor.ended(self, reason.value)
        self.ended.callback(None)


def _how_it_ended(value) -> str:
    if isinstance(value, (error.ProcessDone, error.ProcessTerminated)):
        if value.signal is not None:
            try:
                return f"killed by {signal.Signals(value.signal).name}"
            except ValueError:
                return f"killed by signal {value.signal}"
        return f"exit status {value.exitCode}"
    return str(value)


class Supervisor(service.Service):
    """
    The parent's side of C{--workers}: hands the listening sockets of the
    echo listeners to N workers, restarts a worker that dies (with a
    back-off, at most L{MAX_RESTARTS_A_MINUTE} a minute, then the daemon
    stops with exit status 1), stops them all when the daemon stops, and
    keeps their counters in the daemon's L{DaemonStats}.
    """

    name = "workers"

    def __init__(self, reactor, config, stats: DaemonStats, shared_faults: SharedFaults,
                 clock=time.monotonic) -> None:
        self.reactor = reactor
        self.count = config["workers"]
        self.argv = list(getattr(config, "argv", []))
        self.stats = stats
        self.faults = shared_faults
        shared_faults.supervisor = self
        self.clock = clock
        self.processes: dict[int, WorkerProcess] = {}
        #: Inherited listening sockets: listener index -> the parent's
        #: descriptors, one a worker or one for all (L{own_socket_each}).
        self.fds: dict[int, list[int]] = {}
        #: The listening sockets the parent made for the workers (L{reuseport_group}).
        self._sockets: list[socket.socket] = []
        #: Fires once every worker serves (the first time).
        self.serving = defer.Deferred()
        self._ready: set[int] = set()
        self._restarts: collections.deque[float] = collections.deque()
        self._timers: dict[int, object] = {}
        self._stopping = False

    def setServiceParent(self, parent) -> None:
        super().setServiceParent(parent)
        parent.workers = self

    def privilegedStartService(self) -> None:
        # Every listener (the parent's earlier children) is bound by now.
        listeners = [child for child in self.parent if hasattr(child, "listener")]
        for index, child in enumerate(listeners):
            if child.listener.option not in SERVED_BY_WORKERS:
                continue
            port = child.port
            if port is None:
                raise ListenerError(f"cannot listen on {child.listener.label}: not bound at start, "
                                    "so it cannot be shared with --workers")
            # The workers accept and read; the parent only holds the sockets
            # (and, for a Unix socket, its file and lock).
            port.stopReading()
            fds = [port.fileno()]
            bound = bound_socket(port)
            if bound is not None and own_socket_each(child.listener, bound[0]):
                try:
                    more = reuseport_group(bound[0], self.count - 1, bound[1])
                except (OSError, ValueError, TypeError) as e:
                    log.warn("{label}: the workers share one socket (no SO_REUSEPORT group: {why})",
                             label=child.listener.label, why=_reason(e))
                else:
                    self._sockets.extend(more)
                    fds.extend(s.fileno() for s in more)
                    log.info("{label}: a listening socket for each worker (SO_REUSEPORT)",
                             label=child.listener.label)
            self.fds[index] = fds
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        service.Service.startService(self)
        log.info("starting {n} workers", n=self.count)
        self.reactor.callWhenRunning(self._start_all)
        # From the moment the daemon begins to stop (a signal, quit), a worker
        # that exits is not a death to restart: under systemd every process
        # gets the SIGTERM at once, and a worker may go before the parent's
        # services are stopped.
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def _shutting_down(self) -> None:
        self._stopping = True

    def _start_all(self) -> None:
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}
        # Import the same netecho as the parent, wherever it came from.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (here, env.get("PYTHONPATH"))))
        return env

    def _spawn(self, number: int) -> None:
        self._timers.pop(number, None)
        if self._stopping:
            return
        child_fds: dict[int, object] = {0: "w", 1: "r", 2: "r", REPORTS_FD: "r"}
        listeners = {}
        for k, (index, fds) in enumerate(sorted(self.fds.items())):
            child_fds[FIRST_LISTENER_FD + k] = fds[(number - 1) % len(fds)]
            listeners[str(index)] = FIRST_LISTENER_FD + k
        spec = {"worker": number, "workers": self.count, "parent": os.getpid(),
                "listeners": listeners, "args": self.argv, "faults": str(self.faults.spec)}
        args = [sys.executable, "-m", "netecho.workers", json.dumps(spec)]
        process = WorkerProcess(self, number)
        self.processes[number] = process
        self.reactor.spawnProcess(process, sys.executable, args, env=self._environment(), childFDs=child_fds)
        log.info("worker {worker} started (pid {pid})", worker=number, pid=process.pid)

    def reported(self, process: WorkerProcess, report: dict) -> None:
        """A worker's report arrived."""
        number = process.number
        if self.processes.get(number) is not process:
            return
        if "stats" in report:
            self.stats.worker_report(number, report["stats"])
        if report.get("ready"):
            log.info("worker {worker} serving (pid {pid})", worker=number, pid=process.pid)
            self._ready.add(number)
            if len(self._ready) == self.count and not self.serving.called:
                self.serving.callback(None)
        if "stop" in report:
            self.parent.stop_daemon(f"worker {number}: {report['stop']}")

    def all_serving(self) -> bool:
        """Whether every worker serves now (none dead or starting again)."""
        return len(self._ready) == self.count

    def tell_all(self, order: dict) -> None:
        """Send C{order} to every live worker."""
        for process in self.processes.values():
            process.tell(order)

    def ended(self, process: WorkerProcess, value) -> None:
        """A worker process has ended (its pipes closed and it was reaped)."""
        number = process.number
        if self.processes.get(number) is process:
            del self.processes[number]
        self.stats.worker_ended(number)
        self._ready.discard(number)
        how = _how_it_ended(value)
        if self._stopping:
            log.info("worker {worker} (pid {pid}) stopped: {how}", worker=number, pid=process.pid, how=how)
            return
        now = self.clock()
        while self._restarts and self._restarts[0] <= now - 60:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS_A_MINUTE:
            log.critical(
                "worker {worker} (pid {pid}) died ({how}) after {n} restarts within a minute: stopping the daemon",
                worker=number, pid=process.pid, how=how, n=len(self._restarts))
            self.parent.fail_daemon("workers keep dying")
            return
        delay = min(FIRST_RESTART_DELAY * 2 ** len(self._restarts), MAX_RESTART_DELAY)
        self._restarts.append(now)
        log.error("worker {worker} (pid {pid}) died ({how}): restarting it in {delay}s",
                  worker=number, pid=process.pid, how=how, delay=delay)
        self._timers[number] = self.reactor.callLater(delay, self._spawn, number)

    def stopService(self):
        service.Service.stopService(self)
        self._stopping = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        waiting = []
        for process in list(self.processes.values()):
            waiting.append(process.ended)
            try:
                process.transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
        if not waiting:
            self._close_sockets()
            return None
        done = defer.DeferredList(waiting)
        killer = self.reactor.callLater(STOP_TIMEOUT, self._kill_all)
        done.addBoth(lambda result: killer.cancel() if killer.active() else None)
        done.addBoth(lambda result: self._close_sockets())
        return done

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _kill_all(self) -> None:
        for process in list(self.processes.values()):
            log.warn("worker {worker} (pid {pid}) did not stop in {t}s: SIGKILL",
                     worker=process.number, pid=process.pid, t=STOP_TIMEOUT)
            try:
                process.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass


# --- a worker --------------------------------------------------------------------


class WorkerService(NetechoService):
    """
    A worker's top service: serves its adopted listeners, reports to its
    parent, and leaves signals, systemd, the summary and stopping the
    daemon to the parent.
    """

    def __init__(self, role: "WorkerRole", reactor, stats: Stats, **kwargs) -> None:
        super().__init__(reactor, stats, **kwargs)
        self.role = role
        self._reporter: task.LoopingCall | None = None

    def startService(self) -> None:
        service.MultiService.startService(self)
        self.reactor.callWhenRunning(self._worker_ready)

    def _worker_ready(self) -> None:
        self.role.report({"ready": True, "stats": snapshot(self.stats)})
        self._reporter = task.LoopingCall(lambda: self.role.report({"stats": snapshot(self.stats)}))
        self._reporter.clock = self.reactor
        self._reporter.start(REPORT_INTERVAL, now=False)

    def stop_daemon(self, why: str) -> None:
        """Stopping is the parent's: ask it (a stop word with C{--exit-on-stop})."""
        self.role.report({"stop": why})

    def stopService(self):
        if self._reporter is not None and self._reporter.running:
            self._reporter.stop()
        d = service.MultiService.stopService(self)

        def last_report(result):
            self.role.report({"stats": snapshot(self.stats)})
            return result

        return defer.maybeDeferred(lambda: d).addBoth(last_report)


class AdoptingReactor:
    """
    A reactor for an endpoint description in a worker: its C{listenTCP},
    C{listenSSL} and C{listenUNIX} adopt the inherited listening socket
    instead of binding, so C{ssl:}, C{haproxy:} and every parameter wrap
    the factory as they do in the parent. Everything else is the reactor's.
    """

    def __init__(self, reactor, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self._reactor.adoptStreamPort(self._fd, self._family, factory)

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        from twisted.protocols import tls

        return self.listenTCP(port, tls.TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        return _unix_port(self._reactor, self._fd, factory)


def _unix_port(reactor, fd: int, factory):
    # The parent owns the socket file: never chmod or remove it here.
    outcome = []
    InheritedUNIXEndpoint(reactor, os.dup(fd)).listen(factory).addBoth(outcome.append)
    if hasattr(outcome[0], "raiseException"):  # a Failure
        outcome[0].raiseException()
    return outcome[0]


class AdoptedListenerService(service.Service):
    """A listener of a worker: adopts the socket its parent bound and passed as C{fd}."""

    def __init__(self, reactor, listener, fd: int, serve, own_ports: set[int]) -> None:
        self.reactor = reactor
        self.listener = listener
        self.fd = fd
        self.serve = serve
        self.own_ports = own_ports
        self.port = None
        self.setName(listener.label)

    def privilegedStartService(self) -> None:
        try:
            self.port = self._adopt()
        except Exception as e:
            raise ListenerError(f"cannot serve {self.listener.label}: {_reason(e)}") from e
        finally:
            os.close(self.fd)  # adopted ports hold a copy of their own
        host = self.port.getHost()
        if hasattr(host, "port"):
            self.own_ports.add(host.port)
        service.Service.privilegedStartService(self)

    def _adopt(self):
        from twisted.internet import endpoints

        probe = socket.socket(fileno=os.dup(self.fd))
        family, kind = probe.family, probe.type
        probe.close()
        fdesc.setNonBlocking(self.fd)
        if kind == socket.SOCK_DGRAM:
            return self.reactor.adoptDatagramPort(self.fd, family, self.serve(), MAX_DATAGRAM)
        description = self.listener.description
        if description.startswith("systemd:"):
            if family == socket.AF_UNIX:
                return _unix_port(self.reactor, self.fd, self.serve())
            return self.reactor.adoptStreamPort(self.fd, family, self.serve())
        endpoint = endpoints.serverFromString(
            AdoptingReactor(self.reactor, self.fd, family), adopted_description(description)
        )
        outcome: list = []
        endpoint.listen(self.serve()).addBoth(outcome.append)
        if not outcome:
            raise ListenerError("the endpoint did not listen at once")
        if hasattr(outcome[0], "raiseException"):
            outcome[0].raiseException()
        return outcome[0]

    def stopService(self):
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)


class Orders:
    """
    A worker's standard input, watched by the reactor: its parent's orders,
    one JSON object a line; end of file (the parent is gone) stops the worker.
    """

    def __init__(self, role: "WorkerRole", fd: int = 0) -> None:
        self.role = role
        self.fd = fd
        self._partial = b""
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "netecho-worker-orders"

    def doRead(self):
        return fdesc.readFromFD(self.fd, self._received)

    def _received(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            try:
                self.role.obey(json.loads(line))
            except Exception:
                log.failure("worker: bad order {line!r}", line=line)

    def connectionLost(self, reason) -> None:
        self.role.parent_gone()


class WorkerRole:
    """What makes a netecho process a worker: its inherited sockets and its pipes to the parent."""

    def __init__(self, spec: dict, reactor) -> None:
        self.reactor = reactor
        self.number = spec["worker"]
        #: listener index -> inherited descriptor.
        self.fds = {int(k): v for k, v in spec["listeners"].items()}
        self.top: WorkerService | None = None
        self.trouble: faults.Faults | None = None

    def service(self, reactor, stats, **kwargs) -> WorkerService:
        """The worker's top service (what makeService builds instead of NetechoService)."""
        self.top = WorkerService(self, reactor, stats, **kwargs)
        return self.top

    def listener_service(self, index: int, listener, serve, own_ports: set[int]):
        """The worker's service for listener C{index}, or None: not served here (PB, metrics)."""
        fd = self.fds.get(index)
        if fd is None:
            return None
        return AdoptedListenerService(self.reactor, listener, fd, serve, own_ports)

    def report(self, report: dict) -> None:
        """Tell the parent (descriptor 3; small lines, written whole)."""
        try:
            os.write(REPORTS_FD, json.dumps(report).encode() + b"\n")
        except OSError:
            pass  # the parent is gone: the end of standard input stops us

    def obey(self, order: dict) -> None:
        if "faults" in order and self.trouble is not None:
            self.trouble.set(order["faults"])

    def parent_gone(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the end of standard input still stops us
    if os.getppid() != parent:  # it died before prctl()
        os._exit(1)


def parent_observer(out) -> tuple[object, AcceptErrors]:
    """
    A worker's log observer: each event to its parent through C{out}, one
    JSON object (level, text) a line, past the daemon's rule for Twisted's
    accept errors (L{AcceptErrors}, returned too: its counter is set once
    the worker's counters exist).
    """
    accept_errors = AcceptErrors()

    def observe(event):
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                text += "\n" + failure.getTraceback()
            except Exception:
                pass
        level = event.get("log_level") or LogLevel.info
        try:
            out.write(json.dumps({"level": level.name, "msg": text}) + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    return accept_errors.filtered(observe), accept_errors


def worker_main(argv: list[str]) -> int:
    """A worker process: C{python -m netecho.workers SPEC} (started by L{Supervisor})."""
    spec = json.loads(argv[0])
    _die_with_parent(spec["parent"])
    # Ctrl-C reaches the whole process group: the parent stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from netecho.reactor import install
    except ImportError:
        from twisted.internet import reactor
    else:
        reactor = install()
    observer, accept_errors = parent_observer(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from twisted.python import usage

    from netecho import tap

    config = tap.Options()
    try:
        config.parseOptions(spec["args"])
    except usage.UsageError as e:
        report_fatal(str(e))
        return 1
    for name in SPLIT_LIMITS:
        config[name] = share(config[name], spec["workers"])
    role = WorkerRole(spec, reactor)
    top = tap.makeService(config, reactor, worker=role)
    accept_errors.count_refusals(top.stats.drop)
    if spec.get("faults") is not None and role.trouble is not None:
        role.trouble.set(spec["faults"])
    try:
        top.privilegedStartService()
    except SystemExit as e:
        return int(e.code or 1)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.addReader(Orders(role))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
