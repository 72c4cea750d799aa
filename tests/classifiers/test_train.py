"""Training: a tiny run end to end, reproducibility, bit-exact resume, labels, provenance, DDP."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import FakeDataset

from boed.runtime.checkpoints import load_checkpoint
from classifiers import ClassifierError, load_classifier
from classifiers.config import TrainConfig
from classifiers.train import lr_schedule, train_classifier, training_masks

QUIET = {"log": lambda *_: None}


def _train(out, train, val, labels=None, **overrides):
    return train_classifier(
        out,
        preset="tiny",
        device="cpu",
        train_set=train,
        val_set=val,
        labels=labels,
        workers=0,
        train_overrides={"steps": 8, "val_every": 4, **overrides},
        **QUIET,
    )


class OwnLabels(torch.utils.data.Dataset):
    """A FakeDataset whose label columns are its own: ``spot`` (finding 0), ``other``, ``any``."""

    def __init__(self, base: FakeDataset, names=("spot", "other", "any"), columns=(0, 1, -1)):
        self.base, self.labels, self.columns = base, tuple(names), list(columns)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        return item | {"lab": item["lab"][self.columns]}

    def describe(self):
        return {"source": "own", "fingerprint": "f" * 64, "split": "train", "split_seed": 5, "n": len(self)}


def test_tiny_run_writes_a_complete_checkpoint(tiny_checkpoint):
    clf = load_classifier(tiny_checkpoint)
    meta = clf.meta
    assert meta["kind"] == "classifier" and meta["image_size"] == 32
    assert meta["temperature"] > 0 and meta["data"]["train"]["source"] == "fake"
    metrics = meta["metrics"]
    assert {"ece_before", "ece_after", "selected_step", "val_evaluation"} <= set(metrics)
    assert metrics["ece_after"] <= metrics["ece_before"] + 1e-9
    names = [c["name"] for c in metrics["val_evaluation"]["conditions"]]
    assert names == [f"{k} squares" for k in range(6)] + ["full"]
    assert meta["training"]["state"]["step"] == 12 and len(meta["training"]["history"]) == 2
    assert (
        Path(f"{tiny_checkpoint}.train.json").exists()
        and Path(f"{tiny_checkpoint}.train.safetensors").exists()
    )
    assert not Path(f"{tiny_checkpoint}.state.json").exists()
    assert meta["labels"] == list(meta["config"]["labels"]) == list(FakeDataset().labels)
    assert set(meta["data"]) == {"train", "val"}
    assert set(meta["trained_on"]) == {"source", "fingerprint", "split_seed", "labels", "image_size"}
    assert meta["trained_on"]["source"] == "fake" and meta["trained_on"]["image_size"] == 32


def test_same_seed_same_weights_and_resume_continues_exactly(tmp_path, fake_train, fake_val):
    a = _train(tmp_path / "a", fake_train, fake_val)
    b = _train(tmp_path / "b", fake_train, fake_val)
    assert a.meta["sha256"] == b.meta["sha256"]
    # interrupted after the state saved at step 4, then resumed: the same weights as 8 straight

    def interrupt(message):
        if message.startswith("step 4:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classifier(
            tmp_path / "c",
            preset="tiny",
            device="cpu",
            train_set=fake_train,
            val_set=fake_val,
            train_overrides={"steps": 8, "val_every": 4},
            log=interrupt,
        )
    assert not Path(f"{tmp_path / 'c'}.json").exists()
    c = train_classifier(
        tmp_path / "c",
        preset="tiny",
        device="cpu",
        train_set=fake_train,
        val_set=fake_val,
        resume=True,
        train_overrides={"steps": 8},
        **QUIET,
    )
    wa = load_checkpoint(tmp_path / "a.train").tensors
    wc = load_checkpoint(tmp_path / "c.train").tensors
    assert set(wa) == set(wc) and any(k.startswith("optim.") for k in wa)
    for key in wa:  # bit-exact: weights, AdamW moments, best weights
        assert torch.equal(wa[key], wc[key]), key
    assert c.meta["sha256"] == a.meta["sha256"]
    assert c.meta["training"]["state"]["step"] == 8


class _Killed(BaseException):
    pass


def test_kill_between_the_two_writes_of_the_resume_pair(tmp_path, fake_train, fake_val, monkeypatch):
    """The save at step 8 dies after the weights rename: --resume continues from step 4, exactly."""
    from boed.runtime import checkpoints

    real, saves = os.replace, []

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith("k.train.safetensors"):
            saves.append(dst)
            if len(saves) == 2:
                raise _Killed

    with monkeypatch.context() as m:
        m.setattr(checkpoints.os, "replace", replace)
        with pytest.raises(_Killed):
            _train(tmp_path / "k", fake_train, fake_val)
    resumed = train_classifier(
        tmp_path / "k",
        preset="tiny",
        device="cpu",
        train_set=fake_train,
        val_set=fake_val,
        resume=True,
        workers=0,
        train_overrides={"steps": 8},
        **QUIET,
    )
    assert resumed.history[0]["step"] == 4 and len(resumed.history) == 2  # step 8 was redone
    straight = _train(tmp_path / "s", fake_train, fake_val)
    assert resumed.meta["sha256"] == straight.meta["sha256"]


def test_resume_without_state_is_a_clear_error(tmp_path, fake_train, fake_val):
    with pytest.raises(
        ClassifierError, match=r"--resume: .*none\.train\.json: checkpoint metadata file not found"
    ):
        train_classifier(
            tmp_path / "none", preset="tiny", train_set=fake_train, val_set=fake_val, resume=True
        )
    (tmp_path / "old.state.json").write_text("{}")
    with pytest.raises(ClassifierError, match="older resume format"):
        train_classifier(tmp_path / "old", preset="tiny", train_set=fake_train, val_set=fake_val, resume=True)


def test_data_that_does_not_fit_the_model(tmp_path, fake_train, fake_val):
    with pytest.raises(ClassifierError, match=r"needs \(n, 1, 32, 32\)"):
        _train(tmp_path / "x", FakeDataset(n=16, size=16), fake_val)
    with pytest.raises(ClassifierError, match=r"needs \(n, 1, 32, 32\)"):
        _train(tmp_path / "x", fake_train, FakeDataset(n=16, size=16))


def test_labels_come_from_the_training_data(tmp_path, fake_train, fake_val):
    """Any label columns, not only the 14 findings + Any; stored in the config and the checkpoint."""
    result = _train(tmp_path / "own", OwnLabels(fake_train), OwnLabels(fake_val), steps=4)
    clf = load_classifier(tmp_path / "own")
    assert clf.labels == ("spot", "other", "any")
    assert result.meta["config"]["labels"] == ["spot", "other", "any"] == result.meta["labels"]
    assert result.meta["trained_on"] == {
        "source": "own",
        "fingerprint": "f" * 64,
        "split_seed": 5,
        "labels": ["spot", "other", "any"],
        "image_size": 32,
    }
    assert result.meta["metrics"]["val_evaluation"]["labels"] == ["spot", "other", "any"]


def test_a_subset_of_labels_in_any_order(tmp_path, fake_train, fake_val):
    result = _train(
        tmp_path / "sub", OwnLabels(fake_train), OwnLabels(fake_val), labels=["any", "spot"], steps=4
    )
    assert result.meta["labels"] == ["any", "spot"]
    clf = load_classifier(tmp_path / "sub")
    x = torch.stack([fake_val[i]["img"] for i in range(8)])
    assert clf.predict(x, torch.ones_like(x)).shape == (8, 2)


def test_labels_the_data_does_not_have_are_named(tmp_path, fake_train, fake_val):
    with pytest.raises(ClassifierError, match="big, small not among the training data's labels"):
        _train(tmp_path / "x", OwnLabels(fake_train), OwnLabels(fake_val), labels=["spot", "big", "small"])
    val = OwnLabels(fake_val, names=("spot", "other"), columns=(0, 1))
    with pytest.raises(ClassifierError, match="any not among the validation data's labels"):
        _train(tmp_path / "x", OwnLabels(fake_train), val)


def test_nan_labels_are_ignored(tmp_path, fake_val):
    result = _train(tmp_path / "n", FakeDataset(n=48, size=32, nan_fraction=0.3), fake_val, steps=4)
    assert math.isfinite(result.history[-1]["train_loss"])


def test_lr_schedule_warmup_then_cosine():
    f = lr_schedule(TrainConfig(steps=100, warmup_steps=10, min_lr_frac=0.1))
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1)


def test_training_masks_include_full_and_empty():
    cfg = TrainConfig(p_full=0.3, p_empty=0.3)
    m = training_masks(400, 16, cfg, torch.Generator().manual_seed(0))
    frac = m.mean(dim=(1, 2, 3))
    assert m.shape == (400, 1, 16, 16)
    assert 0.2 < (frac == 1).float().mean() < 0.4
    assert (frac == 0).float().mean() > 0.3  # p_empty plus classifier masks with 0 squares


DDP_SCRIPT = """
import sys; sys.path.insert(0, {tests!r})
import torch
from fakes import FakeDataset
from classifiers.train import train_classifier
train_classifier({out!r}, preset="tiny", device="cpu", train_set=FakeDataset(64, 32, 0),
                 val_set=FakeDataset(32, 32, 1),
                 train_overrides={{"steps": 4, "val_every": 2}}, log=lambda *_: None)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_process_gloo(tmp_path):
    """Two processes under torchrun-style environment variables (gloo on CPU); rank 0 writes."""
    script = tmp_path / "ddp.py"
    out = tmp_path / "ddp"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = os.environ | {
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path.cwd()),
        }
        procs.append(
            subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True)
        )
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["training"]["world_size"] == 2


def test_ema_run_and_resume(tmp_path, fake_train, fake_val):
    result = _train(tmp_path / "e", fake_train, fake_val, ema=0.9)
    assert result.meta["training"]["train_config"]["ema"] == 0.9
    state = load_checkpoint(tmp_path / "e.train").tensors
    assert any(k.startswith("module.ema.") for k in state)
    resumed = train_classifier(
        tmp_path / "e",
        preset="tiny",
        device="cpu",
        train_set=fake_train,
        val_set=fake_val,
        resume=True,
        workers=0,
        train_overrides={"steps": 10},
        **QUIET,
    )
    assert resumed.meta["training"]["state"]["step"] == 10


def _png_folder(root, n=60, size=48):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir()
    rows = ["image,big,small"]
    for i in range(n):
        img = rng.uniform(0.1, 0.3, (size, size))
        big, small = int(rng.random() < 0.5), int(rng.random() < 0.5)
        img[4:24, 4:24] += 0.6 * big
        img[30:36, 30:36] += 0.6 * small
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(root / f"{i:03d}.png")
        rows.append(f"{i:03d}.png,{big},{small}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_trains_from_an_image_folder_through_loader_workers(tmp_path):
    """The streaming path end to end: PNGs decoded and resized by a DataLoader worker, own labels."""
    root = _png_folder(tmp_path / "pngs")
    result = train_classifier(
        tmp_path / "folder",
        preset="tiny",
        device="cpu",
        images="folder",
        data_root=str(root),
        workers=1,
        train_overrides={"steps": 4, "val_every": 4, "batch_size": 8, "n_train": 0},
        **QUIET,
    )
    meta = result.meta
    assert meta["labels"] == ["big", "small"] and meta["training"]["loader_workers"] == 1
    assert meta["data"]["train"]["source"] == "folder" and meta["data"]["val"]["split"] == "val"
    assert meta["trained_on"]["source"] == "folder" and meta["trained_on"]["labels"] == ["big", "small"]
    assert meta["trained_on"]["fingerprint"] == meta["data"]["train"]["fingerprint"]
    assert len(meta["trained_on"]["fingerprint"]) == 64 and meta["trained_on"]["split_seed"] == 0
    assert result.state.images_seen == 4 * 8


def test_a_label_with_more_than_two_values_is_refused(tmp_path, fake_train, fake_val):
    class Digits(OwnLabels):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return item | {"lab": item["lab"] * (1 + i % 3)}  # values 0, 1, 2, 3

    with pytest.raises(ClassifierError, match="validation label 'spot' has the value [23].*binary column"):
        _train(tmp_path / "d", OwnLabels(fake_train), Digits(fake_val))
    with pytest.raises(ClassifierError, match="training label '.*' has the value [23]"):
        _train(tmp_path / "d", Digits(fake_train), OwnLabels(fake_val))


def test_resume_on_other_data_is_refused(tmp_path, fake_train, fake_val):
    class Other(OwnLabels):
        def describe(self):
            return super().describe() | {"fingerprint": "e" * 64}

    _train(tmp_path / "r", OwnLabels(fake_train), OwnLabels(fake_val), steps=4)
    with pytest.raises(ClassifierError, match="training data differ from the run's .*eeeeeeeeeeee"):
        train_classifier(
            tmp_path / "r",
            preset="tiny",
            train_set=Other(fake_train),
            val_set=OwnLabels(fake_val),
            resume=True,
        )
