import os
import socket
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from netecho.notify import sd_notify


class NotifyTests(SynchronousTestCase):
    def test_sends_to_notify_socket(self):
        path = os.path.join(tempfile.mkdtemp(), "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            self.assertTrue(sd_notify("READY=1", {"NOTIFY_SOCKET": path}))
            self.assertEqual(sock.recv(100), b"READY=1")

    def test_unset_or_unreachable(self):
        self.assertFalse(sd_notify("READY=1", {}))
        self.assertFalse(sd_notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))
