"""
The one thing setup.cfg cannot say: netecho's optional C extension,
netecho/_speedups.c: the stop-word scan, recv_datagrams() and
send_datagrams() (batches of datagrams by one recvmmsg() / sendmmsg() for the
UDP port) and poll_dispatch() (the reactor's wait on epoll and its read
dispatch).
Without a C compiler or Python's headers the build skips it with a warning
and netecho uses its pure-Python twins, which give the same answers.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netecho._speedups", ["netecho/_speedups.c"], optional=True)])
