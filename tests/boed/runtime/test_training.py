"""The generic training loop: it optimises, skips bad updates, and refuses to train nothing."""

import math

import pytest
import torch
from torch import nn

from boed.runtime.training import EMA, TrainingError, TrainState, endless, train


def _regression_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return x, y


def test_train_reduces_loss_and_counts():
    torch.manual_seed(0)
    x, y = _regression_problem()
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = endless([(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)])
    seen = []
    state = train(
        lambda b: {"loss": ((model(b[0]) - b[1]) ** 2).mean()},
        model.parameters(),
        opt,
        batches,
        steps=200,
        callbacks=[lambda s, st: seen.append(st["loss"])],
    )
    assert state.step == 200 and state.images_seen == 200 * 16 and state.skipped == 0
    assert seen[-1] < 1e-3 < seen[0]


def test_non_finite_and_exploding_updates_are_skipped():
    model = nn.Linear(1, 1)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = iter([float("nan"), 1e6, 1.0])

    def loss_fn(_):
        scale = next(losses)
        if math.isnan(scale):
            return {"loss": model.weight.sum() * float("nan")}
        return {"loss": scale * model.weight.sum()}

    state = train(loss_fn, model.parameters(), opt, endless([[0]]), steps=2, skip_threshold=100.0)
    assert state.skipped == 2 and torch.equal(model.weight, before)
    state = train(
        loss_fn, model.parameters(), opt, endless([[0]]), steps=3, state=state, skip_threshold=100.0
    )
    assert state.skipped == 2 and not torch.equal(model.weight, before)


def test_all_updates_skipped_raises():
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError, match="in a row were skipped"):
        train(
            lambda _: {"loss": 1e9 * model.weight.sum()},
            model.parameters(),
            opt,
            endless([[0]]),
            steps=100,
            skip_threshold=1.0,
            max_consecutive_skips=5,
        )


def test_gradient_clipping_bounds_the_step():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train(
        lambda _: {"loss": 1000.0 * model.weight.sum()},
        model.parameters(),
        opt,
        endless([[0]]),
        steps=1,
        grad_clip=0.5,
    )
    assert model.weight.item() == pytest.approx(-0.5)


def test_ema_tracks_weights():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.5)
    assert not ema.module.weight.requires_grad


def test_state_dict_is_json_able():
    assert set(TrainState(step=3).as_dict()) == {"step", "skipped", "images_seen", "seconds"}
