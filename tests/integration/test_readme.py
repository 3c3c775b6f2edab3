"""The README's test examples, run as a reader would paste them."""

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import TestCase

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


class ReadmeExampleTests(TestCase):
    def run_example(self, code: str, *command: str) -> str:
        directory = tempfile.mkdtemp(prefix="netecho-readme-")
        (Path(directory) / "test_example.py").write_text(code)
        out = subprocess.run(
            [sys.executable, "-m", *command], cwd=directory, capture_output=True, text=True, timeout=120
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        return out.stdout + out.stderr

    def test_trial_examples(self):
        blocks = [b for b in python_blocks() if "unittest.TestCase" in b]
        self.assertEqual(len(blocks), 2)  # netecho.testing, then faults on purpose
        for code in blocks:
            self.assertIn("PASSED (successes=1)", self.run_example(code, "twisted.trial", "test_example"))

    def test_pytest_examples(self):
        blocks = [b for b in python_blocks() if "pytest_twisted" in b]
        self.assertEqual(len(blocks), 2)
        for code in blocks:
            out = self.run_example(code, "pytest", "-p", "netecho.pytest_plugin", "-p", "no:cacheprovider", "-q")
            self.assertIn("1 passed", out)
