"""
The one thing setup.cfg cannot say: netecho's optional C extension
(netecho/_speedups.c: a stream echo's read turn with the stop-word scan,
and reading UDP datagrams in batches with recvmmsg). Without a C compiler or Python's headers the build
skips it with a warning and netecho uses its pure-Python code, which gives
the same answers.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netecho._speedups", ["netecho/_speedups.c"], optional=True)])
