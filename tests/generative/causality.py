"""Causality checks for raster-order autoregressive networks, by perturbation (no gradients).

Usable on any ``fn(x (B, C, H, W)) -> (B, K, H, W)`` (a PixelCNN prior, a Row LSTM, ...). Import as
``from tests.generative.causality import assert_causal, receptive_field_covers_past``.

* :func:`assert_causal`: perturbing input pixel ``p`` (all channels) leaves the outputs at ``p``
  and at every pixel before ``p`` in raster order unchanged. Checked for every ``p`` (or the
  ``positions`` given), batched: one forward pass per ``chunk`` perturbations.
* :func:`missing_dependencies` / :func:`receptive_field_covers_past`: the blind spot is absent, i.e.
  the output at the last pixel changes when any earlier pixel is perturbed.

Perturbation instead of gradients: a gradient can vanish where a dependence exists (a dead ReLU,
a saturated gate) and a perturbation cannot hide one that a gradient would show, so a violation
found here is real, and the random large perturbations make a missed dependence unlikely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]


def _base_and_outputs(
    fn: Fn, shape: tuple[int, int, int, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    with torch.no_grad():
        y = fn(x)
    return x, y


def _perturbed(x: torch.Tensor, positions: list[tuple[int, int]], seed: int) -> torch.Tensor:
    """``(len(positions) * B, C, H, W)``: copy ``k`` of ``x`` with pixel ``positions[k]`` changed."""
    g = torch.Generator().manual_seed(seed + 1)
    xs = x.repeat(len(positions), 1, 1, 1)
    b = x.shape[0]
    for k, (i, j) in enumerate(positions):
        old = xs[k * b : (k + 1) * b, :, i, j]
        xs[k * b : (k + 1) * b, :, i, j] = old + 1.0 + torch.rand(old.shape, generator=g)  # changed by 1-2
    return xs


def _chunks(items: list, size: int) -> Iterable[list]:
    for k in range(0, len(items), size):
        yield items[k : k + size]


def causality_violations(
    fn: Fn,
    shape: tuple[int, int, int, int],
    *,
    positions: Iterable[tuple[int, int]] | None = None,
    atol: float = 1e-5,
    seed: int = 0,
    chunk: int = 64,
) -> list[tuple[tuple[int, int], tuple[int, int], float]]:
    """``(perturbed pixel, output pixel at or before it, max |change|)`` for every violation found."""
    _, _, h, w = shape
    x, y = _base_and_outputs(fn, shape, seed)
    b = shape[0]
    todo = list(positions) if positions is not None else [(i, j) for i in range(h) for j in range(w)]
    flat = torch.arange(h * w).reshape(h, w)
    found = []
    for part in _chunks(todo, chunk):
        with torch.no_grad():
            ys = fn(_perturbed(x, part, seed))
        for k, (i, j) in enumerate(part):
            change = (ys[k * b : (k + 1) * b] - y).abs().amax(dim=(0, 1))  # (H, W)
            earlier = flat <= i * w + j  # the perturbed pixel and every pixel before it
            bad = (change > atol) & earlier
            for r, c in torch.nonzero(bad).tolist():
                found.append(((i, j), (r, c), float(change[r, c])))
    return found


def assert_causal(
    fn: Fn,
    shape: tuple[int, int, int, int],
    *,
    positions: Iterable[tuple[int, int]] | None = None,
    atol: float = 1e-5,
    seed: int = 0,
    chunk: int = 64,
) -> None:
    """Fail if perturbing any input pixel changes an output at that pixel or earlier in raster order.

    Args:
        fn: ``x (B, C, H, W) -> (B, K, H, W)``, in eval mode (deterministic).
        shape: ``(B, C, H, W)`` of the random input (uniform in [0, 1], seeded).
        positions: the input pixels to perturb (default: all).
        atol: largest change that counts as unchanged (float round-off of convolution algorithms).
    """
    found = causality_violations(fn, shape, positions=positions, atol=atol, seed=seed, chunk=chunk)
    if found:
        (p, q, d) = found[0]
        raise AssertionError(
            f"not causal: {len(found)} violations; first: perturbing pixel {p} changes the output at "
            f"{q} by {d:.3g}"
        )


def missing_dependencies(
    fn: Fn,
    shape: tuple[int, int, int, int],
    *,
    pixel: tuple[int, int] | None = None,
    atol: float = 1e-6,
    seed: int = 0,
    chunk: int = 64,
) -> list[tuple[int, int]]:
    """The pixels before ``pixel`` (default: the last one) whose perturbation leaves its output unchanged.

    ``atol``: changes up to this count as unchanged (a batched convolution differs from an unbatched
    one by float round-off, ~1e-8; a true dependence changes the output far more).
    """
    _, _, h, w = shape
    r, c = pixel if pixel is not None else (h - 1, w - 1)
    x, y = _base_and_outputs(fn, shape, seed)
    b = shape[0]
    earlier = [(i, j) for i in range(h) for j in range(w) if i * w + j < r * w + c]
    missing = []
    for part in _chunks(earlier, chunk):
        with torch.no_grad():
            ys = fn(_perturbed(x, part, seed))
        for k, p in enumerate(part):
            if float((ys[k * b : (k + 1) * b, :, r, c] - y[:, :, r, c]).abs().max()) <= atol:
                missing.append(p)
    return missing


def receptive_field_covers_past(
    fn: Fn, shape: tuple[int, int, int, int], *, pixel: tuple[int, int] | None = None, seed: int = 0
) -> bool:
    """True when the output at ``pixel`` (default: the last) depends on every earlier pixel.

    The blind spot of stacked masked convolutions (van den Oord et al., "Conditional Image
    Generation with PixelCNN Decoders" (2016), Fig. 1) lies above and to the *right* of a pixel, so
    the last pixel of the image cannot show it: pass e.g. ``pixel=(H - 1, W // 2)`` to test for it.
    """
    return not missing_dependencies(fn, shape, pixel=pixel, seed=seed)
