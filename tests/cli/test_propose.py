"""``boed propose``: one decision from image + mask files or from a stored session (toy parts)."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from tests.cli.toy_simulate import install

runner = CliRunner()


@pytest.fixture
def world(monkeypatch):
    install(monkeypatch.setattr, monkeypatch.setitem)
    from tests.boed.toys import ToyWorld

    return ToyWorld(size=32, patch=8, seed=4)  # the world install() uses


def _png(path, array):
    Image.fromarray(np.round(np.asarray(array) * 255).astype(np.uint8)).save(path)
    return path


def _expected(world, observed, mask, **kw):
    from boed.acquisition import Controller
    from boed.scanner import CandidateGrid
    from tests.boed.toys import BayesClassifier, PosteriorSampler

    grid = CandidateGrid.from_grid(32, 8, grid=5)
    controller = Controller(PosteriorSampler(world), BayesClassifier(world), grid, "any", 4, seed=0, **kw)
    return controller.propose(observed, mask)


def test_propose_from_image_and_mask_files(world, tmp_path):
    image = world.images[3, 0]
    mask = torch.zeros(32, 32)
    mask[:8, :8] = 1
    args = ["propose", "--preset", "tiny", "--image", str(_png(tmp_path / "x.png", image)),
            "--mask", str(_png(tmp_path / "m.png", mask)), "--out", str(tmp_path / "eig.png"),
            "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    want = _expected(world, image * mask, mask)
    row, col = want.location
    assert f"next scan: row {row}, col {col} (candidate {want.candidate} of 25)" in result.stdout
    assert f"EIG {want.best_eig:.4f} ± {float(want.stderr[want.candidate]):.4f} nats" in result.stdout
    png = Image.open(tmp_path / "eig.png")
    assert png.format == "PNG" and png.size[0] > 300
    two = runner.invoke(app, [*args, "--scans-per-step", "2"])
    assert two.exit_code == 0 and "2 scans this step" in two.stdout


def test_propose_reads_a_dicom_image_and_an_npy_mask(world, tmp_path):
    from datasets.dicom import new_dicom

    stored = np.round(world.images[1, 0].numpy() * 4095).astype(np.uint16)
    ds = new_dicom(stored)
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[8:16, 8:16] = 1
    np.save(tmp_path / "m.npy", mask)
    result = runner.invoke(app, ["propose", "--preset", "tiny", "--image", str(tmp_path / "x.dcm"), "--mask",
                                 str(tmp_path / "m.npy"), "--out", str(tmp_path / "e.png")])  # fmt: skip
    assert result.exit_code == 0, result.output
    want = _expected(world, world.images[1:2] * torch.as_tensor(mask), torch.as_tensor(mask)[None, None])
    assert f"(candidate {want.candidate} of 25)" in result.stdout


def test_propose_from_a_simulated_session(world, tmp_path):
    db = str(tmp_path / "b.db")
    sim = runner.invoke(app, ["simulate", "--preset", "tiny", "--n-images", "2", "--scans", "2", "--db", db,
                              "--no-report", "--policy", "boed"])  # fmt: skip
    assert sim.exit_code == 0, sim.output
    from boed.store import Store

    store = Store.open(db)
    sessions = store.sessions()
    sid = int(sessions[sessions.policy == "boed"].session_id.iloc[0])
    result = runner.invoke(
        app, ["propose", "--session", str(sid), "--db", db, "--out", str(tmp_path / "s.png")]
    )
    assert result.exit_code == 0, result.output
    assert "next scan: row" in result.stdout and (tmp_path / "s.png").is_file()
    steps = store.steps(status=None)
    seen = steps[(steps.session_id == sid) & (steps.step > 0)]
    assert f"candidate {int(seen.candidate.iloc[0])} of" not in result.stdout  # scanned: not proposed again


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "give --image FILE and --mask FILE, or --session ID"),
        (["--image", "nope.png", "--mask", "nope.png"], "--image nope.png: no such file"),
        (["--session", "1", "--image", "x.png"], "leave out --image and --mask"),
        (["--session", "99"], "unknown session id 99"),
        (["--image", "x.png", "--mask", "x.png", "--out", "eig.jpg"], "ending in .png"),
        (
            ["--image", "x.png", "--mask", "small.png"],
            "--mask small.png is 4 x 4; it must be the image's size",
        ),
        (["--image", "x.png", "--mask", "x.png", "--target", "Cancer"], "valid targets"),
        (["--image", "x.png", "--mask", "x.png", "--runtime", "tensorrt"], "unknown --runtime 'tensorrt'"),
    ],
)
def test_bad_input_is_one_line(world, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "x.png", world.images[0, 0])
    _png(tmp_path / "small.png", np.ones((4, 4)))
    result = runner.invoke(app, ["propose", "--preset", "tiny", "--db", str(tmp_path / "b.db"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
