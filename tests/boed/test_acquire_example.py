"""examples/acquire_dicom.py end to end: the shipped cpu models, a tiny DICOM, a real SQLite store."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


def _example():
    spec = importlib.util.spec_from_file_location("acquire_dicom", ROOT / "examples" / "acquire_dicom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    """A 72 x 80 DX file (not square: the scanner crops it) holding a test-split phantom."""
    from datasets import open_dataset
    from datasets.dicom import new_dicom

    image = open_dataset("phantoms", split="test", size=80, n=1)[0]["img"][0].numpy()[4:76]  # (72, 80)
    path = tmp_path_factory.mktemp("dicom") / "phantom.dcm"
    new_dicom(np.round(image * 4095).astype(np.uint16)).save_as(path, enforce_file_format=True)
    return path


SMALL = ["--grid", "3", "--n-samples", "2", "--threads", "1"]


def test_the_example_acquires_logs_and_can_be_checked_from_the_store(dicom, tmp_path, capsys):
    from boed.store import Store
    from cli.main import app

    example = _example()
    db = str(tmp_path / "acq.db")
    options = ["--db", db, "--max-scans", "3", "--stop-entropy", "0", "--stop-eig", "-1", *SMALL]
    args = example.parse([str(dicom), *options])
    run_id, session_id = example.acquire(args)
    out = capsys.readouterr().out
    assert "3 exposures, ended by the scan budget" in out and f"run {run_id} (acquisition)" in out

    store = Store.open(db)
    run = store.get_run(run_id)
    assert run.kind == "acquisition" and run.status == "done" and run.target == "Any"
    assert run.config["kind"] == "acquisition" and run.config["grid"] == 3 and run.timings["scans"] == 3
    assert store.runs()["kind"].tolist() == ["acquisition"]
    steps = store.steps(run_id).sort_values("step")
    assert steps.step.tolist() == [0, 1, 2, 3] and steps.candidate.iloc[1:].nunique() == 3
    assert steps.eig.iloc[1:].notna().all() and math.isnan(steps.eig.iloc[0])

    # the store's observation is what the scanner returned at the logged locations
    scanner = example.DicomScanner(dicom, 64, 16)
    arrays = store.load_arrays(session_id)
    mask = arrays[(3, "mask")]
    for _, row in steps.iloc[1:].iterrows():
        r, c = int(row.row), int(row.col)
        assert mask[r : r + 16, c : c + 16].all()
        np.testing.assert_array_equal(
            arrays[(3, "observed")][r : r + 16, c : c + 16], scanner.acquire((r, c))
        )
    assert mask.sum() == np.count_nonzero(mask) < 64 * 64

    # the logged probabilities are the classifier's on that observation
    from classifiers import load_classifier

    clf = load_classifier(None, preset="cpu")
    obs = torch.as_tensor(arrays[(3, "observed")])[None, None]
    probs = clf.predict(obs, torch.as_tensor(mask)[None, None])[0]
    logged = store.predictions(run_id)
    logged = logged[logged.step == 3].prob.to_numpy()
    np.testing.assert_allclose(logged, probs.numpy(), atol=1e-6)

    runner = CliRunner()
    show = runner.invoke(app, ["sessions", "show", "--run", run_id, "--db", db])
    assert show.exit_code == 0, show.output
    again = runner.invoke(
        app, ["propose", "--session", str(session_id), "--db", db, "--out", str(tmp_path / "e.png")]
    )
    assert again.exit_code == 0, again.output
    assert "next scan: row" in again.stdout and (tmp_path / "e.png").is_file()


def test_the_stopping_rule_ends_the_acquisition_before_any_exposure(dicom, tmp_path, capsys):
    from boed.store import Store

    example = _example()
    db = str(tmp_path / "acq.db")
    assert example.main([str(dicom), "--db", db, "--stop-entropy", "10", *SMALL]) == 0
    assert "0 exposures, ended by the stopping rule" in capsys.readouterr().out
    store = Store.open(db)
    run = store.get_run(store.latest_run_id())
    assert run.timings["stopped_early"] is True and len(store.steps(run.run_id)) == 1


def test_a_bad_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom")
    assert _example().main([str(bad), "--db", str(tmp_path / "x.db"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.dcm" in err and err.count("\n") == 1
