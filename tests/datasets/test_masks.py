"""Mask distributions: shapes, values, counts, sizes, fractions, reproducibility."""

import pytest
import torch

from datasets import masks
from datasets.masks import (
    MASKS,
    aipo_masks,
    blob_masks,
    centre_square_masks,
    classifier_masks,
    grid_locations,
    patch_masks,
    squares_masks,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("size", [16, 32, 64])
def test_every_mask_is_binary_float_and_seeded(name, size):
    a = MASKS[name](7, size, generator=gen(3))
    b = MASKS[name](7, size, generator=gen(3))
    assert a.shape == (7, 1, size, size) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["aipo", "classifier", "squares", "three_squares", "blob"])
def test_random_masks_differ_between_seeds(name):
    assert not torch.equal(MASKS[name](8, 32, generator=gen(1)), MASKS[name](8, 32, generator=gen(2)))


def components(mask: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Bounding boxes of 4-connected components of a 2-D mask (test helper, plain Python)."""
    m = mask.bool().tolist()
    h, w = len(m), len(m[0])
    seen, boxes = set(), []
    for r in range(h):
        for c in range(w):
            if m[r][c] and (r, c) not in seen:
                stack, rs, cs = [(r, c)], [], []
                seen.add((r, c))
                while stack:
                    y, x = stack.pop()
                    rs.append(y)
                    cs.append(x)
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and m[yy][xx] and (yy, xx) not in seen:
                            seen.add((yy, xx))
                            stack.append((yy, xx))
                boxes.append((min(rs), min(cs), max(rs) + 1, max(cs) + 1))
    return boxes


# (function, size, side in pixels)
SQUARE_CASES = [
    (aipo_masks, 64, 22),
    (aipo_masks, 256, 90),
    (classifier_masks, 64, 16),
    (classifier_masks, 256, 64),
]


@pytest.mark.parametrize(("fn", "size", "side"), SQUARE_CASES)
def test_square_side_is_a_fraction_of_the_image(fn, size, side):
    frac = 0.35 if fn is aipo_masks else 0.25
    one = squares_masks(20, size, 1, frac, gen())
    for i in range(20):
        rows, cols = one[i, 0].any(1).nonzero(), one[i, 0].any(0).nonzero()
        assert (len(rows), len(cols)) == (side, side) and one[i].sum() == side * side
    m = fn(300, size, generator=gen())
    area = m.sum((1, 2, 3))
    assert area.max() <= 5 * side * side and area.min() == 0
    assert ((area > 0) & (area % (side * side) == 0)).any()  # some images show disjoint whole squares


def test_aipo_count_is_uniform_0_to_5():
    # count the squares through 5 tiny disjoint-by-construction trials: use the generator path directly
    g = gen(0)
    counts = torch.randint(0, 6, (6000,), generator=g)
    g = gen(0)
    m = aipo_masks(6000, 40, generator=g)
    empty = (m.sum((1, 2, 3)) == 0).float().mean().item()
    assert abs(empty - 1 / 6) < 0.02  # k = 0 with probability 1/6
    assert abs((counts == 0).float().mean().item() - empty) < 0.02


def test_squares_exact_count_when_disjoint():
    # 4 squares of 25% can all be disjoint; the number of components never exceeds n_squares
    m = squares_masks(50, 32, 4, 0.25, gen())
    side = 8
    for i in range(50):
        comps = components(m[i, 0])
        assert 1 <= len(comps) <= 4
        assert m[i].sum() <= 4 * side * side
        assert all(r1 - r0 >= side and c1 - c0 >= side for r0, c0, r1, c1 in comps)


def test_squares_stay_inside_and_positions_cover_the_image():
    m = squares_masks(400, 32, 1, 0.25, gen())
    assert torch.equal(m.sum((1, 2, 3)), torch.full((400,), 64.0))
    coverage = m.mean(0)[0]
    assert (
        coverage[0].max() > 0
        and coverage[-1].max() > 0
        and coverage[:, 0].max() > 0
        and coverage[:, -1].max() > 0
    )


def test_zero_squares_is_all_hidden():
    assert squares_masks(3, 16, 0, 0.3, gen()).sum() == 0


def test_centre_square_masks():
    m = centre_square_masks(2, 32, side_frac=0.5)
    assert m[0, 0, 8:24, 8:24].sum() == 0 and m.sum() == 2 * (32 * 32 - 16 * 16)


def test_blob_masks_paper_setting():
    # Algorithm 1 with the paper's parameters on 32-pixel images: 1-4 blobs, never empty
    m = blob_masks(300, 32, gen(), max_num_blobs=4, iter_min=2, iter_max=7)
    area = m.sum((1, 2, 3))
    assert area.min() >= 1 and m.mean() < 0.25
    for i in range(40):
        assert 1 <= len(components(m[i, 0])) <= 4
    # a blob grows at most iter_max pixels from its seed in each direction
    single = blob_masks(200, 32, gen(5), max_num_blobs=1, iter_min=3, iter_max=3)
    for i in range(200):
        ((r0, c0, r1, c1),) = components(single[i, 0])
        assert r1 - r0 <= 7 and c1 - c0 <= 7


def test_blob_masks_scale_with_size():
    small = blob_masks(200, 32, gen()).mean()
    big = blob_masks(200, 64, gen()).mean()
    assert 0.5 < (big / small).item() < 2.0


def test_grid_locations():
    loc = grid_locations(64, 16, 17)
    assert loc.shape == (289, 2) and loc.dtype == torch.long
    assert loc.min() == 0 and loc.max() == 48
    assert loc[0].tolist() == [0, 0] and loc[-1].tolist() == [48, 48] and loc[1].tolist() == [0, 3]
    assert grid_locations(256, 64).max() == 192
    assert grid_locations(32, 8, 5)[:, 1].unique().tolist() == [0, 6, 12, 18, 24]
    with pytest.raises(ValueError):
        grid_locations(16, 32)


def test_patch_masks():
    loc = torch.tensor([[0, 0], [48, 48], [10, 20]])
    p = patch_masks(loc, 64, 16)
    assert p.shape == (3, 1, 64, 64) and torch.equal(p.sum((1, 2, 3)), torch.full((3,), 256.0))
    assert p[2, 0, 10:26, 20:36].all()


def test_module_exports():
    assert set(masks.__all__) >= {"aipo_masks", "classifier_masks", "blob_masks", "MASKS", "grid_locations"}
    assert set(MASKS) == {"aipo", "classifier", "squares", "three_squares", "blob", "centre_square"}
