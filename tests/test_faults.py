"""
Faults on purpose (netecho/faults.py) through netecho.testing's services,
on loopback: the SPEC, and each fault's accuracy as the README states it.
"""

from __future__ import annotations

import os
import socket
import statistics
import time

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from netecho.faults import FaultSpec, parse
from netecho.testing import tcp_echo, udp_echo, unix_echo


class SpecTests(SynchronousTestCase):
    def test_items(self):
        spec = parse("delay=50ms, jitter=10ms,drop=0.1,duplicate=0.2,corrupt=0.5,bandwidth=64KB,"
                     "slice=4,slice-delay=1ms,reset-after=1KiB,close-after=100,stall,seed=7")
        self.assertEqual(spec, FaultSpec(delay=0.05, jitter=0.01, drop=0.1, duplicate=0.2, corrupt=0.5,
                                         bandwidth=64000, slice=4, slice_delay=0.001, reset_after=1024,
                                         close_after=100, stall=True, seed=7))
        self.assertEqual(parse("bandwidth=1MiB").bandwidth, 1 << 20)
        self.assertEqual(parse("delay=1.5s").delay, 1.5)
        self.assertEqual(str(parse("delay=50ms,slice=4,stall")), "delay=50ms,slice=4,stall")
        self.assertEqual(parse(""), FaultSpec())
        self.assertFalse(parse("").stream or parse("").datagram)
        self.assertTrue(parse("drop=0.5").datagram)
        self.assertFalse(parse("drop=0.5").stream)

    def test_errors_name_the_item(self):
        for text, message in (
            ("drop=1.5", "drop=1.5: not a probability between 0 and 1"),
            ("delay=5", "delay=5: '5' is not a duration such as 50ms or 1.5s"),
            ("frob=1", "frob=1: unknown fault"),
            ("slice=0", "slice=0: not a whole number of bytes, 1 or more"),
            ("delay", "delay: needs a value (delay=...)"),
            ("seed=x", "seed=x: not a whole number"),
        ):
            with self.assertRaises(ValueError) as caught:
                parse(text)
            self.assertTrue(str(caught.exception).startswith(message), (text, str(caught.exception)))


def connect(service, timeout: float = 10) -> socket.socket:
    if service.path is not None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(service.path)
    else:
        s = socket.create_connection((service.host, service.port))
    s.settimeout(timeout)
    return s


def probes(service, count: int) -> list[float]:
    """Round-trip times (s) of C{count} probes on one connection, each checked whole."""
    times = []
    with connect(service) as s:
        for i in range(count):
            message = b"probe %d\n" % i
            start = time.monotonic()
            s.sendall(message)
            got = b""
            while len(got) < len(message):
                got += s.recv(100)
            times.append(time.monotonic() - start)
            assert got == message, (got, message)
    return times


class StreamFaultTests(TestCase):
    async def test_delay(self):
        """delay=50ms: 100 probes have a median between 50 and 53 ms."""
        service = tcp_echo(self, faults="delay=50ms")
        times = await threads.deferToThread(probes, service, 100)
        self.assertTrue(0.050 <= statistics.median(times) <= 0.053, statistics.median(times))
        self.assertEqual(service.stats.faults["delay"], 100)

    async def test_jitter_keeps_the_stream_whole(self):
        """
        jitter=10ms: probes in 40..61 ms (never early; all but a few in the
        range: on a busy 2-core machine the scheduler can hold one probe
        back by tens of milliseconds, which the fault did not add); a stream
        of many writes comes back complete and in order.
        """
        service = tcp_echo(self, faults="delay=50ms,jitter=10ms")
        times = await threads.deferToThread(probes, service, 50)
        self.assertGreaterEqual(min(times), 0.040)
        self.assertGreaterEqual(sum(0.040 <= t <= 0.061 for t in times), 45, sorted(times)[-5:])

        def stream() -> bytes:
            data = os.urandom(200_000).replace(b"\n", b"x")
            with connect(service) as s:
                for i in range(0, len(data), 1000):
                    s.sendall(data[i : i + 1000])
                s.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            return got == data

        self.assertTrue(await threads.deferToThread(stream))

    async def test_bandwidth(self):
        """bandwidth=1MB: a 5 MB echo takes 5 s +/- 5%."""
        service = tcp_echo(self, faults="bandwidth=1MB")
        data = os.urandom(5_000_000).replace(b"\n", b"x")

        def transfer() -> tuple[float, bool]:
            with connect(service, timeout=20) as s:
                start = time.monotonic()
                sent = 0
                got = bytearray()
                s.setblocking(False)
                while len(got) < len(data):
                    if sent < len(data):
                        try:
                            sent += s.send(data[sent : sent + 65536])
                        except BlockingIOError:
                            pass
                    try:
                        got += s.recv(1 << 20)
                    except BlockingIOError:
                        time.sleep(0.001)
                    if time.monotonic() - start > 20:
                        break
                return time.monotonic() - start, bytes(got) == data

        took, whole = await threads.deferToThread(transfer)
        self.assertTrue(whole)
        self.assertTrue(4.75 <= took <= 5.25, took)

    async def test_slices(self):
        """
        slice=16,slice-delay=1ms: no recv of more than 16 bytes, all of it in
        order. The client is a process of its own, as a real one is (a
        thread of this process could be kept from reading for longer than
        the 1 ms between slices by the reactor's thread holding the GIL).
        """
        import subprocess
        import sys

        service = unix_echo(self, faults="slice=16,slice-delay=1ms")
        client = (
            "import os, socket, sys\n"
            "data = os.urandom(1000).replace(b'\\n', b'x')\n"
            "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1]); s.sendall(data)\n"
            "got, largest = b'', 0\n"
            "while len(got) < len(data):\n"
            "    chunk = s.recv(65536); largest = max(largest, len(chunk)); got += chunk\n"
            "print(largest, got == data)\n"
        )
        out = await threads.deferToThread(
            subprocess.run, [sys.executable, "-c", client, service.path], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        largest, whole = out.stdout.split()
        self.assertLessEqual(int(largest), 16)
        self.assertEqual(whole, "True")

    async def check_cut(self, spec: str, expected_error) -> None:
        service = tcp_echo(self, faults=spec)

        def read() -> tuple[int, str]:
            with connect(service) as s:
                s.sendall(b"y" * 3000)
                got = 0
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            return got, "eof"
                        got += len(chunk)
                except ConnectionResetError:
                    return got, "reset"

        self.assertEqual(await threads.deferToThread(read), (1000, expected_error))

    async def test_reset_after(self):
        """reset-after=1000: exactly 1,000 bytes come back, then ECONNRESET."""
        await self.check_cut("reset-after=1000", "reset")

    async def test_close_after(self):
        """close-after=1000: exactly 1,000 bytes, then end of file."""
        await self.check_cut("close-after=1000", "eof")

    async def test_stall(self):
        """stall: accepted, never answered."""
        service = tcp_echo(self, faults="stall")

        def read() -> bool:
            with connect(service, timeout=0.5) as s:
                s.sendall(b"anyone?\n")
                try:
                    s.recv(100)
                except TimeoutError:
                    return True
                return False

        self.assertTrue(await threads.deferToThread(read))
        self.assertEqual(service.stats.faults["stall"], 1)

    async def test_set_and_clear_while_running(self):
        """New connections take the faults in force when they connect."""
        service = tcp_echo(self)
        fast = await threads.deferToThread(probes, service, 3)
        service.faults.set("delay=100ms")
        slow = await threads.deferToThread(probes, service, 3)
        service.faults.clear()
        fast_again = await threads.deferToThread(probes, service, 3)
        self.assertLess(max(fast + fast_again), 0.05)
        self.assertGreaterEqual(min(slow), 0.1)


def datagrams(service, count: int, payload=lambda i: b"%08d" % i) -> dict[int, list[bytes]]:
    """Send C{count} numbered datagrams in bursts; the replies by number."""
    replies: dict[int, list[bytes]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        target = (service.host, service.port)
        for start in range(0, count, 100):
            for i in range(start, min(count, start + 100)):
                s.sendto(payload(i), target)
            while True:
                try:
                    data = s.recv(65536)
                except TimeoutError:
                    break
                replies.setdefault(int(data[:8]) if data[:8].isdigit() else -1, []).append(data)
    return replies


class DatagramFaultTests(TestCase):
    async def test_drop_rate_and_seed(self):
        """drop=0.1,seed=1: of 10,000 datagrams 9.0-11.0% unanswered, the same ones on a second run."""
        lost = []
        for _ in range(2):
            service = udp_echo(self, faults="drop=0.1,seed=1")
            replies = await threads.deferToThread(datagrams, service, 10_000)
            missing = set(range(10_000)) - set(replies)
            self.assertTrue(900 <= len(missing) <= 1100, len(missing))
            self.assertEqual(service.stats.faults["drop"], len(missing))
            lost.append(missing)
            await service.stop()
        self.assertEqual(lost[0], lost[1])

    async def test_duplicate_and_corrupt(self):
        service = udp_echo(self, faults="duplicate=1")
        replies = await threads.deferToThread(datagrams, service, 20)
        self.assertEqual({i: len(r) for i, r in replies.items()}, {i: 2 for i in range(20)})
        service.faults.set("corrupt=1,seed=3")
        replies = await threads.deferToThread(datagrams, service, 20, lambda i: b"%08d" % i + b"z" * 100)
        changed = sum(1 for r in replies.values() for d in r if d[8:] != b"z" * 100) + replies.get(-1, []).__len__()
        self.assertGreater(changed, 0)
        for r in replies.values():
            for d in r:
                self.assertEqual(len(d), 108)  # one byte changed, none added or lost
        self.assertEqual(service.stats.faults["corrupt"], 20)

    async def test_delay(self):
        service = udp_echo(self, faults="delay=50ms")

        def some() -> list[float]:
            times = []
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                for _ in range(9):
                    start = time.monotonic()
                    s.sendto(b"x", (service.host, service.port))
                    s.recv(10)
                    times.append(time.monotonic() - start)
            return times

        times = await threads.deferToThread(some)
        self.assertGreaterEqual(min(times), 0.05)  # never early
        self.assertLessEqual(statistics.median(times), 0.055, times)


class FlowControlTests(SynchronousTestCase):
    def test_held_replies_do_not_undo_the_transports_pause(self):
        """
        A client that never reads, with delays on: reading stays paused while
        the transport's buffer is full, even once the held replies have gone.
        """
        from twisted.internet import task
        from twisted.internet.testing import StringTransport

        from netecho.echo import EchoFactory
        from netecho.faults import HELD_BYTES, Faults
        from netecho.policies import Served
        from netecho.stats import Stats

        clock = task.Clock()
        stats = Stats()
        factory = Served(EchoFactory(), stats, "echo", faults=Faults(stats, "delay=50ms", clock))
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"x" * (HELD_BYTES + 1))  # more held than allowed: reading pauses
        self.assertEqual(transport.producerState, "paused")
        transport.producer.pauseProducing()  # and the transport's buffer fills up
        clock.advance(0.06)  # the held replies go out
        self.assertEqual(len(transport.value()), HELD_BYTES + 1)
        self.assertEqual(transport.producerState, "paused")  # still: the buffer is full
        transport.producer.resumeProducing()  # the buffer drained
        self.assertEqual(transport.producerState, "producing")
