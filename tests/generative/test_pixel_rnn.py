"""Row LSTM, Diagonal BiLSTM, Flattened Row LSTM: skew, causality (and variants that must fail it),
receptive fields, the cached samplers against the reference, exact log-likelihoods."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generative.autoregressive import log_likelihood, quantise
from generative.pixel_rnn import (
    DIAGONAL_BILSTM,
    FLATTENED_ROW_LSTM,
    ROW_LSTM,
    DiagonalBiLSTMLayer,
    FlattenedRowLSTM,
    skew,
    unskew,
)
from tests.generative.causality import (
    assert_causal,
    causality_violations,
    missing_dependencies,
)

SIZE = 10
FAMILIES = {
    "row-lstm": ROW_LSTM,
    "diagonal-bilstm": DIAGONAL_BILSTM,
    "flattened-row-lstm": FLATTENED_ROW_LSTM,
}


def _model(name: str, **changes):
    torch.manual_seed(0)
    family = FAMILIES[name]
    return family.build_model(family.config("tiny", **({"image_size": SIZE} | changes))).eval()


def test_skew_known_answer_and_inverse():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert skew(x)[0, 0].tolist() == [[0, 1, 2, 0], [0, 3, 4, 5]]  # row r shifted right by r
    y = torch.rand(2, 3, 5, 7)
    assert torch.equal(unskew(skew(y), 7), y)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_are_causal(name):
    # two layers: the residual stream and (diagonal) the bidirectional sum feed a second layer
    model = _model(name, layers=2)
    assert_causal(model.logits, (1, 1, SIZE, SIZE))


class _NoShift(DiagonalBiLSTMLayer):
    @staticmethod
    def combine(left, right):
        return left + right  # the right-to-left state of the pixel itself: sees (i, j) and its right


class _ShiftWrongSide(DiagonalBiLSTMLayer):
    @staticmethod
    def combine(left, right):
        return left + F.pad(right, (0, 0, 0, 1))[:, :, 1:]  # padded at the bottom: the row *below*


@pytest.mark.parametrize("variant", [_NoShift, _ShiftWrongSide])
def test_diagonal_bilstm_without_the_down_shift_leaks_the_future(variant):
    model = _model("diagonal-bilstm")
    for layer in model.layers:
        layer.__class__ = variant
    found = causality_violations(model.logits, (1, 1, SIZE, SIZE))
    assert any(q < p for p, q, _ in found)  # an output before the perturbed pixel changed


def test_row_lstm_with_an_unmasked_input_to_state_is_caught():
    model = _model("row-lstm")
    model.layers[0].input_to_state.mask.fill_(1)  # (i, j + 1) enters the gates of (i, j)
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(model.logits, (1, 1, SIZE, SIZE))


def test_flattened_lstm_fed_the_current_pixel_is_caught():
    model = _model("flattened-row-lstm")

    def inputs(x, start=0, stop=None):  # no one-step delay: position t reads pixel t
        q = quantise(x, model.levels).flatten(1)
        return F.one_hot(q[:, start:stop], model.levels + 1).float()

    model.inputs = inputs
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(model.logits, (1, 1, SIZE, SIZE))


def _double(name: str, **changes):
    # float64 and 256 levels: a perturbation always changes the input's level, and a far pixel's
    # small influence through an untrained LSTM is not lost to float32 rounding
    model = _model(name, levels=256, **changes).double()
    return lambda x: model.logits(x.double())


def test_receptive_fields():
    # atol 1e-12 in float64: a far pixel's influence through an untrained LSTM is ~1e-8
    pixel, shape = (SIZE - 1, SIZE // 2), (1, 1, SIZE, SIZE)
    missing = lambda name: missing_dependencies(_double(name), shape, pixel=pixel, atol=1e-12)  # noqa: E731
    # Flattened Row LSTM: every earlier pixel (on 4×4: over ~100 steps an untrained LSTM forgets
    # below float64 resolution)
    assert missing_dependencies(_double("flattened-row-lstm", image_size=4), (1, 1, 4, 4), atol=1e-12) == []
    # Diagonal BiLSTM (§3.2): the whole past from one layer but for the last pixel of the row above:
    # the mask-A features of that row exclude each pixel itself, so (i - 1, W - 1) enters only
    # through the 7×7 zone of the last columns of row i
    assert missing("diagonal-bilstm") == [(SIZE - 2, SIZE - 1)]
    # Row LSTM (§3.1): a triangle above, and only a few pixels to the left in its own row
    row = missing("row-lstm")
    assert (SIZE - 1, 0) in row and (SIZE - 1, SIZE // 2 - 1) not in row and (0, 0) not in row


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("rows", [slice(0, 4), slice(2, 10)])
def test_cached_sampler_draws_what_the_reference_draws(name, rows):
    model = _model(name, layers=2)
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(x)
    mask[:, :, rows] = 1
    mask[1, :, :, :3] = 1
    with torch.no_grad():
        ref, ll_ref = model.sample_reference(x, mask, 2, generator=torch.Generator().manual_seed(2))
        fast, ll = model.sample_cached(x, mask, 2, generator=torch.Generator().manual_seed(2))
        assert torch.equal(ref, fast)
        assert torch.allclose(ll, ll_ref, atol=1e-4)
        flat = fast.reshape(4, 1, SIZE, SIZE)
        exact = log_likelihood(
            model.logits(flat), quantise(flat, model.levels), ~mask.repeat(2, 1, 1, 1).bool()
        )
    assert torch.allclose(ll.reshape(-1), exact, atol=1e-3)


def test_flattened_lstm_reads_one_hot_previous_pixels():
    model = _model("flattened-row-lstm")
    assert isinstance(model, FlattenedRowLSTM)
    x = torch.zeros(1, 1, SIZE, SIZE)
    x[0, 0, 0, 0] = 1.0
    one_hot = model.inputs(x)
    assert one_hot.shape == (1, SIZE * SIZE, model.levels + 1)
    assert one_hot[0, 0].argmax() == model.levels  # the start symbol before the first pixel
    assert one_hot[0, 1].argmax() == model.levels - 1  # then pixel 0 (the brightest level)
    assert torch.equal(one_hot.sum(-1), torch.ones(1, SIZE * SIZE))
