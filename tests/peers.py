"""Finding the real programs tests talk to (nc, ...), or skipping clearly."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest


def peers_required() -> bool:
    """True when a missing peer must fail the test (CI sets this)."""
    return os.environ.get("NETECHO_REQUIRE_PEERS") == "1"


def missing(reason: str) -> None:
    """Skip with C{reason}, or fail when peers are required."""
    if peers_required():
        raise AssertionError(f"{reason} (NETECHO_REQUIRE_PEERS=1: missing peers fail)")
    raise SkipTest(reason)


def require(command: str, package: str) -> str:
    """The path of C{command}, or skip/fail naming the Debian C{package}."""
    path = shutil.which(command)
    if path is None:
        missing(f"{command} not found: apt-get install {package} (scripts/install-peers)")
    return path


def require_openbsd_nc() -> str:
    """The path of netcat-openbsd's nc (we need its -N, -U and -u)."""
    nc = require("nc", "netcat-openbsd")
    out = subprocess.run([nc, "-h"], capture_output=True, text=True, timeout=5)
    if "-N" not in out.stdout + out.stderr:
        missing(f"{nc} is not netcat-openbsd (no -N): apt-get install netcat-openbsd")
    return nc


def require_root(why: str) -> None:
    """Skip (never fail) unless running as root, which C{why} needs."""
    if os.geteuid() != 0:
        raise SkipTest(f"needs root: {why}")


def require_nsd_tls() -> str:
    """The path of an NSD that can serve DNS over TLS (built with OpenSSL, 4.3 or later)."""
    import re

    nsd = require("nsd", "nsd")
    out = subprocess.run([nsd, "-v"], capture_output=True, text=True, timeout=10)
    text = out.stdout + out.stderr
    version = re.search(r"NSD version (\d+)\.(\d+)", text)
    if "OpenSSL" not in text or version is None or tuple(map(int, version.groups())) < (4, 3):
        missing(f"{nsd} cannot serve DNS over TLS (needs NSD 4.3+ built with OpenSSL): apt-get install nsd")
    return nsd
