"""The one resume format: everything a run needs, as safetensors + JSON, and a bit-exact continuation."""

import json

import pytest
import torch
from torch import nn

from boed.runtime.checkpoints import CheckpointError, checkpoint_paths
from boed.runtime.data import TensorImages, image_loader, step_generator
from boed.runtime.resume import load_resume, resume_path, save_resume
from boed.runtime.schedule import warmup_cosine
from boed.runtime.training import EMA, Every, Phase, TrainState, train


def test_resume_path():
    assert resume_path("a/run") == resume_path("a/run.safetensors") == resume_path("a/run.json")
    assert checkpoint_paths(resume_path("a/run"))[0].name == "run.train.safetensors"


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    ema = EMA(model, decay=0.9)
    return model, opt, ema


def _run(model, opt, ema, steps, state=None, callbacks=()):
    g = torch.Generator().manual_seed(0)
    data = TensorImages(torch.randn(40, 1, 2, 2, generator=g), torch.randn(40, 1, generator=g))
    state = state or TrainState()
    loader = image_loader(data, batch_size=8, seed=1, start_step=state.step)

    def batches():
        step = state.step
        for b in loader:
            noise = torch.randn(b["img"].shape, generator=step_generator(1, 0, step))
            yield (b["img"] + 0.01 * noise).flatten(1), b["lab"]
            step += 1

    phase = Phase(
        lambda b: {"loss": ((model(b[0]) - b[1]) ** 2).mean()},
        opt,
        schedule=lambda s: warmup_cosine(s, steps=10, warmup_steps=2, final=0.1),
        grad_clip=1.0,
        ema=ema,
    )
    return train(phase, batches(), steps, state=state, seed=7, callbacks=callbacks)


def test_resume_is_bit_exact(tmp_path):
    model, opt, ema = _setup()
    _run(model, opt, ema, 10)

    m2, o2, e2 = _setup()
    save = Every(
        4,
        lambda st, _: save_resume(
            tmp_path / "run",
            trains="toy",
            modules={"model": m2, "ema": e2.module},
            optimizers={"adamw": o2},
            state=st,
            seed=7,
            best={"w": torch.ones(2)},
            meta={"note": "x"},
        ),
    )
    _run(m2, o2, e2, 6, callbacks=[save])  # "killed" after step 6: the state saved at 4 remains

    m3, o3, e3 = _setup(seed=123)  # different init: everything must come from the file
    resumed = load_resume(tmp_path / "run", trains="toy")
    resumed.restore({"model": m3, "ema": e3.module}, {"adamw": o3})
    assert resumed.state.step == 4 and resumed.meta["note"] == "x"
    assert torch.equal(resumed.best["w"], torch.ones(2))
    assert o3.param_groups[0]["betas"] == (0.9, 0.95)
    _run(m3, o3, e3, 10, state=resumed.state)
    for (name, a), b, c in zip(
        model.state_dict().items(), m3.state_dict().values(), e3.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
        assert torch.equal(ema.module.state_dict()[name], c), name
    for pid, slots in opt.state_dict()["state"].items():
        for k, v in slots.items():
            assert torch.equal(v, o3.state_dict()["state"][pid][k]), (pid, k)


def test_the_json_is_plain_and_names_what_it_trains(tmp_path):
    model, opt, ema = _setup()
    _run(model, opt, ema, 2)
    save_resume(
        tmp_path / "r",
        trains="toy",
        modules={"model": model},
        optimizers={"adamw": opt},
        state=TrainState(step=2),
        seed=0,
    )
    meta = json.loads(checkpoint_paths(resume_path(tmp_path / "r"))[1].read_text())
    assert meta["kind"] == "train-state" and meta["trains"] == "toy" and meta["state"]["step"] == 2
    assert meta["optimizers"]["adamw"]["param_groups"][0]["betas"] == [0.9, 0.95]
    assert load_resume(tmp_path / "r", trains="toy").best is None


def test_wrong_run_kind_and_missing_file_are_clear_errors(tmp_path):
    model, opt, _ = _setup()
    save_resume(
        tmp_path / "r",
        trains="toy",
        modules={"model": model},
        optimizers={"adamw": opt},
        state=TrainState(),
        seed=0,
    )
    with pytest.raises(CheckpointError, match="not a 'classifier' run"):
        load_resume(tmp_path / "r", trains="classifier")
    with pytest.raises(CheckpointError, match="not found"):
        load_resume(tmp_path / "none", trains="toy")
    other = nn.Linear(3, 3)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_resume(tmp_path / "r", trains="toy").restore({"model": other}, {})
