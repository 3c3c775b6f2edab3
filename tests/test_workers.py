"""netecho.workers without processes: options, shares of limits, summed counters, restart policy."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import tempfile
import time

from twisted.internet import error, task
from twisted.logger import LogLevel, LogPublisher, Logger, formatEvent
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from netecho import daemon, tap, workers
from netecho.daemon import NetechoService
from netecho.listeners import stream_listener, udp_listener, unix_listener
from netecho.stats import Stats


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class OptionsTests(SynchronousTestCase):
    def test_workers(self):
        self.assertEqual(parse("--workers", "3")["workers"], 3)
        self.assertEqual(parse("--workers", "auto")["workers"], workers.usable_cpus())
        self.assertEqual(parse("--workers", "3", "--tcp", "0").argv, ["--workers", "3", "--tcp", "0"])

    def test_default_has_no_workers_key(self):
        """Without --workers the options are what they were (tests/test_tap.py compares them whole)."""
        self.assertNotIn("workers", parse())

    def test_bad_values(self):
        for value, message in (("0", "must be from 1 to 256"), ("x", "is not a whole number or auto"),
                               ("257", "must be from 1 to 256")):
            with self.assertRaises(tap.usage.UsageError) as caught:
                parse("--workers", value)
            self.assertIn(message, str(caught.exception))

    def test_share(self):
        self.assertEqual(workers.share(10000, 3), 3334)
        self.assertEqual(workers.share(1, 4), 1)
        self.assertEqual(workers.share(0, 4), 0)
        self.assertEqual(workers.share(100000.0, 2), 50000.0)
        self.assertIsInstance(workers.share(1000.0, 3), float)


class TreeTests(SynchronousTestCase):
    def test_one_worker_is_todays_tree(self):
        for args in ((), ("--workers", "1")):
            top = tap.makeService(parse("--tcp", "0", *args), reactor=task.Clock())
            self.assertIs(type(top), NetechoService)
            self.assertIs(type(top.stats), Stats)
            self.assertIsNone(top.workers)
            self.assertNotIn("workers", [child.name for child in top])

    def test_supervisor_last(self):
        top = tap.makeService(parse("--tcp", "0", "--pb", "0", "--workers", "2"), reactor=task.Clock())
        self.assertIsInstance(top.stats, workers.DaemonStats)
        children = list(top)
        self.assertIsInstance(children[-1], workers.Supervisor)
        self.assertIs(top.workers, children[-1])
        self.assertEqual(top.workers.count, 2)


def report(**counts) -> dict:
    stats = Stats()
    for _ in range(counts.get("tcp", 0)):
        stats.connection_opened("tcp")
    stats.sent("tcp", counts.get("bytes", 0))
    if counts.get("datagram"):
        stats.datagram_sent(counts["datagram"], ("192.0.2.1", 5000))
    if counts.get("refused"):
        stats.drop("max_connections", counts["refused"])
    return workers.snapshot(stats)


class CountersTests(SynchronousTestCase):
    def test_summed_over_parent_and_workers(self):
        stats = workers.DaemonStats(clock=lambda: 100.0)
        stats.rpc_call("add")
        stats.connection_opened("pb")
        stats.worker_report(1, report(tcp=2, bytes=10, datagram=5))
        stats.worker_report(2, report(tcp=3, bytes=20, refused=1))
        total = stats.combined()
        self.assertEqual((total.tcp, total.pb, total.bytes_echoed, total.datagrams_echoed), (5, 1, 35, 1))
        self.assertEqual((total.active["tcp"], total.dropped, total.rpc_calls), (5, {"max_connections": 1}, 1))
        self.assertEqual(total.udp_peers, 1)
        self.assertEqual(stats.summary(), total.summary())
        self.assertEqual(stats.as_dict()["tcp"], 5)
        self.assertEqual({k: v.tcp for k, v in stats.by_worker().items()}, {"1": 2, "2": 3})

    def test_dead_worker_counts_kept_connections_closed(self):
        stats = workers.DaemonStats()
        stats.worker_report(1, report(tcp=2, bytes=10))
        stats.worker_ended(1)
        stats.worker_report(1, report(tcp=1, bytes=1))
        total = stats.combined()
        self.assertEqual((total.tcp, total.active["tcp"], total.bytes_echoed), (3, 1, 11))
        self.assertEqual(list(stats.by_worker()), ["1"])

    def test_default_stats_are_their_own_total(self):
        stats = Stats()
        self.assertIs(stats.combined(), stats)
        self.assertEqual(stats.by_worker(), {})


class FakeProcess:
    def __init__(self, number):
        self.number = number
        self.pid = 1000 + number


class FakeTop:
    def __init__(self):
        self.failed = []
        self.stopped = []

    def fail_daemon(self, why):
        self.failed.append(why)

    def stop_daemon(self, why):
        self.stopped.append(why)


class RestartTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        config = parse("--tcp", "0", "--workers", "2")
        stats = workers.DaemonStats()
        self.supervisor = workers.Supervisor(self.clock, config, stats, workers.SharedFaults(stats, "", self.clock),
                                             clock=self.clock.seconds)
        self.supervisor.parent = self.top = FakeTop()
        self.spawned = []
        self.supervisor._spawn = self.spawned.append

    def die(self, number=1):
        process = FakeProcess(number)
        self.supervisor.processes[number] = process
        self.supervisor.ended(process, error.ProcessTerminated(signal=9))

    def test_back_off_then_cap(self):
        delays = []
        for i in range(workers.MAX_RESTARTS_A_MINUTE):
            self.die()
            delays.append(self.supervisor._timers[1].getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(self.spawned, [1] * workers.MAX_RESTARTS_A_MINUTE)
        self.assertEqual(delays, sorted(delays))
        self.assertEqual(delays[0], workers.FIRST_RESTART_DELAY)
        self.die()
        self.assertEqual(self.top.failed, ["workers keep dying"])

    def test_cap_is_a_minute(self):
        for i in range(workers.MAX_RESTARTS_A_MINUTE):
            self.die()
            self.clock.advance(30)
        self.clock.advance(31)
        self.die()
        self.assertEqual(self.top.failed, [])

    def test_no_restart_while_stopping(self):
        self.supervisor._stopping = True
        self.die()
        self.assertEqual((self.spawned, self.supervisor._timers, self.top.failed), ([], {}, []))

    def test_stop_word_of_a_worker_stops_the_daemon(self):
        process = FakeProcess(2)
        self.supervisor.processes[2] = process
        self.supervisor.reported(process, {"stop": "stop word received with --exit-on-stop"})
        self.assertEqual(self.top.stopped, ["worker 2: stop word received with --exit-on-stop"])

    def test_ready_once_every_worker_serves(self):
        for number in (1, 2):
            self.supervisor.processes[number] = FakeProcess(number)
        self.supervisor.reported(self.supervisor.processes[1], {"ready": True})
        self.assertFalse(self.supervisor.serving.called)
        self.supervisor.reported(self.supervisor.processes[2], {"ready": True, "stats": report(tcp=1)})
        self.assertTrue(self.supervisor.serving.called)
        self.assertEqual(self.supervisor.stats.combined().tcp, 1)

    def test_faults_passed_on(self):
        told = []
        self.supervisor.tell_all = told.append
        self.supervisor.faults.set("delay=10ms")
        self.assertEqual(told, [{"faults": "delay=10ms"}])


def listening(family=socket.AF_INET, host="127.0.0.1", v6only=None) -> socket.socket:
    """A listening TCP socket on loopback, bound as Twisted's ports bind (no SO_REUSEPORT)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    sock.bind((host, 0))
    sock.listen(256)
    return sock


def accepted(sockets, expected: int, timeout: float = 10) -> list[int]:
    """
    Accept from each of C{sockets} until C{expected} connections in all (a
    handshake's last ACK may land after connect() returned, on a loaded
    machine) or C{timeout}; how many each had.
    """
    counts = [0] * len(sockets)
    for sock in sockets:
        sock.setblocking(False)
    deadline = time.monotonic() + timeout
    while sum(counts) < expected and time.monotonic() < deadline:
        for i, sock in enumerate(sockets):
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                counts[i] += 1
        if sum(counts) < expected:
            time.sleep(0.01)
    return counts


class ReuseportTests(SynchronousTestCase):
    """One listening socket a worker: a SO_REUSEPORT group made from the parent's socket."""

    def test_group_spreads_a_burst(self):
        """
        A burst of 200 connects spreads over the parent's socket and the new
        one within +/-25% (the kernel hashes each connection: with 200, a
        miss is 3.5 standard deviations away).
        """
        first = listening()
        self.addCleanup(first.close)
        (second,) = workers.reuseport_group(first, 1, 256)
        self.addCleanup(second.close)
        port = first.getsockname()[1]
        self.assertEqual(second.getsockname(), first.getsockname())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
        self.addCleanup(lambda: [c.close() for c in clients])
        counts = accepted([first, second], 200)
        self.assertEqual(sum(counts), 200)
        for n in counts:
            self.assertTrue(75 <= n <= 125, counts)

    def test_port_still_guarded(self):
        """Only a socket that asks for SO_REUSEPORT can join: anyone else still finds the port in use."""
        first = listening()
        self.addCleanup(first.close)
        more = workers.reuseport_group(first, 2, 50)
        self.addCleanup(lambda: [s.close() for s in more])
        self.assertEqual(len(more), 2)
        with socket.socket() as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with self.assertRaises(OSError):
                other.bind(first.getsockname())

    def test_dual_stack_kept(self):
        """
        An IPv6 socket that takes IPv4 (IPV6_V6ONLY=0, as a bare --tcp PORT
        listens) gives sockets that do too: here on ::ffff:127.0.0.1, where
        an IPv6-only socket could not even bind.
        """
        try:
            first = listening(socket.AF_INET6, "::ffff:127.0.0.1", v6only=0)
        except OSError as e:
            raise SkipTest(f"no IPv6 here: {e}")
        self.addCleanup(first.close)
        (second,) = workers.reuseport_group(first, 1, 50)
        self.addCleanup(second.close)
        self.assertEqual((second.family, second.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)),
                         (socket.AF_INET6, 0))
        port = first.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
        self.addCleanup(lambda: [c.close() for c in clients])
        self.assertEqual(sum(accepted([first, second], 20)), 20)

    def test_which_listeners(self):
        """TCP that the parent bound: a socket each; UDP, Unix and systemd's sockets: shared."""
        tcp = listening()
        self.addCleanup(tcp.close)
        self.assertTrue(workers.own_socket_each(stream_listener("tcp", "tcp:0:interface=127.0.0.1"), tcp))
        self.assertTrue(workers.own_socket_each(stream_listener("random", "0"), tcp))
        self.assertFalse(workers.own_socket_each(stream_listener("tcp", "systemd:domain=INET:name=tcp"), tcp))
        self.assertFalse(workers.own_socket_each(
            stream_listener("tcp", "haproxy:systemd:domain=INET:name=tcp"), tcp))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            self.assertFalse(workers.own_socket_each(udp_listener("127.0.0.1:0"), udp))
        with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX) as unix:
            path = os.path.join(d, "s")
            unix.bind(path)
            self.assertFalse(workers.own_socket_each(unix_listener(path, 0o660), unix))


class AdoptedDescriptionTests(SynchronousTestCase):
    """What a worker listens with: systemd's names are the parent's, so a wrapped systemd: becomes tcp:/unix:."""

    def test_wrapped_systemd(self):
        self.assertEqual(workers.adopted_description("haproxy:systemd:domain=INET:name=tcp"), "haproxy:tcp:0")
        self.assertEqual(workers.adopted_description("haproxy:systemd:domain=INET6:index=0"), "haproxy:tcp:0")
        self.assertEqual(workers.adopted_description("haproxy:systemd:domain=UNIX:name=u"),
                         "haproxy:unix:address=adopted")

    def test_others_unchanged(self):
        for description in ("tcp:0:interface=127.0.0.1", "haproxy:tcp:1234", "ssl:0:privateKey=k.pem",
                            "systemd:domain=INET:name=tcp"):
            self.assertEqual(workers.adopted_description(description), description)


class BoundSocketTests(SynchronousTestCase):
    """Which ports the parent may make a SO_REUSEPORT group from: those that bound their socket."""

    def test_bound_and_adopted(self):
        from twisted.internet import protocol, reactor

        from netecho.transports import bound_socket

        port = reactor.listenTCP(0, protocol.Factory(), backlog=77, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sock, backlog = bound_socket(port)
        self.assertEqual((sock.fileno(), backlog), (port.fileno(), 77))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(5)
            adopted = reactor.adoptStreamPort(s.fileno(), socket.AF_INET, protocol.Factory())
            self.addCleanup(adopted.stopListening)
        self.assertIsNone(bound_socket(adopted))
        self.assertIsNone(bound_socket(object()))


class WorkerLogTests(SynchronousTestCase):
    """A worker's log goes to its parent past the daemon's rule for accept errors."""

    def test_accept_errors_throttled_and_counted(self):
        out = io.StringIO()
        observer, accept_errors = workers.parent_observer(out)
        # The rule's one line goes through netecho.daemon's logger, which in
        # a worker logs to this observer.
        self.patch(daemon, "log", Logger(namespace="netecho.daemon", observer=lambda e: observer(e)))
        accept_errors._throttled = daemon.ThrottledLog(daemon.log, clock=lambda: 0.0)
        stats = Stats()
        accept_errors.count_refusals(stats.drop)
        port_log = Logger(namespace="twisted.internet.tcp.Port", observer=observer)
        for i in range(50):
            port_log.info("EMFILE encountered; releasing reserved file descriptor.")
            port_log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 1000 + i))
            port_log.info("Re-reserving EMFILE recovery file descriptor.")
        port_log.info("Could not accept new connection ({acceptError})", acceptError="ENOBUFS")
        port_log.info("something else")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([line["level"] for line in lines], ["warn", "warn", "info"], lines)
        self.assertIn("out of file descriptors: refused a connection from 127.0.0.1:1000", lines[0]["msg"])
        self.assertEqual(lines[1]["msg"], "could not accept a connection: ENOBUFS")
        self.assertEqual(lines[2]["msg"], "something else")
        self.assertEqual(stats.dropped, {"fd_limit": 50, "accept_error": 1})
        self.assertEqual(workers.snapshot(stats)["dropped"], {"fd_limit": 50, "accept_error": 1})


class ExitAfterTwistdTests(SynchronousTestCase):
    """fail_daemon's exit status: SystemExit out of twistd's last log line."""

    def test_exit_at_twistd_last_line(self):
        seen = []
        publisher = LogPublisher(seen.append)
        daemon.exit_after_twistd(1, publisher)
        log = Logger(namespace="twisted.scripts._twistd_unix.UnixAppLogger", observer=publisher)
        log.info("Main loop terminated.")
        with self.assertRaises(SystemExit) as caught:
            log.info(daemon.TWISTD_DONE)
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual([e["log_format"] for e in seen], ["Main loop terminated.", daemon.TWISTD_DONE])
        log.info(daemon.TWISTD_DONE)  # once only: the observer is gone


class FakeSpawner:
    """Records what Supervisor._spawn would start."""

    def __init__(self):
        self.spawned = []

    def spawnProcess(self, process, executable, args, env, childFDs):
        self.spawned.append((json.loads(args[-1]), childFDs))


class SupervisorSocketsTests(TestCase):
    """The parent's sockets for its workers, on real listeners (no worker is started)."""

    def tree(self, *args):
        from twisted.internet import reactor

        top = tap.makeService(parse(*args), reactor=reactor)
        top.privilegedStartService()  # binds; startService (which spawns) is not called
        self.addCleanup(top.stopService)
        return top

    def test_a_socket_each_for_tcp_one_for_udp(self):
        top = self.tree("--tcp", "tcp:0:interface=127.0.0.1", "--udp", "127.0.0.1:0", "--workers", "3")
        supervisor = top.workers
        tcp_fds, udp_fds = (supervisor.fds[i] for i in sorted(supervisor.fds))
        self.assertEqual(len(set(tcp_fds)), 3)
        self.assertEqual(len(udp_fds), 1)
        names = set()
        for fd in tcp_fds:
            with socket.socket(fileno=os.dup(fd)) as s:
                self.assertEqual(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
                names.add(s.getsockname())
        self.assertEqual(len(names), 1)  # one address: the port the kernel chose for port 0
        supervisor.reactor = spawner = FakeSpawner()
        for number in (1, 2, 3):
            supervisor._spawn(number)
        supervisor.processes.clear()  # nothing was started: nothing to stop
        given = [(spec["listeners"], fds) for spec, fds in spawner.spawned]
        self.assertEqual([listeners for listeners, _ in given], [{"0": 4, "1": 5}] * 3)
        self.assertEqual([fds[4] for _, fds in given], tcp_fds)  # worker N: the Nth socket
        self.assertEqual([fds[5] for _, fds in given], udp_fds * 3)  # one UDP socket for all

    async def test_sockets_closed_on_stop(self):
        top = self.tree("--tcp", "tcp:0:interface=127.0.0.1", "--workers", "2")
        made = list(top.workers._sockets)
        self.assertEqual(len(made), 1)
        await top.stopService()
        self.assertEqual((made[0].fileno(), top.workers._sockets), (-1, []))

    def test_no_group_falls_back_to_one_socket(self):
        events = []
        self.patch(workers, "log", Logger(observer=events.append))

        def refused(sock, more, backlog):
            raise OSError(errno.EPERM, "Operation not permitted")

        self.patch(workers, "reuseport_group", refused)
        top = self.tree("--tcp", "tcp:0:interface=127.0.0.1", "--workers", "2")
        ((fd,),) = top.workers.fds.values()
        self.assertEqual(fd, top.workers.parent.namedServices["--tcp tcp:0:interface=127.0.0.1"].port.fileno())
        (warning,) = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(formatEvent(warning), "--tcp tcp:0:interface=127.0.0.1: the workers share one socket "
                                               "(no SO_REUSEPORT group: operation not permitted)")
