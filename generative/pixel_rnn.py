"""Row LSTM, Diagonal BiLSTM and Flattened Row LSTM: recurrent raster-order image models.

* **Row LSTM** and **Diagonal BiLSTM**: van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent
  Neural Networks" (2016). Both start with a 7×7 convolution with mask A (§3.4, Table 2) and stack
  LSTM layers with residual connections (§3.3: the layer's ``h`` output projected by a 1×1
  convolution and added to its input), then two ReLU + 1×1 convolutions and a softmax over the
  grey levels (Table 2).

  - Row LSTM (§3.1): the image is processed a row at a time; the gates of row ``i`` are the
    *input-to-state* convolution ``K_is ⊛ x_i`` (1×3 along the row, mask B, computed for the
    whole map at once) plus the *state-to-state* convolution ``K_ss ⊛ h_{i-1}`` (1×3, unmasked)
    over the previous row's hidden state; ``c_i = f ⊙ c_{i-1} + i ⊙ g``, ``h_i = o ⊙ tanh(c_i)``
    (Eq. 3). Its receptive field is a triangle above the pixel.
  - Diagonal BiLSTM (§3.2): the input map is *skewed* (row ``r`` shifted right by ``r``) so that
    the diagonals become columns; the LSTM runs column by column with a 1×1 input-to-state and a
    2×1 state-to-state convolution over the previous column (the pixel above and the pixel to the
    left), and the output is *unskewed*. The right-to-left direction is the same on the flipped
    image, flipped back and **shifted down one row** before it is added to the left-to-right
    output (:meth:`DiagonalBiLSTMLayer.combine`): unshifted, pixel ``(i, j)`` would see the
    right-to-left state at ``(i, j)``, which has read ``(i, j)`` and the pixels to its right.
    Its receptive field (tests/generative/test_pixel_rnn.py) is the whole past but one pixel: the
    last pixel of the row above enters only through the 7×7 zone of the row's last columns, since
    the right-to-left states read mask-A features, which exclude each pixel itself.

* **Flattened Row LSTM**: Burlin, Le Calonnec, Duperier, "Deep Image Inpainting" (2017), §6.3, Fig.
  10: the image flattened from the top left to the bottom right and fed to one LSTM (hidden size 64)
  as one-hot vectors, each step predicting the next pixel through a fully connected softmax layer.

All three are :class:`generative.pixelcnn_local.AutoregressiveNet` s (loss, bits/dim, the
reference sampler); each has a cached sampler that draws exactly what the reference draws but
recomputes only what a drawn pixel can change:

* Row LSTM: the rows above are final, so their states are kept; a drawn pixel reruns only its own
  row (one row of every layer) from the kept states.
* Diagonal BiLSTM: the left-to-right state of a pixel depends on the pixel above and the pixel to
  the left only, so each pixel costs one LSTM cell step per layer; the right-to-left states of a row
  are scanned once the row is complete (row ``i + 1`` is the first to read them).
* Flattened Row LSTM: the LSTM state after the last fed pixel; runs of observed pixels are fed in
  one call.

Rows above the first missing pixel come from one full pass. Per-pixel work uses matrix products,
not convolutions: a small convolution costs far more per call on the CPU.

Deviations: grey levels (one softmax over ``levels`` quantised intensities, not three over 256, so
the RGB channel masks reduce to the spatial masks); the cell states of skewed positions outside the
image are set to zero after each column (the paper does not say; this makes them the zero padding
the cached sampler assumes); the Flattened Row LSTM reads grey levels, not R→G→B, and its first
pixel is predicted from a start symbol (one extra one-hot entry, ``levels``).

Shapes: images ``(B, 1, H, W)`` in [0, 1]; logits ``(B, K, H, W)``; completions ``(n, B, 1, H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from generative.autoregressive import quantise, raster_positions
from generative.errors import SamplerError
from generative.pixelcnn_local import (
    AutoregressiveFamily,
    AutoregressiveNet,
    CausalConv2d,
    draw_pixel,
    network_input,
    start_canvas,
)


@dataclass(frozen=True)
class PixelRNNConfig:
    """One of the three recurrent models (which one: the family); ``channels`` of the residual
    stream, ``hidden`` LSTM units, ``layers`` LSTM layers, ``first_kernel`` of the mask-A convolution
    (ignored by the Flattened Row LSTM, whose width is ``hidden``)."""

    preset: str = "cpu"
    image_size: int = 64
    levels: int = 32
    channels: int = 16
    hidden: int = 16
    layers: int = 1
    first_kernel: int = 7
    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_rate: float = 0.0


def _presets(**cpu) -> dict[str, PixelRNNConfig]:
    return {
        "tiny": PixelRNNConfig(
            preset="tiny", image_size=32, levels=16, channels=8, hidden=8, layers=1, steps=200, batch_size=8
        ),
        "cpu": PixelRNNConfig(**cpu),
        # Table 2 / §5 of van den Oord et al.: 12 layers of h = 128 on CIFAR-10 (untrained here)
        "paper": PixelRNNConfig(
            preset="paper", image_size=256, levels=256, channels=256, hidden=128, layers=12, steps=100_000
        ),
    }


ROW_PRESETS = _presets()
DIAGONAL_PRESETS = _presets()
FLATTENED_PRESETS = {
    "tiny": PixelRNNConfig(
        preset="tiny", image_size=32, levels=16, hidden=16, layers=1, steps=200, batch_size=8
    ),
    "cpu": PixelRNNConfig(hidden=64, layers=1),  # §6.3: one LSTM, hidden size 64
    "paper": PixelRNNConfig(preset="paper", image_size=256, levels=256, hidden=64, layers=1, steps=100_000),
}


def lstm_cell(gates: torch.Tensor, c: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 of van den Oord et al.: gates ``[i, f, o, g]`` along ``dim`` -> ``(h, c)``."""
    n = gates.shape[dim] // 4
    ifo = torch.sigmoid(gates.narrow(dim, 0, 3 * n))
    g = torch.tanh(gates.narrow(dim, 3 * n, n))
    c = ifo.narrow(dim, n, n) * c + ifo.narrow(dim, 0, n) * g
    return ifo.narrow(dim, 2 * n, n) * torch.tanh(c), c


def conv_matrix(conv: nn.Conv2d) -> torch.Tensor:
    """A (masked) 2-D convolution's weight as ``(kh · kw · C_in, C_out)`` for patches in tap-major order."""
    weight = conv.weight * conv.mask if hasattr(conv, "mask") else conv.weight
    return weight.permute(2, 3, 1, 0).reshape(-1, conv.out_channels)


class _PixelRNN(AutoregressiveNet):
    """The mask-A input convolution, ``layers`` residual LSTM layers of ``layer_class`` and the
    output head: Row LSTM and Diagonal BiLSTM differ only in their layer."""

    layer_class: type[nn.Module]

    def __init__(self, config: PixelRNNConfig):
        super().__init__()
        if config.first_kernel % 2 != 1 or config.layers < 1:
            raise SamplerError(
                f"first_kernel must be odd and layers >= 1 (got {config.first_kernel}, {config.layers})"
            )
        self.config, self.levels, self.image_size = config, config.levels, config.image_size
        k = config.first_kernel // 2
        self.first = CausalConv2d(1, config.channels, up=k, left=k, right=k, mask="A")
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(config.channels, config.channels, 1),
            nn.ReLU(),
            nn.Conv2d(config.channels, config.levels, 1),
        )
        self.layers = nn.ModuleList(
            self.layer_class(config.channels, config.hidden) for _ in range(config.layers)
        )

    def logits(self, x: torch.Tensor, states: list | None = None) -> torch.Tensor:
        h = self.first(network_input(x, self.levels))
        for k, layer in enumerate(self.layers):
            h = layer(h, None if states is None else states[k])
        return self.head(h)

    def head_at(self, x: torch.Tensor) -> torch.Tensor:
        """The head on channels-last features ``(..., C) -> (..., K)`` (matrix products)."""
        w1, w2 = self.head[1], self.head[3]
        x = F.relu(F.linear(F.relu(x), w1.weight[:, :, 0, 0], w1.bias))
        return F.linear(x, w2.weight[:, :, 0, 0], w2.bias)

    def first_index(self, w: int, device) -> tuple[torch.Tensor, int]:
        """Indices ``(W, taps)`` of the mask-A taps of row 0 in the padded flattened board, and its width."""
        c = self.first
        wp = w + c.left + c.right
        taps = torch.tensor(
            [a * wp + b for a in range(c.up + 1) for b in range(c.left + c.right + 1)], device=device
        )
        return torch.arange(w, device=device)[:, None] + taps[None], wp

    def board(self, canvas: torch.Tensor) -> torch.Tensor:
        c = self.first
        return F.pad(network_input(canvas, self.levels), (c.left, c.right, c.up, 0)).flatten(1)


# -- Row LSTM --------------------------------------------------------------------------------------------
class RowLSTMLayer(nn.Module):
    """One Row LSTM layer with its residual connection: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = CausalConv2d(channels, 4 * hidden, up=0, left=1, right=1, mask="B")
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, states: list | None = None) -> torch.Tensor:
        b, _, height, width = x.shape
        gates = self.input_to_state(x)  # (B, 4h, H, W), the whole map at once
        h = c = x.new_zeros(b, self.hidden, width)
        hs = []
        for i in range(height):
            h, c = lstm_cell(gates[:, :, i] + self.state_to_state(h), c)
            hs.append(h)
            if states is not None:
                states.append((h, c))
        return x + self.out(torch.stack(hs, 2))

    def row(self, x: torch.Tensor, ss: torch.Tensor, c: torch.Tensor):
        """One row, channels last: ``x`` ``(M, W, C)``, ``ss`` the state-to-state term ``(M, W, 4h)``,
        ``c`` the previous row's cell ``(M, W, h)`` -> ``(output (M, W, C), h, c)``."""
        left = F.pad(x, (0, 0, 1, 0))[:, :-1]  # column j - 1 (the taps of mask B: j - 1 and j)
        gates = F.linear(torch.cat([left, x], 2), self.is_matrix, self.input_to_state.bias) + ss
        h, c = lstm_cell(gates, c, dim=2)
        return x + F.linear(h, self.out.weight[:, :, 0, 0], self.out.bias), h, c

    @property
    def is_matrix(self) -> torch.Tensor:
        w = self.input_to_state.weight[:, :, 0, :2]  # (4h, C, 2): taps j - 1, j
        return w.permute(0, 2, 1).reshape(w.shape[0], -1)

    def ss_term(self, h: torch.Tensor) -> torch.Tensor:
        """``K_ss ⊛ h_{i-1}`` channels last: ``(M, W, h) -> (M, W, 4h)``."""
        return self.state_to_state(h.transpose(1, 2)).transpose(1, 2)


class RowLSTM(_PixelRNN):
    """7×7 mask A, ``layers`` Row LSTM layers with residual connections, the ReLU/1×1 head."""

    layer_class = RowLSTMLayer

    def sample_cached(self, observed, mask, n, *, temperature=1.0, generator=None):
        """Row by row from the kept states of the row above; a drawn pixel reruns its row only."""
        b, _, height, width = observed.shape
        mask_m, canvas, log_lik = start_canvas(observed, mask, n, self.levels)
        positions = raster_positions(mask_m)
        if not positions:
            return canvas.reshape(n, b, 1, height, width), log_lik.float().reshape(n, b)
        first_row = positions[0][0]
        kept: list[list] = [[] for _ in self.layers]
        self.logits(canvas, kept)  # the rows above the first missing pixel are final
        h0 = canvas.new_zeros(len(canvas), width, self.config.hidden)
        state = [
            (kept[k][first_row - 1][0].transpose(1, 2), kept[k][first_row - 1][1].transpose(1, 2))
            if first_row
            else (h0, h0)
            for k in range(len(self.layers))
        ]
        board = self.board(canvas)
        index, wp = self.first_index(width, canvas.device)
        first_w, first_b = conv_matrix(self.first), self.first.bias
        todo: dict[int, list[int]] = {}
        for i, j in positions:
            todo.setdefault(i, []).append(j)
        last_row = positions[-1][0]

        def run_row(i: int):
            feat = F.linear(board[:, index + i * wp], first_w.t(), first_b)  # (M, W, C)
            new = []
            for layer, ss, (_, c) in zip(self.layers, sss, state, strict=True):
                feat, h, c = layer.row(feat, ss, c)
                new.append((h, c))
            return feat, new

        for i in range(first_row, last_row + 1):
            sss = [layer.ss_term(h) for layer, (h, _) in zip(self.layers, state, strict=True)]
            for j in todo.get(i, []):
                feat, _ = run_row(i)
                draw_pixel(
                    self.head_at(feat[:, j]),
                    canvas,
                    mask_m,
                    log_lik,
                    i,
                    j,
                    self.levels,
                    temperature,
                    generator,
                )
                board[:, (i + self.first.up) * wp + self.first.left + j] = canvas[:, 0, i, j] * 2 - 1
            if i < last_row:
                state = run_row(i)[1]  # the row's final states, for the next row
        return canvas.reshape(n, b, 1, height, width), log_lik.float().reshape(n, b)


# -- Diagonal BiLSTM ---------------------------------------------------------------------------------
def skew(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C, H, W + H - 1)``: row ``r`` shifted right by ``r`` (§3.2, Fig. 3)."""
    b, c, h, w = x.shape
    return F.pad(x, (0, h)).flatten(2)[:, :, : h * (w + h - 1)].view(b, c, h, w + h - 1)


def unskew(y: torch.Tensor, width: int) -> torch.Tensor:
    """The inverse of :func:`skew`: ``(B, C, H, W + H - 1) -> (B, C, H, W)``."""
    b, c, h, _ = y.shape
    return F.pad(y.flatten(2), (0, h)).view(b, c, h, width + h)[..., :width]


class DiagonalLSTM(nn.Module):
    """One direction of the Diagonal BiLSTM (left to right): ``(B, C, H, W) -> h (B, hidden, H, W)``.

    Input-to-state: 1×1 (mask B; for grey levels no channel mask is left). State-to-state: 2×1
    over the previous column of the skewed map, i.e. the states above and to the left.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = nn.Conv2d(channels, 4 * hidden, 1)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        gates = skew(self.input_to_state(x))  # (B, 4h, H, W + H - 1)
        valid = skew(x.new_ones(1, 1, height, width))[:, 0]  # (1, H, W + H - 1)
        h = c = x.new_zeros(b, self.hidden, height)
        hs = []
        for k in range(width + height - 1):
            # row r of column k reads rows r - 1 and r of column k - 1: the pixels above and to the left
            h, c = lstm_cell(gates[..., k] + self.state_to_state(F.pad(h, (1, 0))), c)
            h, c = h * valid[..., k], c * valid[..., k]  # outside the image: zero, like padding
            hs.append(h)
        return unskew(torch.stack(hs, 3), width)

    def step_matrix(self) -> torch.Tensor:
        """``F.linear([x, h_above, h_left], M)`` gives the gates at one pixel: ``M`` ``(4h, C + 2h)``."""
        ss = self.state_to_state.weight  # (4h, h, 2): tap 0 = row above, tap 1 = same row
        return torch.cat([self.input_to_state.weight[:, :, 0, 0], ss[:, :, 0], ss[:, :, 1]], 1)

    def bias(self) -> torch.Tensor:
        return self.input_to_state.bias + self.state_to_state.bias


class DiagonalBiLSTMLayer(nn.Module):
    """Both directions, combined with the one-row shift, and the residual connection."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.left = DiagonalLSTM(channels, hidden)
        self.right = DiagonalLSTM(channels, hidden)
        self.out = nn.Conv2d(hidden, channels, 1)

    @staticmethod
    def combine(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``left + right`` shifted down one row (top row zero, last row dropped): pixel ``(i, j)``
        gets the right-to-left state of ``(i - 1, j)``, which has read only rows above ``i``."""
        return left + F.pad(right, (0, 0, 1, 0))[:, :, :-1]

    def forward(self, x: torch.Tensor, states: list | None = None) -> torch.Tensor:
        left = self.left(x)
        right = self.right(x.flip(-1)).flip(-1)  # the right-to-left pass on the flipped image
        if states is not None:
            states.extend([left, right])
        return x + self.out(self.combine(left, right))


class DiagonalBiLSTM(_PixelRNN):
    """7×7 mask A, ``layers`` Diagonal BiLSTM layers with residual connections, the ReLU/1×1 head."""

    layer_class = DiagonalBiLSTMLayer

    def sample_cached(self, observed, mask, n, *, temperature=1.0, generator=None):
        """One LSTM cell step per layer per pixel, left to right; the row's right-to-left scan after it."""
        b, _, height, width = observed.shape
        mask_m, canvas, log_lik = start_canvas(observed, mask, n, self.levels)
        positions = raster_positions(mask_m)
        if not positions:
            return canvas.reshape(n, b, 1, height, width), log_lik.float().reshape(n, b)
        m, hd = len(canvas), self.config.hidden
        first_row, last_row = positions[0][0], positions[-1][0]
        kept: list[list] = [[] for _ in self.layers]
        self.logits(canvas, kept)  # rows above the first missing pixel are final
        zeros = canvas.new_zeros(m, width, hd)
        # per layer: left and right states of the row above, channels last (M, W, h)
        above = [
            (kl[:, :, first_row - 1].transpose(1, 2), kr[:, :, first_row - 1].transpose(1, 2))
            if first_row
            else (zeros, zeros)
            for kl, kr in kept
        ]
        board = self.board(canvas)
        index, wp = self.first_index(width, canvas.device)
        first_w, first_b = conv_matrix(self.first).t(), self.first.bias
        steps = [
            (
                layer.left.step_matrix(),
                layer.left.bias(),
                layer.right.step_matrix(),
                layer.right.bias(),
                layer.out.weight[:, :, 0, 0],
                layer.out.bias,
            )
            for layer in self.layers
        ]
        todo = set(positions)
        for i in range(first_row, last_row + 1):
            inputs = [canvas.new_empty(m, width, self.config.channels) for _ in self.layers]
            lefts = [canvas.new_empty(m, width, hd) for _ in self.layers]
            for j in range(width):
                feat = F.linear(board[:, index[j] + i * wp], first_w, first_b)  # (M, C)
                if j == 0:
                    cells = [zeros[:, 0]] * len(steps)  # the cell to the left of column 0
                for k, (wl, bl, _, _, wo, bo) in enumerate(steps):
                    h_left = lefts[k][:, j - 1] if j else zeros[:, 0]
                    h, cells[k] = lstm_cell(
                        F.linear(torch.cat([feat, above[k][0][:, j], h_left], 1), wl, bl), cells[k]
                    )
                    lefts[k][:, j] = h
                    inputs[k][:, j] = feat
                    feat = feat + F.linear(h + above[k][1][:, j], wo, bo)
                if (i, j) in todo:
                    draw_pixel(
                        self.head_at(feat), canvas, mask_m, log_lik, i, j, self.levels, temperature, generator
                    )
                    board[:, (i + self.first.up) * wp + self.first.left + j] = canvas[:, 0, i, j] * 2 - 1
            if i == last_row:
                break
            # the right-to-left states of row i (from the right states above and to the right)
            new = []
            for k, (_, _, wr, br, _, _) in enumerate(steps):
                rights = canvas.new_empty(m, width, hd)
                h = c = zeros[:, 0]
                for j in range(width - 1, -1, -1):
                    h, c = lstm_cell(
                        F.linear(torch.cat([inputs[k][:, j], above[k][1][:, j], h], 1), wr, br), c
                    )
                    rights[:, j] = h
                new.append((lefts[k], rights))
            above = new
        return canvas.reshape(n, b, 1, height, width), log_lik.float().reshape(n, b)


# -- Flattened Row LSTM ------------------------------------------------------------------------------
class FlattenedRowLSTM(AutoregressiveNet):
    """§6.3 of Burlin et al.: one LSTM over the flattened image, one-hot inputs, a softmax layer."""

    def __init__(self, config: PixelRNNConfig):
        super().__init__()
        self.config, self.levels, self.image_size = config, config.levels, config.image_size
        self.lstm = nn.LSTM(config.levels + 1, config.hidden, config.layers, batch_first=True)
        self.head = nn.Linear(config.hidden, config.levels)

    def inputs(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` -> one-hot ``(B, T, K + 1)`` of the pixel *before* each position
        ``start .. stop - 1`` of the flattened image (the start symbol ``K`` before the first)."""
        flat = x.flatten(1)  # (B, H·W)
        stop = flat.shape[1] if stop is None else stop
        prev = quantise(flat[:, max(start - 1, 0) : stop - 1], self.levels)  # only what is read
        if start == 0:
            prev = torch.cat([torch.full_like(flat[:, :1], self.levels, dtype=torch.long), prev], 1)
        return F.one_hot(prev, self.levels + 1).to(self.head.weight.dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        out, _ = self.lstm(self.inputs(x))
        return self.head(out).transpose(1, 2).reshape(b, self.levels, h, w)

    def sample_cached(self, observed, mask, n, *, temperature=1.0, generator=None):
        """The LSTM state is carried; the pixels between two drawn ones are fed in one call."""
        b, _, height, width = observed.shape
        mask_m, canvas, log_lik = start_canvas(observed, mask, n, self.levels)
        state, fed = None, 0  # positions 0 .. fed - 1 have been fed (their inputs: the pixels before)
        for i, j in raster_positions(mask_m):
            t = i * width + j
            onehot = self.inputs(canvas, fed, t + 1)  # the inputs of positions fed .. t
            out, state = self.lstm(onehot, state)
            draw_pixel(
                self.head(out[:, -1]), canvas, mask_m, log_lik, i, j, self.levels, temperature, generator
            )
            fed = t + 1
        return canvas.reshape(n, b, 1, height, width), log_lik.float().reshape(n, b)


class RowLSTMFamily(AutoregressiveFamily):
    model_id = "row-lstm"
    title = "Row LSTM"
    config_cls = PixelRNNConfig
    presets = ROW_PRESETS
    names = ("row-lstm",)
    net_cls = RowLSTM


class DiagonalBiLSTMFamily(AutoregressiveFamily):
    model_id = "diagonal-bilstm"
    title = "Diagonal BiLSTM"
    config_cls = PixelRNNConfig
    presets = DIAGONAL_PRESETS
    names = ("diagonal-bilstm",)
    net_cls = DiagonalBiLSTM


class FlattenedRowLSTMFamily(AutoregressiveFamily):
    model_id = "flattened-row-lstm"
    title = "Flattened Row LSTM"
    config_cls = PixelRNNConfig
    presets = FLATTENED_PRESETS
    names = ("flattened-row-lstm",)
    net_cls = FlattenedRowLSTM


ROW_LSTM = RowLSTMFamily()
DIAGONAL_BILSTM = DiagonalBiLSTMFamily()
FLATTENED_ROW_LSTM = FlattenedRowLSTMFamily()
