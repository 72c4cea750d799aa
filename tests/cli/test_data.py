"""`boed data export-phantoms` and `boed data preview` through the real app."""

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app


@pytest.fixture
def runner():
    return CliRunner()


def test_export_then_preview_round_trip(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("BOED_DATA_ROOT", raising=False)
    out = tmp_path / "export"
    result = runner.invoke(app, ["data", "export-phantoms", "--n", "6", "--size", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 6 png images" in result.stdout
    assert sorted(p.name for p in (out / "images").iterdir())[0] == "00000001_000.png"
    png = tmp_path / "nih.png"
    result = runner.invoke(
        app,
        [
            "data",
            "preview",
            "--images",
            "nih",
            "--data-root",
            str(out),
            "--split",
            "all",
            "--out",
            str(png),
            "--n",
            "4",
            "--size",
            "32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(png).size[0] > 100 and "4 of 6 nih images" in result.stdout


def test_export_dicom(tmp_path, runner):
    out = tmp_path / "dcm"
    result = runner.invoke(
        app, ["data", "export-phantoms", "--n", "3", "--size", "16", "--format", "dicom", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(list((out / "images").glob("*.dcm"))) == 3
    again = runner.invoke(app, ["data", "export-phantoms", "--n", "3", "--out", str(out)])
    assert (
        again.exit_code == 2
        and "an export already exists" in again.stderr
        and "Traceback" not in again.output
    )


def test_preview_phantoms_default(tmp_path, runner, monkeypatch):
    monkeypatch.delenv("BOED_DATA_ROOT", raising=False)
    png = tmp_path / "grid.png"
    result = runner.invoke(app, ["data", "preview", "--out", str(png), "--n", "6", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert png.exists() and "phantoms" in result.stdout


def test_errors_are_one_line(tmp_path, runner):
    result = runner.invoke(
        app,
        [
            "data",
            "preview",
            "--images",
            "nih",
            "--data-root",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "x.png"),
        ],
    )
    assert result.exit_code == 2 and "data root not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_skip_bad_reports_counts(tmp_path, runner):
    out = tmp_path / "export"
    assert (
        runner.invoke(
            app, ["data", "export-phantoms", "--n", "5", "--size", "16", "--out", str(out)]
        ).exit_code
        == 0
    )
    (out / "images" / "00000002_000.png").write_bytes(b"not a png")
    args = [
        "data",
        "preview",
        "--images",
        "nih",
        "--data-root",
        str(out),
        "--split",
        "all",
        "--out",
        str(tmp_path / "p.png"),
        "--size",
        "16",
    ]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 2 and "00000002_000.png: unreadable or corrupt image" in failed.stderr
    result = runner.invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad input" in result.stderr and "4 of 4 nih images" in result.stdout


def test_help(runner):
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0 and "export-phantoms" in result.stdout and "preview" in result.stdout
