import io
import json
import os
import signal
import tempfile

from twisted.logger import LogLevel, LogPublisher, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netecho import daemon
from netecho.daemon import ROTATED_LOG_FILES, TwistdLog, json_line, use_for_twistd


class JSONLineTests(SynchronousTestCase):
    def test_one_object_a_line(self):
        out = io.StringIO()
        publisher = LogPublisher(lambda event: out.write(json_line(event)))
        Logger(namespace="netecho.x", observer=publisher).warn("hello {who}", who="world")
        text = out.getvalue()
        self.assertFalse(text.startswith("\x1e"))
        self.assertEqual(text.count("\n"), 1)
        record = json.loads(text)
        self.assertEqual(
            {k: record[k] for k in ("level", "logger", "msg", "who")},
            {"level": "warn", "logger": "netecho.x", "msg": "hello world", "who": "world"},
        )
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_time_is_utc(self):
        record = json.loads(json_line({"log_time": 0.0, "log_format": "x", "log_level": LogLevel.info}))
        self.assertEqual(record["time"], "1970-01-01T00:00:00.000Z")

    def test_failure_and_odd_values(self):
        try:
            1 / 0
        except ZeroDivisionError:
            f = Failure()
        record = json.loads(json_line({
            "log_format": "{n} {b!r}", "log_level": LogLevel.critical, "log_failure": f,
            "n": 1, "b": b"\x00", "pair": {("a", 1): 2}, "log_time": 1.0,
        }))
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["msg"], "1 b'\\x00'")
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertNotIn("log_failure", record)

    def test_legacy_fields_do_not_override(self):
        record = json.loads(json_line({"log_format": "{log_text}", "log_text": "legacy", "time": 5.0,
                                       "message": ("legacy",), "log_time": 0.0}))
        self.assertEqual((record["msg"], record["time"]), ("legacy", "1970-01-01T00:00:00.000Z"))
        self.assertNotIn("message", record)


class TwistdLogTests(SynchronousTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="netecho-log-")
        self.path = os.path.join(self.dir, "netecho.log")
        # TwistdLog.observer() installs SIGHUP/SIGUSR1 handlers: put ours back.
        for signum in (signal.SIGHUP, signal.SIGUSR1):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))

    def log_to_file(self, fmt="text"):
        twistd_log = TwistdLog({"logfile": self.path, "nodaemon": True}, fmt)
        observer = twistd_log.observer()
        self.addCleanup(lambda: twistd_log.log_file.close())
        return twistd_log, Logger(namespace="test", observer=observer)

    def read(self, path=None):
        with open(path or self.path) as f:
            return f.read()

    def test_reopen_after_move(self):
        """SIGHUP after logrotate's mv: a new file at the path, lines go there."""
        twistd_log, logger = self.log_to_file()
        logger.info("before")
        os.rename(self.path, self.path + ".1")
        twistd_log.handle_signal(signal.SIGHUP)
        logger.info("after")
        self.assertIn("before", self.read(self.path + ".1"))
        self.assertNotIn("after", self.read(self.path + ".1"))
        self.assertIn("after", self.read())

    def test_plain_sighup_makes_no_files(self):
        twistd_log, logger = self.log_to_file()
        for _ in range(3):
            twistd_log.handle_signal(signal.SIGHUP)
        self.assertEqual(os.listdir(self.dir), ["netecho.log"])

    def test_rotation_is_bounded(self):
        twistd_log, logger = self.log_to_file()
        for i in range(ROTATED_LOG_FILES + 3):
            logger.info("line {i}", i=i)
            twistd_log.handle_signal(signal.SIGUSR1)
        self.assertEqual(
            sorted(os.listdir(self.dir)),
            sorted(["netecho.log"] + [f"netecho.log.{i}" for i in range(1, ROTATED_LOG_FILES + 1)]),
        )

    def test_size_rotation_is_bounded(self):
        """twistd's size-based rotation (1 MB; here 200 bytes) keeps ROTATED_LOG_FILES old files."""
        twistd_log, logger = self.log_to_file()
        twistd_log.log_file.rotateLength = 200
        for i in range(5 * ROTATED_LOG_FILES):
            logger.info("line {i} {pad}", i=i, pad="x" * 100)
        self.assertEqual(len(os.listdir(self.dir)), 1 + ROTATED_LOG_FILES)
        self.assertIn(f"line {5 * ROTATED_LOG_FILES - 1} ", self.read())

    def test_json_file(self):
        twistd_log, logger = self.log_to_file("json")
        logger.info("x={x}", x=1)
        (record,) = [json.loads(line) for line in self.read().splitlines()]
        self.assertEqual((record["msg"], record["x"], record["logger"]), ("x=1", 1, "test"))

    def test_stdout_signals_are_logged_and_ignored(self):
        out = io.StringIO()
        self.patch(daemon.sys, "stdout", out)
        twistd_log = TwistdLog({"logfile": "-", "nodaemon": True}, "json")
        observer = twistd_log.observer()
        self.patch(daemon, "log", Logger(namespace="netecho.daemon", observer=observer))
        twistd_log.handle_signal(signal.SIGUSR1)
        (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual(record["msg"], "SIGUSR1 ignored: the log goes to standard output, no file to rotate")
        self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))

    def test_accept_errors_throttled_and_counted(self):
        """Twisted's EMFILE lines become one line per 10 s and counted refusals."""
        out = io.StringIO()
        self.patch(daemon.sys, "stdout", out)
        twistd_log = TwistdLog({"nodaemon": True}, "text")
        observer = twistd_log.observer()
        self.patch(daemon, "log", Logger(namespace="netecho.daemon", observer=observer))
        twistd_log._throttled = daemon.ThrottledLog(daemon.log, clock=lambda: 0.0)
        refused = []
        twistd_log.count_refusals(refused.append)
        port_log = Logger(namespace="twisted.internet.tcp.Port", observer=observer)
        for i in range(50):
            port_log.info("EMFILE encountered; releasing reserved file descriptor.")
            port_log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", 1000 + i))
            port_log.info("Re-reserving EMFILE recovery file descriptor.")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("out of file descriptors: refused a connection from 127.0.0.1:1000", lines[0])
        self.assertEqual(refused, ["fd_limit"] * 50)


class UseForTwistdTests(SynchronousTestCase):
    def setUp(self):
        self.patch(daemon, "_twistd_log", None)

    def test_names_the_factory(self):
        options = {"logger": None, "syslog": False, "logfile": "-", "nodaemon": True}
        twistd_log = use_for_twistd(options, "json")
        self.assertEqual(options["logger"], "netecho.daemon.twistd_observer")
        self.assertIs(daemon._twistd_log, twistd_log)

    def test_not_under_twistd(self):
        self.assertIsNone(use_for_twistd(None, "json"))

    def test_twistd_logs_elsewhere(self):
        for option in ("logger", "syslog"):
            options = {"logger": None, "syslog": False, option: "x"}
            self.assertIsNone(use_for_twistd(options, "text"))
            self.assertEqual(options["logger"], None if option == "syslog" else "x")
            e = self.assertRaises(ValueError, use_for_twistd, options, "json")
            self.assertIn(f"--{option}", str(e))
