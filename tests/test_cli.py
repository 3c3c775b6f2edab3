import io
import sys

from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from netecho.cli import build_parser, main
from netecho.cli.lines import LineConnection


class ParserTests(SynchronousTestCase):
    def test_tcp_defaults(self):
        args = build_parser().parse_args(["tcp", "[::1]:7"])
        self.assertEqual(
            (args.address, args.message, args.timeout, args.stop_word), (("::1", 7), None, 10.0, "STOP")
        )

    def test_udp_defaults(self):
        args = build_parser().parse_args(["udp", "localhost:7"])
        self.assertEqual(
            (args.address, args.message, args.timeout, args.retries),
            (("localhost", 7), "Hello UDP Echo server!", 2.0, 2),
        )

    def test_unix_repeat(self):
        args = build_parser().parse_args(["unix", "/s", "--repeat", "hi", "--interval", "0.5", "--count", "3"])
        self.assertEqual((args.path, args.repeat, args.interval, args.count), ("/s", "hi", 0.5, 3))

    def test_usage_error_is_2(self):
        self.patch(sys, "stderr", io.StringIO())
        for argv in (["tcp", "x"], ["unix"], ["udp", "h:1", "--timeout", "-1"]):
            e = self.assertRaises(SystemExit, main, argv)
            self.assertEqual(e.code, 2, argv)
        self.assertEqual(main([]), 2)


    def test_password_never_echoed(self):
        """
        --password (or an abbreviation of --password-file) is refused as a
        usage error that never repeats the secret; no option is abbreviated.
        """
        for argv in (["rpc", "127.0.0.1:1", "--password", "s3cret"],
                     ["rpc", "127.0.0.1:1", "--password=s3cret", "add", "1", "2"],
                     ["rpc", "127.0.0.1:1", "--pass", "s3cret"]):
            err = io.StringIO()
            self.patch(sys, "stderr", err)
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            self.assertEqual(code, 2, argv)
            self.assertNotIn("s3cret", err.getvalue(), argv)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["rpc", "127.0.0.1:1", "--password", "s3cret"]), 2)
        self.assertIn("passwords are never taken from the command line", err.getvalue())
        for p in build_parser()._subparsers._group_actions[0].choices.values():
            self.assertFalse(p.allow_abbrev, p.prog)


    def test_usage_errors_name_the_subcommand(self):
        """An unknown option gets the subcommand's usage line; --count without --repeat is refused."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, main, ["tcp", "127.0.0.1:7", "--bogus"])
        self.assertEqual(e.code, 2)
        self.assertIn("usage: netecho tcp", err.getvalue())
        self.assertIn("unrecognized arguments: --bogus", err.getvalue())
        err.truncate(0)
        self.assertEqual(main(["unix", "/nonexistent.sock", "--count", "3"]), 2)
        self.assertIn("--count and --interval go with --repeat TEXT", err.getvalue())


    def test_completion_scripts(self):
        """netecho completion bash|zsh: scripts made from the same parsers, naming every subcommand."""
        for shell, marker in (("bash", "complete -o bashdefault -F _shtab_netecho netecho"), ("zsh", "#compdef netecho")):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            self.assertEqual(main(["completion", shell]), 0)
            script = out.getvalue()
            self.assertIn(marker, script)
            for command in ("tcp", "udp", "unix", "ping", "rpc", "lookup", "bench", "plugin-cache"):
                self.assertIn(command, script)
            self.assertIn("--password-file", script)


    def test_error_before_the_coroutine_starts(self):
        """A UserError raised while main() builds its coroutine is one line and status 100, not a hang."""
        from netecho.cli.runner import run
        from netecho.errors import UserError
        from twisted.internet.testing import MemoryReactorClock

        def main(reactor):
            raise UserError("tls: cannot read --ca /nonexistent: no such file or directory")

        class Reactor(MemoryReactorClock):
            def run(self, installSignalHandlers=True):
                self.running = True
                for f, args, kwargs in self.whenRunningHooks:
                    f(*args, **kwargs)

            def stop(self):
                self.running = False

        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(run(main, Reactor()), 100)
        self.assertEqual(err.getvalue(), "tls: cannot read --ca /nonexistent: no such file or directory\n")


class LineConnectionTests(SynchronousTestCase):
    def setUp(self):
        self.conn = LineConnection()
        self.conn.makeConnection(StringTransport())

    def test_split_reply(self):
        d = self.conn.read_line()
        self.conn.dataReceived(b"ab")
        self.assertNoResult(d)
        self.conn.dataReceived(b"c\nde")
        self.assertEqual(self.successResultOf(d), b"abc\n")
        d = self.conn.read_line()
        self.conn.dataReceived(b"\n")
        self.assertEqual(self.successResultOf(d), b"de\n")

    def test_merged_replies(self):
        self.conn.dataReceived(b"one\ntwo\n")
        self.assertEqual(self.successResultOf(self.conn.read_line()), b"one\n")
        self.assertEqual(self.successResultOf(self.conn.read_line()), b"two\n")

    def test_close_with_partial_line(self):
        d = self.conn.read_line()
        self.conn.dataReceived(b"tail")
        self.conn.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.successResultOf(d), b"tail")
        self.failureResultOf(self.conn.read_line(), error.ConnectionDone)


class BrokenPipeTests(SynchronousTestCase):
    """
    A reactor subcommand whose stdout nobody reads any more (``| head -1``)
    ends quietly with status 141 (128 + SIGPIPE), as netecho.cli.runner
    documents, whichever subcommand it is.
    """

    def run_into_closed_pipe(self, *argv: str):
        import os
        import subprocess
        import tempfile

        read, write = os.pipe()
        os.close(read)  # nobody will read
        try:
            return subprocess.run([sys.executable, "-m", "netecho", *argv], stdout=write, stderr=subprocess.PIPE,
                                  timeout=30, cwd=tempfile.gettempdir())
        finally:
            os.close(write)

    def test_ping_exits_141_without_traceback(self):
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        # (netecho lookup's own cases: tests/integration/test_lookup_dns.py, EndingTests.)
        out = self.run_into_closed_pipe("ping", "udp", f"127.0.0.1:{port}", "-c", "2", "-i", "0.05", "-W", "0.2")
        self.assertEqual((out.returncode, out.stderr), (141, b""))

    def test_commands_without_the_reactor_too(self):
        """netecho completion (and bench, the setup commands) end the same way, outside the runner."""
        out = self.run_into_closed_pipe("completion", "bash")
        self.assertEqual((out.returncode, out.stderr), (141, b""))
