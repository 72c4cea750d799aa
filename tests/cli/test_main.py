"""The `boed` entry point: version, help, and a fast start."""

import subprocess
import sys
import time

from typer.testing import CliRunner

from boed import __version__
from cli.main import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, cli.main; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert time.perf_counter() - t0 < 5.0  # generous on a loaded 2-core machine; ~0.2 s when idle
