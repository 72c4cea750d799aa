"""``boed amortized-maps`` / ``amortized-train``: bad input is one line (exit 2), nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app

CASES = [
    (["amortized-maps", "--epsilon", "1.5"], "--epsilon"),
    (["amortized-maps", "--n-images", "0"], "--n-images"),
    (["amortized-maps", "--runtime", "tensorrt"], "unknown --runtime 'tensorrt'"),
    (["amortized-train", "--maps", "{tmp}/none"], "manifest.json"),
    (["amortized-train", "--maps", "{tmp}", "--width", "6"], "--width"),
    (["amortized-train", "--maps", "{tmp}", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize(("args", "needle"), CASES)
def test_bad_input_is_one_line(tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "amortized-maps":
        args += ["--out", str(tmp_path / "maps")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "maps").exists()
