import errno

from twisted.internet import error
from twisted.trial.unittest import SynchronousTestCase

from netecho.errors import dial_error, io_error


class DialErrorTests(SynchronousTestCase):
    def test_wording(self):
        cases = [
            ("tcp", "127.0.0.1:1024", error.ConnectionRefusedError(), "dial tcp 127.0.0.1:1024: connection refused"),
            ("tcp", "[::1]:7", error.TimeoutError(), "dial tcp [::1]:7: i/o timeout"),
            ("tcp", "x.invalid:7", error.DNSLookupError("x"), "dial tcp: lookup x.invalid: no such host"),
            ("unix", "/s", error.ConnectError(errno.ENOENT, "No such file"), "dial unix /s: connect: no such file or directory"),
            ("unix", "/s", error.ConnectError(errno.EACCES, "x"), "dial unix /s: connect: permission denied"),
            ("unix", "/s", error.ConnectionRefusedError(errno.ECONNREFUSED, "x"), "dial unix /s: connect: connection refused"),
        ]
        for network, target, exc, expected in cases:
            self.assertEqual(str(dial_error(network, target, exc)), expected)

    def test_io_error(self):
        self.assertEqual(
            str(io_error("read", "tcp", "h:1", error.ConnectionDone())),
            "read tcp h:1: connection closed by the server",
        )
