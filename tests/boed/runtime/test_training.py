"""The one training loop: it optimises, skips bad updates, schedules, averages, runs several phases."""

import math

import pytest
import torch
from torch import nn

from boed.runtime.data import endless
from boed.runtime.schedule import ema_warmup, warmup_cosine
from boed.runtime.training import EMA, Every, Phase, TrainingError, TrainState, train


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
        Phase(lambda b: {"loss": ((model(b[0]) - b[1]) ** 2).mean()}, opt),
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

    phase = Phase(loss_fn, opt, skip_threshold=100.0)
    state = train(phase, endless([[0]]), steps=2)
    assert state.skipped == 2 and torch.equal(model.weight, before)
    state = train(phase, endless([[0]]), steps=3, state=state)
    assert state.skipped == 2 and not torch.equal(model.weight, before)
    assert state.consecutive_skips == 0


def test_all_updates_skipped_raises():
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError, match="in a row were skipped"):
        train(
            Phase(lambda _: {"loss": 1e9 * model.weight.sum()}, opt, skip_threshold=1.0),
            endless([[0]]),
            steps=100,
            max_consecutive_skips=5,
        )


def test_gradient_clipping_bounds_the_step():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train(Phase(lambda _: {"loss": 1000.0 * model.weight.sum()}, opt, grad_clip=0.5), endless([[0]]), 1)
    assert model.weight.item() == pytest.approx(-0.5)


def test_schedule_sets_the_learning_rate_of_each_step():
    model = nn.Linear(1, 1, bias=False)
    w0 = model.weight.item()
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    lrs = []
    train(
        Phase(lambda _: {"loss": model.weight.sum()}, opt, schedule=lambda s: 1.0 / (s + 1)),
        endless([[0]]),
        steps=3,
        callbacks=[lambda s, st: lrs.append(st["lr"])],
    )
    assert lrs == pytest.approx([2.0, 1.0, 2.0 / 3])
    # the update of step s moved the weight by lr(s) * grad (grad = 1)
    assert model.weight.item() == pytest.approx(w0 - (2.0 + 1.0 + 2.0 / 3))


def test_warmup_cosine():
    f = lambda s: warmup_cosine(s, steps=100, warmup_steps=10, final=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55)  # half way through the cosine: (1 + 0.1) / 2
    assert f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert ema_warmup(0, 0.999) == pytest.approx(0.1) and ema_warmup(10**6, 0.999) == 0.999


def test_ema_tracks_weights_with_a_step_dependent_decay():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=lambda s: 0.5 if s == 0 else 0.75)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(0)
    assert ema.module.weight.item() == pytest.approx(0.5)
    ema.update(1)
    assert ema.module.weight.item() == pytest.approx(0.5 + 0.25 * 0.5)
    assert not ema.module.weight.requires_grad


def test_ema_is_not_updated_on_a_skipped_step():
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    ema = EMA(model, decay=0.0)  # the EMA copies the weights at every applied update
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scales = iter([1.0, float("inf")])
    train(Phase(lambda _: {"loss": next(scales) * model.weight.sum()}, opt, ema=ema), endless([[0]]), 2)
    assert model.weight.item() == pytest.approx(0.0) and ema.module.weight.item() == pytest.approx(0.0)


def test_two_phases_run_in_order_with_their_own_optimisers():
    """The GAN-style extension point: two optimisers, each phase sees the other's fresh update."""
    a, b = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
    opt_a, opt_b = torch.optim.SGD([a], lr=1.0), torch.optim.SGD([b], lr=1.0)
    seen_by_b = []

    def loss_b(_):
        seen_by_b.append(float(a.detach()))
        return {"loss": -b * (1 + a.detach())}

    state = train(
        [Phase(lambda _: {"loss": -a}, opt_a, name="d"), Phase(loss_b, opt_b, name="g")],
        endless([[0]]),
        steps=2,
    )
    assert seen_by_b == [1.0, 2.0]  # g's loss of step s saw d's update of step s
    assert a.item() == 2.0 and b.item() == pytest.approx(2.0 + 3.0)
    assert {"d.loss", "g.loss", "d.grad_norm", "g.lr"} <= set(state.last)


def test_seed_reseeds_the_global_rng_per_step():
    draws = []
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def loss_fn(_):
        draws.append(float(torch.rand(())))
        return {"loss": model.weight.sum()}

    train(Phase(loss_fn, opt), endless([[0]]), 4, seed=3)
    first = list(draws)
    draws.clear()
    torch.manual_seed(999)  # whatever the RNG was before: steps 2..3 resumed draw the same
    train(Phase(loss_fn, opt), endless([[0]]), 4, seed=3, state=TrainState(step=2))
    assert draws == first[2:] and len(set(first)) == 4


def test_every_callback():
    calls = []
    cb = Every(3, lambda s, _: calls.append(s.step), last=7)
    for step in range(1, 8):
        cb(TrainState(step=step), {})
    assert calls == [3, 6, 7]


def test_state_dict_round_trip():
    s = TrainState(step=3, skipped=1, consecutive_skips=1, images_seen=12, seconds=1.5)
    assert TrainState.from_dict(s.as_dict()) == s


def test_phase_when_runs_a_phase_only_on_its_steps():
    # a WGAN-style schedule: the critic every step, the generator every third step
    critic, generator = nn.Linear(1, 1), nn.Linear(1, 1)
    ran: list[tuple[str, int]] = []
    step = {"now": 0}

    def loss(name, module):
        def fn(_):
            ran.append((name, step["now"]))
            return {"loss": module.weight.sum()}

        return fn

    phases = [
        Phase(loss("d", critic), torch.optim.SGD(critic.parameters(), lr=0.1), name="d"),
        Phase(
            loss("g", generator),
            torch.optim.SGD(generator.parameters(), lr=0.1),
            name="g",
            when=lambda s: s % 3 == 2,
        ),
    ]
    g_before = generator.weight.detach().clone()
    state = train(phases, endless([[0]]), steps=6, callbacks=[lambda s, _: step.update(now=s.step)])
    assert [s for n, s in ran if n == "d"] == [0, 1, 2, 3, 4, 5]
    assert [s for n, s in ran if n == "g"] == [2, 5]
    assert state.step == 6 and torch.allclose(generator.weight, g_before - 2 * 0.1)


def test_batch_len_counts_images_not_the_characters_of_an_id():
    from boed.runtime.training import _batch_len

    images = torch.zeros(3, 1, 8, 8)
    assert _batch_len({"idx": ["image-0001", "b", "c"], "image": images}) == 3
    assert _batch_len((images, torch.zeros(3, 2))) == 3
    assert _batch_len(images) == 3
