"""Procedural frontal chest radiograph phantoms with localized findings.

The embedded default behind ``--images chestxray``: no download, any square size, deterministic
for a seed. Each phantom is an attenuation map built from smooth shapes in *body coordinates*
``(u, v)`` (``u`` left to right on the viewer's screen, ``v`` top to bottom, both about [-1, 1]),
mapped to the image through a per-patient similarity transform (size, position, slight rotation),
then turned into MONOCHROME2 intensities (air dark, bone bright) with a film-like response, a
per-patient exposure and noise.

Anatomy: body outline with neck and shoulders, soft tissue thicker in the middle, two lungs (apex,
rib-cage wall, medial border, diaphragm domes with sharp costophrenic angles, the patient's right
dome higher), heart (on the viewer's right) and mediastinum with aortic knob, trachea, spine with
vertebrae, posterior ribs, clavicles, gastric bubble, lung vessel markings branching from the hila
and fading towards the periphery. Variation: body and lung size, position, rotation, inspiration
(diaphragm level, rib spacing), heart size, exposure, contrast, noise, texture.

Findings (all 14 ChestX-ray14 labels are simulated; each localized and returned with its bounding
box): Nodule (small bright round), Mass (larger lobulated), Effusion (basal opacity with a
meniscus, blunted costophrenic angle), Pneumothorax (apical/lateral rim with no lung markings,
darker, with a pleural line), Cardiomegaly (heart wider than half the thorax), Consolidation
(dense opacity with air bronchograms), Pneumonia (patchy fluffy opacity), Atelectasis (plate-like
linear opacity), Infiltration (faint hazy opacity), Edema (perihilar haze with basal septal lines
on one side), Emphysema (a bulla: lucent round space with a thin wall and no markings), Fibrosis
(reticular net in a peripheral zone), Pleural_Thickening (smooth band along the chest wall or
apex), Hernia (hiatal: retrocardiac opacity with an air-fluid level). Sizes are fractions of the
image, so a finding fills a similar share of a 25%-of-width scan at 64 px and at 256 px. An image
has findings with probability ``prevalence``: 1, 2 or 3 of them (probabilities 0.65, 0.25, 0.10),
drawn without replacement with :data:`FINDING_WEIGHTS`. Labels are fully known (0/1, no NaN).

Images are generated in blocks of 64 whose seeds derive from ``(seed, block)``: image ``i`` of a
seed is the same whatever ``n`` is, and the same patient (up to pixel noise) at any ``size``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from datasets.base import SPLITS, ImageDataset, check_split, phantom_fingerprint
from datasets.errors import DatasetError
from datasets.labels import FINDINGS, LABELS

__all__ = [
    "FINDING_WEIGHTS",
    "Finding",
    "PhantomBatch",
    "PhantomDataset",
    "generate_phantoms",
    "phantom_block",
]

BLOCK = 64  # images per seeded block


class Finding(NamedTuple):
    """One simulated finding: its label name and pixel bbox ``(r0, c0, r1, c1)``, half-open."""

    name: str
    bbox: tuple[int, int, int, int]


class PhantomBatch(NamedTuple):
    """``images`` ``(n, 1, S, S)`` float32 in [0, 1]; ``labels`` ``(n, 15)`` float32 (0/1, no NaN);
    ``findings`` one list of :class:`Finding` per image."""

    images: torch.Tensor
    labels: torch.Tensor
    findings: list[list[Finding]]


# Relative frequency of each finding among images that have findings.
FINDING_WEIGHTS: dict[str, float] = {
    "Atelectasis": 1.0,
    "Cardiomegaly": 1.0,
    "Effusion": 1.2,
    "Infiltration": 0.7,
    "Mass": 1.0,
    "Nodule": 1.2,
    "Pneumonia": 0.8,
    "Pneumothorax": 1.0,
    "Consolidation": 1.0,
    "Edema": 0.5,
    "Emphysema": 0.6,
    "Fibrosis": 0.6,
    "Pleural_Thickening": 0.6,
    "Hernia": 0.4,
}
_COUNT_PROBS = (0.65, 0.25, 0.10)  # 1, 2 or 3 findings in a positive image


def generate_phantoms(n: int, size: int = 64, seed: int = 0, prevalence: float = 0.5) -> PhantomBatch:
    """Generate ``n`` chest radiograph phantoms of ``size`` x ``size`` pixels.

    Args:
        n: number of images.
        size: side in pixels (any size >= 16; 64 and 256 are the presets').
        seed: images depend only on ``(seed, index)`` (and ``size`` through resolution and noise).
        prevalence: probability that an image has at least one finding (label ``Any``).

    Returns:
        :class:`PhantomBatch` with images ``(n, 1, size, size)``, labels ``(n, 15)`` in
        :data:`datasets.labels.LABELS` order and the findings with their bboxes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if not 0.0 <= prevalence <= 1.0:
        raise ValueError(f"prevalence must be in [0, 1], got {prevalence}")
    images, labels, findings = [], [], []
    for block in range(math.ceil(n / BLOCK)):
        m = min(BLOCK, n - block * BLOCK)
        img, lab, fnd = phantom_block(block, size, seed, prevalence, m)
        images.append(img)
        labels.append(lab)
        findings.extend(fnd)
    if not images:
        return PhantomBatch(torch.zeros(0, 1, size, size), torch.zeros(0, len(LABELS)), [])
    return PhantomBatch(torch.cat(images), torch.cat(labels), findings)


def phantom_block(block: int, size: int, seed: int, prevalence: float, m: int = BLOCK) -> PhantomBatch:
    """The first ``m`` images of block ``block`` (images ``block * BLOCK ...``) of a seed."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, block, 0x70A7])
    gen = torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    with torch.inference_mode(), _single_thread(size):
        block_params = _Phantoms(BLOCK, size, gen, prevalence)
        # a few images at a time when large: 16 of 256 x 256 fit the caches better (2x faster than 64)
        step = max(1, (2**20) // (size * size))
        images, labels, findings = [], [], []
        for start in range(0, m, step):
            img, lab, fnd = block_params.select(start, min(m, start + step)).render()
            images.append(img)
            labels.append(lab)
            findings.extend(fnd)
    return PhantomBatch(torch.cat(images).clone(), torch.cat(labels).clone(), findings)


@contextmanager
def _single_thread(size: int):
    """Render small images on one thread: the ops are too small to share, and on a busy machine
    intra-op threads only wait for each other (1,000 phantoms: 5 s on one thread, 60 s on two
    contended threads). Large images keep torch's setting."""
    before = torch.get_num_threads()
    if size > 128 or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PhantomDataset(ImageDataset):
    """Phantoms as an :class:`~datasets.base.ImageDataset`; images are generated lazily by block.

    Splits and provenance: every ``(seed, split)`` pair is its own generator stream (a 63-bit seed
    derived from both), so no two pairs share an image: val and test are held out from train under
    the same seed *and* under any other seed (the test split of seed 1 is not the train split of
    seed 0). The run's ``seed`` picks which phantoms; there is no split seed (``describe()`` says
    ``split_seed: None``; open_dataset's ``split_seed`` does not apply). Image ``i`` of a stream is
    the same for any ``n``, so a checkpoint trained on ``n`` phantoms of a split has seen the first
    ``n`` of any larger set of that split and seed: the fingerprint is the generator version plus
    the seed, and :func:`datasets.provenance.training_overlap` compares it with the split.
    Nothing is cached on disk; up to ``cache_blocks`` blocks stay in memory.
    """

    GENERATOR = "datasets.phantoms v1"

    DEFAULT_N = {"train": 2000, "val": 500, "test": 500, "all": 3000}

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        n: int | None = None,
        seed: int = 0,
        prevalence: float = 0.5,
        cache_blocks: int = 4,
    ):
        self.split = check_split(split)
        if split == "all":
            raise DatasetError("phantoms have no 'all' split; use train, val or test")
        self.size, self.seed, self.prevalence = int(size), int(seed), float(prevalence)
        if self.size < 16:
            raise DatasetError(f"size must be >= 16, got {size}")
        if not 0.0 <= self.prevalence <= 1.0:
            raise DatasetError(f"prevalence must be in [0, 1], got {prevalence}")
        self.n = self.DEFAULT_N[split] if n is None else int(n)
        if self.n < 0:
            raise DatasetError(f"n must be >= 0, got {n}")
        # disjoint seeds per split: a 63-bit seed from (seed, split)
        state = np.random.SeedSequence([self.seed & 0xFFFFFFFF, SPLITS.index(split), 0x5E1D])
        self.stream_seed = int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))
        self.labels = LABELS
        self.ids = [f"phantom-{split}-{i:06d}" for i in range(self.n)]
        self.skipped = []
        self._cache: dict[int, PhantomBatch] = {}
        self._last_block, self._jumps = -1, 0  # access pattern: sequential or random
        self._cache_blocks = max(1, cache_blocks)

    def block(self, b: int) -> PhantomBatch:
        if b not in self._cache:
            if len(self._cache) >= self._cache_blocks:
                self._cache.pop(next(iter(self._cache)))
            m = min(BLOCK, self.n - b * BLOCK)
            self._cache[b] = phantom_block(b, self.size, self.stream_seed, self.prevalence, m)
        return self._cache[b]

    def _load(self, i: int):
        b = i // BLOCK
        if getattr(self, "_all", None) is None and b not in self._cache and b != self._last_block + 1:
            self._jumps += 1
        if self._jumps >= 2 and self._small():
            # random access (a shuffling DataLoader) would regenerate a block per item: make all once
            if getattr(self, "_all", None) is None:
                self.tensors()
            return self._all[0][i].clone(), self._all[1][i].clone()
        self._last_block = b
        batch = self.block(b)
        return batch.images[i % BLOCK], batch.labels[i % BLOCK]

    def _small(self) -> bool:
        return self.n * self.size**2 <= 2**26  # 64 M pixels: 256 MB

    def findings(self, i: int) -> list[Finding]:
        """The findings (with bboxes) of image ``i``."""
        return self.block(i // BLOCK).findings[i % BLOCK]

    def tensors(self):
        """All images and labels; kept in memory (as copies) when at most 64 M pixels."""
        cached = getattr(self, "_all", None)
        if cached is None:
            batch = generate_phantoms(self.n, self.size, self.stream_seed, self.prevalence)
            cached = (batch.images, batch.labels)
            if self._small():
                self._all = cached
            else:
                return cached
        return cached[0].clone(), cached[1].clone()

    def describe(self) -> dict:
        return {
            "source": "phantoms",
            "fingerprint": phantom_fingerprint(self.GENERATOR, self.seed),
            "split": self.split,
            "split_seed": None,
            "labels": list(self.labels),
            "size": self.size,
            "n": self.n,
            "seed": self.seed,
            "prevalence": self.prevalence,
            "generator": self.GENERATOR,
        }


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


class _Phantoms:
    """One block of phantoms: draws every random parameter in a fixed order, then renders."""

    def __init__(self, m: int, size: int, gen: torch.Generator, prevalence: float):
        self.m, self.S, self.g = m, size, gen
        self.edge = 0.012 + 1.2 / size  # soft edge width in body units (1 px = 2/S units)
        self.prevalence = prevalence
        self._draw_patient()
        self._draw_findings()

    def truncate(self, m: int) -> _Phantoms:
        """Keep the first ``m`` images (parameters are always drawn for a whole block)."""
        return self.select(0, m)

    def select(self, start: int, stop: int) -> _Phantoms:
        """Images ``start:stop`` of the block as a new object (every random draw happened in
        ``__init__``, so rendering a slice gives exactly those images of the whole block)."""
        part = object.__new__(_Phantoms)
        for key, value in self.__dict__.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.m:
                value = value[start:stop]
            elif key == "fp":
                value = {name: {k: t[start:stop] for k, t in sub.items()} for name, sub in value.items()}
            elif key in ("_pts", "_maps"):
                continue
            part.__dict__[key] = value
        part.m = max(0, min(stop, self.m) - start)
        return part

    # -- random helpers (every draw is of a size-independent shape, so size changes only pixels) --
    def U(self, lo: float, hi: float, *shape: int) -> torch.Tensor:
        shape = shape or (1, 1)
        return lo + (hi - lo) * torch.rand(self.m, *shape, generator=self.g)

    def noise_field(self, res: int) -> torch.Tensor:
        """A ``(m, 1, res, res)`` Gaussian grid; :meth:`_up` turns it into a smooth field at any size."""
        return torch.randn(self.m, 1, res, res, generator=self.g)

    # -- patient ----------------------------------------------------------------------------------
    def _draw_patient(self) -> None:
        U = self.U
        self.scale = U(0.94, 1.05)
        self.tx, self.ty = U(-0.05, 0.05), U(-0.02, 0.08)
        self.rot = U(-0.07, 0.07)  # radians (about +-4 degrees)
        self.body_w = U(0.84, 0.96)
        self.lung_w = U(0.92, 1.04)
        self.apex = U(-0.78, -0.70)
        self.vd = U(0.56, 0.72)  # costophrenic sulcus level: inspiration
        self.dome_h = U(0.11, 0.17)
        self.right_up = U(0.02, 0.07)  # patient's right (viewer's left) dome higher
        self.heart_w = U(0.36, 0.43)
        self.heart_u = U(0.04, 0.09)
        self.heart_h = U(0.27, 0.32)
        self.rib_phase = U(-0.03, 0.03)
        # per side, 7 primary vessels, each with (itself, 2 branches) x 6 uniform numbers
        self.vessel_params = torch.rand(self.m, 2, 7, 3, 6, generator=self.g)
        self.hilum_v = U(-0.1, 0.0)
        self.bubble = (torch.rand(self.m, 1, 1, generator=self.g) < 0.7).float() * U(0.06, 0.1)
        self.contrast = U(2.0, 2.8)
        self.gamma = U(0.85, 1.2)
        self.noise_sd = U(0.008, 0.02)
        self.noise_seed = torch.randint(0, 2**62, (self.m,), generator=self.g)
        self.texture_lo = self.noise_field(6)
        self.texture_mid = self.noise_field(16)

    # -- findings ---------------------------------------------------------------------------------
    def _draw_findings(self) -> None:
        m, g = self.m, self.g
        positive = torch.rand(m, generator=g) < self.prevalence
        count = 1 + torch.searchsorted(
            torch.tensor(np.cumsum(_COUNT_PROBS)[:-1], dtype=torch.float32),
            torch.rand(m, generator=g),
            right=True,
        )
        weights = torch.tensor([FINDING_WEIGHTS[f] for f in FINDINGS])
        order = torch.multinomial(weights.expand(m, -1), len(_COUNT_PROBS), replacement=False, generator=g)
        present = torch.zeros(m, len(FINDINGS), dtype=torch.bool)
        for j in range(len(_COUNT_PROBS)):
            rows = positive & (count > j)
            present[rows, order[rows, j]] = True
        self.present = present
        # parameters of every finding for every image, drawn whether present or not (fixed order)
        U = self.U
        self.fp: dict[str, dict[str, torch.Tensor]] = {}
        for name in FINDINGS:
            self.fp[name] = {
                "side": torch.where(torch.rand(m, 1, 1, generator=g) < 0.5, -1.0, 1.0),
                "a": U(0.0, 1.0, 1, 32),  # candidate positions for rejection sampling
                "v": U(0.0, 1.0, 1, 32),
                "r": U(0.0, 1.0),
                "r2": U(0.0, 1.0),
                "angle": U(0.0, 1.0),
                "phase": U(0.0, 2 * math.pi, 1, 4),
                "field": torch.randn(m, 1, 16, 16, generator=g),
            }
        heart = self.present[:, FINDINGS.index("Cardiomegaly")].float()[:, None, None]
        self.heart_w = self.heart_w * (1 - heart) + heart * U(0.56, 0.64)

    # -- geometry ---------------------------------------------------------------------------------
    def _body_coords(self) -> tuple[torch.Tensor, torch.Tensor]:
        lin = (torch.arange(self.S, dtype=torch.float32) + 0.5) / self.S * 2 - 1
        y, x = lin[:, None], lin[None, :]
        c, s = torch.cos(self.rot), torch.sin(self.rot)
        dx, dy = x - self.tx, y - self.ty
        u = (c * dx + s * dy) / self.scale
        v = (-s * dx + c * dy) / self.scale
        return u, v  # (m, S, S)

    def dome(self, side: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Diaphragm level under lateral coordinate ``a`` on ``side`` (-1 viewer's left)."""
        vd = self.vd - self.right_up * (torch.as_tensor(side) < 0).float()
        return vd - self.dome_h * (1 - ((a - 0.40) / 0.42) ** 2).clamp(min=-0.3)

    def lung(self, side, u, v, shrink=None, centre=None) -> torch.Tensor:
        """Soft mask of the lung on ``side`` at body points ``(u, v)``; optionally the lung shrunk
        by factor ``shrink`` towards ``centre`` (used for rims along the pleura)."""
        if shrink is not None:
            cu, cv = centre
            u = cu + (u - cu) / shrink
            v = cv + (v - cv) / shrink
        a = side * u
        w = self.edge
        top = self.apex + 3.2 * (a - 0.38 * self.lung_w) ** 2
        lateral = self.lung_w * (0.72 + 0.07 * v)
        medial = 0.11 + 0.03 * v
        return (
            _sig((v - top) / w)
            * _sig((lateral - a) / w)
            * _sig((a - medial) / w)
            * _sig((self.dome(side, a) - v) / w)
        )

    def heart(self, u, v) -> torch.Tensor:
        du = u - self.heart_u
        half = torch.where(du > 0, self.heart_w, 0.6 * self.heart_w)
        dv = v - (self.vd - 0.30) - 0.3 * du  # long axis tilted down towards the apex
        r = torch.sqrt((du / half) ** 2 + (dv / self.heart_h) ** 2 + 1e-8)
        return _sig((1 - r) * 8 / (self.edge * 8 + 0.05))

    def point_in_lungs(self, name: str, vlo: float, vhi: float, alo: float, ahi: float, margin: float):
        """Rejection-sample a point well inside the visible lung for finding ``name``.

        Returns body coordinates ``(u, v)`` ``(m, 1, 1)``; candidates come from a box in
        (lateral a, v) with the relative ranges given, kept when the lung is present ``margin`` away
        in four directions and the heart is not in front.
        """
        p = self.fp[name]
        side = p["side"]
        a = alo + (ahi - alo) * p["a"]
        v = vlo + (vhi - vlo) * p["v"]
        u = side * a
        ok = torch.ones_like(a, dtype=torch.bool)
        for du, dv in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
            ok &= self.lung(side, u + du, v + dv) > 0.5
        ok &= self.heart(u, v) < 0.3
        first = torch.where(ok.any(-1), ok.float().argmax(-1), torch.zeros_like(ok[..., 0], dtype=torch.long))
        pick = first[..., None]
        uu = torch.gather(u, -1, pick)
        vv = torch.gather(v, -1, pick)
        fallback = ~ok.any(-1, keepdim=True)
        uu = torch.where(fallback, side * 0.45, uu)
        vv = torch.where(fallback, torch.zeros_like(vv), vv)
        return uu, vv

    # -- rendering --------------------------------------------------------------------------------
    def _up(self, low: torch.Tensor) -> torch.Tensor:
        return F.interpolate(low, size=(self.S, self.S), mode="bicubic", align_corners=False)[:, 0]

    def render(self):
        m, S = self.m, self.S
        u, v = self._body_coords()
        w = self.edge

        # body outline: neck at the top, shoulders, chest; tissue thicker in the middle
        half = self.body_w * (0.30 + 0.62 * _sig((v + 0.80) / 0.07))
        body = _sig((half - u.abs()) / w)
        thick = torch.sqrt((1 - (u / half) ** 2).clamp(min=0.0)) * body
        att = 0.30 * body + 0.30 * thick

        lungs = [self.lung(s, u, v) for s in (-1.0, 1.0)]
        lung = lungs[0] + lungs[1]
        heart = self.heart(u, v)
        med_half = 0.10 + 0.04 * (v + 0.8).clamp(min=0)
        mediastinum = _sig((med_half - (u - 0.01).abs()) / w) * _sig((self.vd - 0.1 - v) / w)
        aorta = _sig((0.075 - torch.sqrt((u - 0.12) ** 2 + (v + 0.40) ** 2)) / w)
        solid = torch.maximum(torch.maximum(heart, mediastinum), aorta)
        air = lung * (1 - solid)  # how much of each pixel is aerated lung in projection
        lung_depth = 0.75 + 0.25 * torch.sqrt((1 - ((u.abs() - 0.42) / 0.45) ** 2).clamp(min=0))
        att = att - 0.36 * air * lung_depth + 0.05 * heart

        # trachea
        trachea = _sig((0.032 - (u - 0.005).abs()) / (w * 0.7)) * _sig((-0.30 - v) / w)
        att = att - 0.10 * trachea
        # gastric bubble under the left dome (viewer's right)
        gb_r = self.bubble
        gbu, gbv = 0.42, self.vd + 0.06
        bubble = _sig((gb_r - torch.sqrt((u - gbu) ** 2 + ((v - gbv) * 1.6) ** 2)) / w) * (gb_r > 0).float()
        bubble = bubble * _sig((v - self.dome(torch.tensor(1.0), u.abs()) - 0.03) / w)
        att = att - 0.18 * bubble

        bones = torch.zeros_like(att)
        # spine with vertebral bodies
        spine = _sig((0.075 - (u - 0.005).abs()) / w)
        vert = 0.75 + 0.25 * torch.cos(2 * math.pi * (v - 0.03) / (0.125 + 0.02 * self.vd))
        bones = bones + 0.16 * spine * vert
        # posterior ribs: arcs from the spine, rising slightly then sweeping down laterally
        spacing = 0.118 + 0.05 * (self.vd - 0.55)
        for side in (-1.0, 1.0):
            rs, cs = self._window(side, 0.0, 1.0, -1.0, 1.0)
            us, vs = u[:, rs, cs], v[:, rs, cs]
            a = side * us
            ribs = torch.zeros_like(us)
            extent = _sig((a - 0.07) / w) * _sig((self.lung_w * 0.80 + 0.05 * vs - a) / w)
            arc = 0.85 * (a - 0.22) ** 2 - 0.03
            for k in range(10):
                thick_r = 0.026 + 0.0015 * k
                d = (vs - arc - (-0.78 + self.rib_phase + k * spacing)).abs()
                rib = _sig((thick_r - d) / (w * 0.6)) * (0.7 + 0.3 * (d / thick_r).clamp(max=1) ** 2)
                ribs = torch.maximum(ribs, rib)
            bones[:, rs, cs] = torch.maximum(bones[:, rs, cs], 0.11 * ribs * extent)
        # clavicles
        for side in (-1.0, 1.0):
            a = side * u
            centre = -0.70 - 0.16 * (a - 0.06) + 0.12 * (a - 0.35) ** 2
            clav = (
                _sig((0.034 - (v - centre).abs()) / (w * 0.7)) * _sig((a - 0.06) / w) * _sig((0.66 - a) / w)
            )
            bones = bones + 0.22 * clav
        att = att + bones * body

        # lung markings: tapered vessels branching from each hilum, fading to the periphery
        vessels = torch.zeros_like(att)
        for si, side in enumerate((-1.0, 1.0)):
            rs, cs = self._window(side, 0.0, 0.95, -0.9, 0.85)  # only where this lung can be
            us, vs = u[:, rs, cs], v[:, rs, cs]
            local = torch.zeros_like(us)
            for k in range(7):
                q = self.vessel_params[:, si, k]  # (m, 3, 6)
                ang = (-1.2 + 2.4 * (k + q[:, 0, 0]) / 7)[:, None, None]  # fan from up to down
                length = (0.38 + 0.22 * q[:, 0, 1])[:, None, None]
                pu, pv = side * 0.17, self.hilum_v + 0.06 * (k - 3) / 3
                du, dv = side * torch.cos(ang), torch.sin(ang)
                bend = (q[:, 0, 2] - 0.5)[:, None, None] * 1.6
                seg = self._segment(us, vs, pu, pv, du, dv, length, 0.022, 0.008, bend=bend)
                local = torch.maximum(local, seg)
                for b in range(1, 3):
                    t0 = (0.3 + 0.35 * q[:, b, 0])[:, None, None]
                    bang = ang + (0.35 + 0.4 * q[:, b, 1])[:, None, None] * (1 if b == 1 else -1)
                    bu, bv = pu + du * length * t0, pv + dv * length * t0
                    blen = length * (1 - t0) * (0.6 + 0.5 * q[:, b, 2])[:, None, None]
                    bbend = (q[:, b, 3] - 0.5)[:, None, None] * 2.0
                    seg = self._segment(
                        us,
                        vs,
                        bu,
                        bv,
                        side * torch.cos(bang),
                        torch.sin(bang),
                        blen,
                        0.013,
                        0.006,
                        0.5,
                        bbend,
                    )
                    local = torch.maximum(local, seg)
            vessels[:, rs, cs] = torch.maximum(vessels[:, rs, cs], local)
        self._maps = {"u": u, "v": v, "air": air, "lung": lung, "heart": heart, "vessels": vessels}

        # findings
        add, vessel_keep = torch.zeros_like(att), torch.ones_like(att)
        footprints: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for j, name in enumerate(FINDINGS):
            idx = self.present[:, j].nonzero()[:, 0]
            if idx.numel() == 0:
                continue
            delta, keep, foot = getattr(self, "_f_" + name.lower())(idx)
            add[idx] += delta
            vessel_keep[idx] *= keep
            footprints[name] = (idx, foot)
        att = att + 0.06 * vessels * air * vessel_keep + add

        # texture and film response
        tex = 0.025 * self._up(self.texture_lo) + 0.012 * self._up(self.texture_mid)
        att = att + tex * body
        img = 1 - torch.exp(-self.contrast * att.clamp(min=0))
        img = img / (1 - torch.exp(-self.contrast * 0.75))
        img = img.clamp(0, 1) ** self.gamma
        noise = torch.stack(
            [torch.randn(S, S, generator=torch.Generator().manual_seed(int(k))) for k in self.noise_seed]
        )
        noise = noise * self.noise_sd
        img = (img + noise).clamp(0, 1)

        labels = torch.zeros(m, len(LABELS))
        labels[:, : len(FINDINGS)] = self.present.float()
        labels[:, -1] = self.present.any(1).float()
        findings: list[list[Finding]] = [[] for _ in range(m)]
        for name, (idx, foot) in footprints.items():
            for i, box in zip(idx.tolist(), _bboxes(foot), strict=True):
                findings[i].append(Finding(name, box))
        return img.unsqueeze(1).contiguous(), labels, findings

    def _window(self, side: float, alo: float, ahi: float, vlo: float, vhi: float) -> tuple[slice, slice]:
        """Pixel rows and columns that hold the body box ``a = side * u in [alo, ahi]``,
        ``v in [vlo, vhi]`` in every image of the block (to draw small things on a crop)."""
        ulo, uhi = sorted((side * alo, side * ahi))
        cu = torch.tensor([ulo, ulo, uhi, uhi])
        cv = torch.tensor([vlo, vhi, vlo, vhi])
        c, s = torch.cos(self.rot), torch.sin(self.rot)  # (m, 1, 1)
        x = self.scale * (c * cu - s * cv) + self.tx  # (m, 1, 4)
        y = self.scale * (s * cu + c * cv) + self.ty
        S = self.S

        def span(t):
            lo = math.floor((float(t.min()) + 1) / 2 * S) - 2
            hi = math.ceil((float(t.max()) + 1) / 2 * S) + 2
            return slice(max(0, lo), max(0, min(S, hi)))

        return span(y), span(x)

    def _segment(self, u, v, pu, pv, du, dv, length, w0, w1, fade=0.5, bend=0.0) -> torch.Tensor:
        """A tapered line from ``(pu, pv)`` along unit ``(du, dv)``: 1 on its axis, Gaussian across,
        fading by ``fade`` towards its end and curving sideways by ``bend * along**2``."""
        ru, rv = u - pu, v - pv
        along = ru * du + rv * dv
        across = -ru * dv + rv * du - bend * along.clamp(min=0) ** 2
        t = (along / length).clamp(0, 1)
        width = w0 + (w1 - w0) * t + 0.5 / self.S
        ends = _sig(along / 0.01) * _sig((length - along) / 0.02)
        return (1 - (across / width) ** 2).clamp(min=0) ** 2 * ends * (1 - fade * t)

    # -- one method per finding: (attenuation delta, vessel keep factor, footprint) on images idx --
    def _sub(self, idx, *names):
        return [self._maps[k][idx] for k in names]

    def _p(self, name, idx, key):
        return self.fp[name][key][idx]

    def _round(self, name, idx, r_lo, r_hi, lobes, contrast):
        u, v, air = self._sub(idx, "u", "v", "air")
        r = r_lo + (r_hi - r_lo) * self._p(name, idx, "r")
        cu, cv = self._sub_point(name, idx, margin=r_hi)
        ang = torch.atan2(v - cv, u - cu)
        ph = self._p(name, idx, "phase")
        rr = r * (
            1 + lobes * torch.cos(3 * ang + ph[..., :1]) + 0.6 * lobes * torch.cos(5 * ang + ph[..., 1:2])
        )
        d = torch.sqrt((u - cu) ** 2 + (v - cv) ** 2)
        inside = _sig((rr - d) / (self.edge * 0.8))
        profile = torch.sqrt((1 - (d / rr) ** 2).clamp(min=0)) * 0.5 + 0.5
        delta = contrast * inside * profile * (0.6 + 0.4 * air)
        return delta, torch.ones_like(delta), inside

    def _sub_point(self, name, idx, margin, vlo=-0.55, vhi=0.45, alo=0.18, ahi=0.72):
        """Centre of finding ``name`` on images ``idx``: sampled for the whole block once (cheap)."""
        key = ("pt", name)
        if key not in self.__dict__.setdefault("_pts", {}):
            self._pts[key] = self.point_in_lungs(name, vlo, vhi, alo, ahi, margin)
        cu, cv = self._pts[key]
        return cu[idx], cv[idx]

    def _f_nodule(self, idx):
        return self._round("Nodule", idx, 0.055, 0.075, 0.04, 0.30)

    def _f_mass(self, idx):
        return self._round("Mass", idx, 0.13, 0.19, 0.10, 0.30)

    def _side_maps(self, name, idx):
        side = self._p(name, idx, "side")
        u, v = self._sub(idx, "u", "v")
        sub = self._subset_view(idx)
        return side, u, v, sub

    def _subset_view(self, idx) -> _Phantoms:
        """A shallow view of this block restricted to images ``idx`` (for shape functions)."""
        view = object.__new__(_Phantoms)
        view.__dict__.update(self.__dict__)
        for key in (
            "scale",
            "tx",
            "ty",
            "rot",
            "body_w",
            "lung_w",
            "apex",
            "vd",
            "dome_h",
            "right_up",
            "heart_w",
            "heart_u",
            "heart_h",
        ):
            setattr(view, key, getattr(self, key)[idx])
        return view

    def _f_effusion(self, idx):
        side, u, v, sub = self._side_maps("Effusion", idx)
        a = side * u
        hf = 0.30 + 0.20 * self._p("Effusion", idx, "r")
        vd = sub.vd - sub.right_up * (torch.as_tensor(side) < 0).float()
        lateral = sub.lung_w * (0.72 + 0.07 * v)
        level = vd - hf + 0.5 * hf * ((lateral - a) / 0.6).clamp(0, 1) ** 1.5  # meniscus
        hemithorax = _sig((lateral + 0.02 - a) / self.edge) * _sig((a - 0.10) / self.edge)
        below = _sig((v - level) / self.edge) * _sig((vd + 0.06 - v) / self.edge)
        fluid = hemithorax * below
        lung = sub.lung(side, u, v)
        delta = 0.36 * fluid * lung + 0.05 * fluid
        return delta, 1 - fluid, fluid * _sig((sub.dome(side, a) + 0.02 - v) / self.edge)

    def _pleural_rim(self, name, idx, shrink):
        side, u, v, sub = self._side_maps(name, idx)
        centre = (side * 0.32, torch.full_like(side, -0.05))
        lung = sub.lung(side, u, v)
        inner = sub.lung(side, u, v, shrink=shrink, centre=centre)
        # restrict to the apex and lateral wall, facing a random direction between up and out
        ang = -0.3 - 1.1 * self._p(name, idx, "angle")  # radians from lateral (0) towards up (-pi/2)
        du, dv = side * torch.cos(ang), torch.sin(ang)
        ru, rv = u - centre[0], v - centre[1]
        cosang = (ru * du + rv * dv) / torch.sqrt(ru**2 + rv**2 + 1e-6)
        window = _sig((cosang - 0.55) / 0.08)
        return lung, inner, window

    def _f_pneumothorax(self, idx):
        shrink = 0.68 + 0.12 * self._p("Pneumothorax", idx, "r")
        lung, inner, window = self._pleural_rim("Pneumothorax", idx, shrink)
        rim = lung * (1 - inner) * window
        line = 4 * inner * (1 - inner) * window * lung
        delta = -0.12 * rim + 0.10 * line
        return delta, 1 - rim, rim

    def _f_pleural_thickening(self, idx):
        shrink = 0.84 + 0.05 * self._p("Pleural_Thickening", idx, "r")
        lung, inner, window = self._pleural_rim("Pleural_Thickening", idx, shrink)
        band = lung * (1 - inner) * window
        return 0.40 * band, 1 - band, band

    def _f_cardiomegaly(self, idx):
        u, v, heart = self._sub(idx, "u", "v", "heart")
        foot = heart * _sig((self.vd[idx] - v) / self.edge)
        return torch.zeros_like(u), torch.ones_like(u), foot

    def _blob(self, name, idx, r_lo, r_hi, margin, **box):
        """An elliptic blob in the lung: body coords, centre, normalised distance, a smooth field."""
        u, v = self._sub(idx, "u", "v")
        cu, cv = self._sub_point(name, idx, margin=margin, **box)
        r = r_lo + (r_hi - r_lo) * self._p(name, idx, "r")
        r2 = r * (0.7 + 0.5 * self._p(name, idx, "r2"))
        ang = math.pi * self._p(name, idx, "angle")
        c, s = torch.cos(ang), torch.sin(ang)
        x = ((u - cu) * c + (v - cv) * s) / r
        y = (-(u - cu) * s + (v - cv) * c) / r2
        dist = torch.sqrt(x**2 + y**2)
        field = self._up(self._p(name, idx, "field"))
        return u, v, cu, cv, dist, field

    def _f_consolidation(self, idx):
        u, v, cu, cv, dist, field = self._blob("Consolidation", idx, 0.14, 0.20, 0.12)
        lung = self._sub(idx, "lung")[0]
        region = _sig((1 - dist + 0.25 * field) / 0.08) * lung
        # air bronchograms: dark branching tubes inside the opacity, pointing towards the hilum
        bron = torch.zeros_like(u)
        ph = self._p("Consolidation", idx, "phase")
        for k in range(3):
            ang = torch.atan2(-0.05 - cv, torch.sign(cu) * 0.17 - cu) + (ph[..., k : k + 1] - math.pi) * 0.25
            bron = torch.maximum(
                bron,
                self._segment(
                    u,
                    v,
                    cu - 0.1 * torch.cos(ang),
                    cv - 0.1 * torch.sin(ang),
                    torch.cos(ang),
                    torch.sin(ang),
                    0.2,
                    0.012,
                    0.006,
                ),
            )
        delta = 0.34 * region - 0.16 * bron * region
        return delta, 1 - region, region

    def _f_pneumonia(self, idx):
        u, v, cu, cv, dist, field = self._blob("Pneumonia", idx, 0.15, 0.22, 0.12)
        lung = self._sub(idx, "lung")[0]
        envelope = _sig((1 - dist + 0.15 * field) / 0.15)
        clumps = _sig((field + 0.2) / 0.3)  # fluffy patches at a quarter of the blob's scale
        region = envelope * (0.35 + 0.65 * clumps) * lung
        return 0.28 * region, 1 - 0.7 * region, envelope * lung

    def _f_infiltration(self, idx):
        u, v, cu, cv, dist, field = self._blob("Infiltration", idx, 0.17, 0.25, 0.14)
        lung = self._sub(idx, "lung")[0]
        region = _sig((1 - dist + 0.3 * field) / 0.2) * lung
        texture = 0.7 + 0.3 * torch.cos(40 * u + 5 * field) * torch.cos(40 * v)
        return 0.15 * region * texture, 1 - 0.4 * region, region

    def _f_atelectasis(self, idx):
        u, v = self._sub(idx, "u", "v")
        cu, cv = self._sub_point("Atelectasis", idx, margin=0.16, vlo=-0.1, vhi=0.45)
        ang = (self._p("Atelectasis", idx, "angle") - 0.5) * 0.7  # near-horizontal plate
        length = 0.26 + 0.12 * self._p("Atelectasis", idx, "r")
        du, dv = torch.cos(ang), torch.sin(ang)
        plate = self._segment(
            u, v, cu - du * length / 2, cv - dv * length / 2, du, dv, length, 0.052, 0.040, 0.0
        )
        lung = self._sub(idx, "lung")[0]
        region = plate * lung
        return 0.34 * region, 1 - region, region

    def _f_fibrosis(self, idx):
        u, v, cu, cv, dist, field = self._blob(
            "Fibrosis", idx, 0.15, 0.20, 0.12, vlo=-0.2, vhi=0.45, alo=0.35, ahi=0.72
        )
        lung = self._sub(idx, "lung")[0]
        envelope = _sig((1 - dist) / 0.12) * lung
        ph = self._p("Fibrosis", idx, "phase")
        f = 2 * math.pi / 0.11
        net = torch.maximum(
            torch.exp(-(torch.sin(f * (0.8 * u + 0.6 * v) + ph[..., :1] + 2 * field) ** 2) / 0.15),
            torch.exp(-(torch.sin(f * (-0.5 * u + 0.87 * v) + ph[..., 1:2] + 2 * field) ** 2) / 0.15),
        )
        return (0.20 * net + 0.06) * envelope, 1 - 0.8 * envelope, envelope

    def _f_emphysema(self, idx):
        u, v = self._sub(idx, "u", "v")
        cu, cv = self._sub_point("Emphysema", idx, margin=0.15, vlo=-0.6, vhi=0.1)
        r = 0.13 + 0.06 * self._p("Emphysema", idx, "r")
        d = torch.sqrt((u - cu) ** 2 + (v - cv) ** 2)
        inside = _sig((r - d) / (self.edge * 0.7))
        wall = torch.exp(-(((d - r) / (0.012 + 0.6 / self.S)) ** 2))
        lung = self._sub(idx, "lung")[0]
        return (-0.12 * inside + 0.12 * wall) * lung, 1 - inside, inside * lung

    def _f_edema(self, idx):
        u, v, lung, air = self._sub(idx, "u", "v", "lung", "air")
        side = self._p("Edema", idx, "side")
        hv = self.hilum_v[idx]
        haze = torch.exp(-(((side * u - 0.30) / 0.20) ** 2 + ((v - hv) / 0.28) ** 2))
        # Kerley B lines: short horizontal lines at the lateral lung base
        a = side * u
        base = _sig((a - 0.50) / 0.03) * _sig((v - (self.vd[idx] - 0.35)) / 0.03)
        kerley = torch.exp(-(torch.sin(2 * math.pi * v / 0.06) ** 2) / 0.05) * base * _sig((a - 0.6) / 0.02)
        region = (haze * lung).clamp(max=1)
        delta = 0.22 * region * (0.5 + 0.5 * air) + 0.12 * kerley * lung
        foot = torch.maximum((haze > 0.35).float() * lung, base * lung * _sig((a - 0.6) / 0.02))
        return delta, 1 - 0.5 * region, foot

    def _f_hernia(self, idx):
        u, v = self._sub(idx, "u", "v")
        cu = 0.02 + 0.10 * self._p("Hernia", idx, "angle")
        cv = self.vd[idx] - 0.16 - 0.06 * self._p("Hernia", idx, "r2")
        r = 0.14 + 0.06 * self._p("Hernia", idx, "r")
        d = torch.sqrt((u - cu) ** 2 + ((v - cv) * 1.15) ** 2)
        inside = _sig((r - d) / (self.edge * 0.8))
        gas = inside * _sig(((cv - 0.15 * r) - v) / (self.edge * 0.5))
        wall = torch.exp(-(((d - r) / (0.012 + 0.6 / self.S)) ** 2))
        return 0.08 * inside - 0.36 * gas + 0.12 * wall, torch.ones_like(u), inside


def _bboxes(foot: torch.Tensor, threshold: float = 0.3) -> list[tuple[int, int, int, int]]:
    """Half-open pixel boxes ``(r0, c0, r1, c1)`` of ``foot > threshold`` for each map ``(k, S, S)``."""
    on = foot > threshold
    rows, cols = on.any(2), on.any(1)  # (k, S)
    S = foot.shape[-1]
    out = []
    ar = torch.arange(S)
    for r, c in zip(rows, cols, strict=True):
        if not bool(r.any()):
            out.append((S // 2, S // 2, S // 2 + 1, S // 2 + 1))
            continue
        rr, cc = ar[r], ar[c]
        out.append((int(rr[0]), int(cc[0]), int(rr[-1]) + 1, int(cc[-1]) + 1))
    return out
