"""
The manual pages in man/: what netecho.manpages makes from the parsers now
(so a committed page that differs has drifted), checked by groff and man.
"""

from __future__ import annotations

import difflib
import io
import os
import shutil
import subprocess
import tempfile
from contextlib import redirect_stdout
from functools import lru_cache
from pathlib import Path

from twisted.trial.unittest import TestCase

from netecho import __version__, manpages
from netecho.cli import build_parser
from netecho.tap import Options
from tests.peers import require

ROOT = Path(__file__).resolve().parents[1]
MAN = ROOT / "man"
REGENERATE = "scripts/build-man (or: python -m netecho.manpages man)"


@lru_cache(maxsize=None)
def made() -> dict[str, str]:
    """The pages as the parsers make them now (once per run)."""
    return manpages.pages()


class ManPageTests(TestCase):
    def setUp(self):
        self.pages = made()

    def test_committed_pages_match_the_parsers(self):
        """man/ holds exactly what the parsers make now: a page that differs has drifted."""
        self.assertEqual(sorted(p.name for p in MAN.iterdir()), sorted(self.pages))
        for name, text in self.pages.items():
            committed = (MAN / name).read_text(encoding="utf-8")
            if committed != text:
                diff = difflib.unified_diff(committed.splitlines(), text.splitlines(), f"man/{name}",
                                            "made now", lineterm="", n=1)
                self.fail(f"man/{name} differs from the parsers: run {REGENERATE}\n" + "\n".join(list(diff)[:40]))

    def test_the_same_twice(self):
        """Nothing in a page depends on when, where or in what terminal it was made."""
        saved = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "20"
        try:
            self.assertEqual(manpages.pages(), self.pages)
        finally:
            if saved is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = saved

    def test_netecho_1_has_every_subcommand_and_version(self):
        text = self.pages["netecho.1"]
        self.assertTrue(text.startswith(f'.TH NETECHO "1" "" "netecho {__version__}"'), text[:80])
        choices = next(a for a in build_parser()._actions if a.dest == "command").choices
        self.assertIn("completion", choices)
        for command in choices:
            self.assertIn(f".SS \\fBnetecho {manpages.roff(command)}\\fR\n", text)
        self.assertIn("\\fB\\-\\-version\\fR", text)
        self.assertIn("\\fBtwistd\\-netecho\\fR(8)", text)

    def test_twistd_netecho_8_has_every_option_and_version(self):
        text = self.pages["twistd-netecho.8"]
        self.assertTrue(text.startswith(f'.TH TWISTD\\-NETECHO "8" "" "netecho {__version__}"'), text[:80])
        options = Options()
        self.assertIn("version", options.longOpt)
        for opt in options.longOpt:
            name = manpages.roff(opt.rstrip("="))
            value = "=\\fIVALUE\\fR" if opt.endswith("=") else ""
            self.assertIn(f".TP\n\\fB\\-\\-{name}\\fR{value}\n", text)
        self.assertIn(manpages.roff(" ".join(Options.longdesc.split())), text)
        # The default that depends on the machine is said in words, not as this machine's number.
        self.assertIn("[default: net.core.somaxconn, else 4096]", text)
        self.assertIn("[default: STOP]", text)

    def test_groff_finds_nothing_to_warn_about(self):
        groff = require("groff", "groff-base")
        for name in self.pages:
            out = subprocess.run([groff, "-z", "-man", "-ww", str(MAN / name)],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual((out.returncode, out.stderr), (0, ""), name)

    def test_man_renders_them(self):
        man = require("man", "man-db")
        for name, title, wanted in (("netecho.1", "NETECHO(1)", "netecho completion"),
                                    ("twistd-netecho.8", "TWISTD-NETECHO(8)", "--unix-mode=VALUE")):
            out = subprocess.run([man, "--warnings=w", "-l", str(MAN / name)], capture_output=True,
                                 text=True, timeout=60, env=dict(os.environ, MANWIDTH="80", LC_ALL="C"))
            self.assertEqual((out.returncode, out.stderr), (0, ""), name)
            self.assertTrue(out.stdout.startswith(title), out.stdout[:200])
            self.assertIn(wanted, out.stdout)
            self.assertIn("--version", out.stdout)


class BuildManTests(TestCase):
    def test_writes_into_a_directory(self):
        top = tempfile.mkdtemp(prefix="netecho-man-")
        self.addCleanup(shutil.rmtree, top, True)
        target = Path(top) / "man"
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(manpages.main([str(target)]), 0)
        self.assertEqual(out.getvalue().split(), [str(target / "netecho.1"), str(target / "twistd-netecho.8")])
        self.assertEqual({p.name: p.read_text(encoding="utf-8") for p in target.iterdir()}, manpages.pages())
