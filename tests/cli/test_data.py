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


def _folder(root, n=6, side=40):
    import numpy as np

    root.mkdir()
    rows = ["image,sick"]
    for i in range(n):
        Image.fromarray(np.full((side, side), (20 * i) % 256, np.uint8), mode="L").save(root / f"i{i}.png")
        rows.append(f"i{i}.png,{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _preview(tmp_path, root, *extra):
    return [
        "data",
        "preview",
        "--images",
        "folder",
        "--data-root",
        str(root),
        "--split",
        "all",
        "--size",
        "16",
        "--out",
        str(tmp_path / "p.png"),
        *extra,
    ]


def test_preview_max_pixels(tmp_path, runner):
    root = _folder(tmp_path / "f")
    Image.new("L", (100, 100)).save(root / "i0.png")  # 10,000 px
    refused = runner.invoke(app, _preview(tmp_path, root, "--max-pixels", "5000"))
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "i0.png: declared image 100x100" in line and "--max-pixels" in line
    skipped = runner.invoke(app, _preview(tmp_path, root, "--max-pixels", "5000", "--skip-bad"))
    assert skipped.exit_code == 0 and "skipped 1 bad input" in skipped.stderr and "5 of 5" in skipped.stdout
    assert runner.invoke(app, _preview(tmp_path, root)).exit_code == 0
    bad = runner.invoke(app, _preview(tmp_path, root, "--max-pixels", "0"))
    assert bad.exit_code == 2 and "--max-pixels" in bad.stderr


def test_preview_symlinks(tmp_path, runner):
    root = _folder(tmp_path / "f")
    away = tmp_path / "away"
    away.mkdir()
    Image.new("L", (8, 8), 255).save(away / "secret.png")
    (root / "link.png").symlink_to(away / "secret.png")
    with open(root / "labels.csv", "a") as fh:
        fh.write("link.png,1\n")
    refused = runner.invoke(app, _preview(tmp_path, root))
    assert (
        refused.exit_code == 2 and "link.png: symbolic link to a file outside the data root" in refused.stderr
    )
    allowed = runner.invoke(app, _preview(tmp_path, root, "--allow-symlinks"))
    assert allowed.exit_code == 0 and "7 of 7" in allowed.stdout


def test_preview_allow_modality(tmp_path, runner):
    import numpy as np

    from datasets.dicom import new_dicom

    root = tmp_path / "mg"
    root.mkdir()
    ds = new_dicom(np.arange(64, dtype=np.uint16).reshape(8, 8))
    ds.Modality = "MG"
    ds.save_as(root / "m.dcm", enforce_file_format=True)
    args = ["data", "preview", "--images", "dicom", "--data-root", str(root), "--split", "all"]
    args += ["--out", str(tmp_path / "p.png"), "--size", "16"]
    refused = runner.invoke(app, args)
    assert (
        refused.exit_code == 2 and "modality MG" in refused.stderr and "--allow-modality MG" in refused.stderr
    )
    assert runner.invoke(app, [*args, "--allow-modality", "mg"]).exit_code == 0
    bad = runner.invoke(app, [*args, "--allow-modality", "M G!"])
    assert bad.exit_code == 2 and "not a DICOM modality code" in bad.stderr


def test_preview_split_seed(tmp_path, runner):
    root = _folder(tmp_path / "f", n=20)
    base = [a if a != "all" else "test" for a in _preview(tmp_path, root)]
    grids = {}
    for key, extra in {"seed0": [], "seed1": ["--seed", "1"], "split5": ["--split-seed", "5"]}.items():
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 0 and "4 of 4 folder images (test" in result.stdout, result.output
        grids[key] = (tmp_path / "p.png").read_bytes()
    assert grids["seed0"] == grids["seed1"]  # the run seed does not move images between splits
    assert grids["seed0"] != grids["split5"]  # the split seed does
    assert runner.invoke(app, [*base, "--split-seed", "-1"]).exit_code == 2


def test_dataset_options_helper():
    import typer

    from cli.common import dataset_options

    assert dataset_options() == {}
    assert dataset_options(
        split_seed=3, max_pixels=10, allow_symlinks=True, allow_modality=["mg,CT", "MG"]
    ) == {
        "split_seed": 3,
        "max_pixels": 10,
        "allow_symlinks": True,
        "allow_modalities": ("MG", "CT"),
    }
    for bad in ({"split_seed": -1}, {"max_pixels": 0}, {"allow_modality": "x-ray"}):
        with pytest.raises(typer.BadParameter):
            dataset_options(**bad)


def test_preview_png_bomb_is_one_line_and_skipped(tmp_path, runner):
    import struct
    import zlib

    root = _folder(tmp_path / "f", n=3)
    side = 20000  # 400 Mpx, 1 bit: a ~48 KB file that PIL would refuse with a traceback

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    (root / "i1.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    refused = runner.invoke(app, _preview(tmp_path, root))
    assert (
        refused.exit_code == 2
        and "Traceback" not in refused.output
        and "DecompressionBomb" not in refused.output
    )
    assert (
        len(refused.stderr.strip().splitlines()) == 1
        and "i1.png: declared image size = 400.0 Mpx exceeds max_pixels" in refused.stderr
    )
    skipped = runner.invoke(app, _preview(tmp_path, root, "--skip-bad"))
    assert (
        skipped.exit_code == 0 and "2 of 2 folder images" in skipped.stdout and "max_pixels" in skipped.stderr
    )
