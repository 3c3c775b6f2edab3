"""netecho.pytest_plugin in a pytest process of its own (pytest-twisted issue 93: an asynchronous trial TestCase
fails with a dirty reactor once a pytest-twisted test has run in the same process)."""

import os
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import TestCase

EXAMPLE = textwrap.dedent(
    '''
    import socket

    import pytest_twisted
    from twisted.internet import threads


    def roundtrip(family, kind, address, data):
        with socket.socket(family, kind) as s:
            s.settimeout(5)
            s.connect(address)
            s.sendall(data)
            return s.recv(100)


    @pytest_twisted.ensureDeferred
    async def test_tcp(netecho_tcp):
        reply = await threads.deferToThread(
            roundtrip, socket.AF_INET, socket.SOCK_STREAM, (netecho_tcp.host, netecho_tcp.port), b"hi\\n")
        assert reply == b"hi\\n"
        assert netecho_tcp.stats.tcp == 1


    @pytest_twisted.ensureDeferred
    async def test_udp(netecho_udp):
        reply = await threads.deferToThread(
            roundtrip, socket.AF_INET, socket.SOCK_DGRAM, (netecho_udp.host, netecho_udp.port), b"d")
        assert reply == b"d"


    @pytest_twisted.ensureDeferred
    async def test_unix(netecho_unix):
        reply = await threads.deferToThread(
            roundtrip, socket.AF_UNIX, socket.SOCK_STREAM, netecho_unix.path, b"u\\n")
        assert reply == b"u\\n"


    @pytest_twisted.ensureDeferred
    async def test_random(netecho_random):
        reply = await threads.deferToThread(
            roundtrip, socket.AF_INET, socket.SOCK_STREAM, (netecho_random.host, netecho_random.port), b"x\\n")
        assert 0 <= int(reply) < 2**31


    @pytest_twisted.ensureDeferred
    async def test_faulty(netecho_faulty_udp):
        server = netecho_faulty_udp("drop=1")
        try:
            await threads.deferToThread(
                roundtrip, socket.AF_INET, socket.SOCK_DGRAM, (server.host, server.port), b"d")
        except TimeoutError:
            pass
        else:
            raise AssertionError("a datagram got through drop=1")
        server.faults.clear()
        reply = await threads.deferToThread(
            roundtrip, socket.AF_INET, socket.SOCK_DGRAM, (server.host, server.port), b"d")
        assert reply == b"d"
        assert server.stats.faults == {"drop": 1}


    def test_fails_on_purpose(netecho_tcp):
        assert netecho_tcp.port == 0
    '''
)


class PytestPluginTests(TestCase):
    def test_fixtures(self):
        directory = tempfile.mkdtemp(prefix="netecho-plugin-")
        with open(os.path.join(directory, "test_example.py"), "w") as f:
            f.write(EXAMPLE)
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "netecho.pytest_plugin", "-p", "no:cacheprovider",
             "-q", "test_example.py"],
            cwd=directory, capture_output=True, text=True, timeout=120,
        )
        # Five pass; the one written to fail shows a failing test is reported as such.
        self.assertIn("1 failed, 5 passed", out.stdout, out.stdout + out.stderr)
        self.assertIn("test_fails_on_purpose", out.stdout)
        self.assertNotIn("Dirty", out.stdout)
