"""netecho.workers without processes: options, shares of limits, summed counters, restart policy."""

from __future__ import annotations

from twisted.internet import error, task
from twisted.trial.unittest import SynchronousTestCase

from netecho import tap, workers
from netecho.daemon import NetechoService
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
