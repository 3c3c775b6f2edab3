"""
The one thing setup.cfg cannot say: netecho's optional C extension
(netecho/_scan.c, the stop-word scanner's inner loop). Without a C compiler
or Python's headers the build skips it with a warning and netecho uses its
pure-Python scanner, which gives the same answers.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("netecho._scan", ["netecho/_scan.c"], optional=True)])
