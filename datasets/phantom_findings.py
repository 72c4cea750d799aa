"""Phantom findings: the 14 ChestX-ray14 labels drawn on the phantom anatomy, with bounding boxes.

Every finding is localized: Nodule (small bright round), Mass (larger lobulated), Effusion (basal
opacity with a meniscus, blunted costophrenic angle), Pneumothorax (apical/lateral rim with no lung
markings, darker, with a pleural line), Cardiomegaly (heart wider than half the thorax),
Consolidation (dense opacity with air bronchograms), Pneumonia (patchy fluffy opacity),
Atelectasis (plate-like linear opacity), Infiltration (faint hazy opacity), Edema (perihilar haze
with basal septal lines on one side), Emphysema (a bulla: lucent round space with a thin wall and
no markings), Fibrosis (reticular net in a peripheral zone), Pleural_Thickening (smooth band along
the chest wall or apex), Hernia (hiatal: retrocardiac opacity with an air-fluid level). Sizes are
fractions of the image, so a finding fills a similar share of a 25%-of-width scan at 64 px and at
256 px. An image has findings with probability ``prevalence``: 1, 2 or 3 of them (probabilities
0.65, 0.25, 0.10), drawn without replacement with :data:`FINDING_WEIGHTS`.

:class:`FindingsMixin` holds the draws (:meth:`~FindingsMixin._draw_findings`, made for every image
of a block whether present or not, in a fixed order) and one ``_f_<name>(idx)`` method per finding
returning ``(attenuation delta, vessel keep factor, footprint)``, each ``(k, S, S)`` for the ``k``
images ``idx``; it works on the maps and geometry of :class:`~datasets.phantom_anatomy.AnatomyMixin`.

Version 2 (:class:`FindingsV2Mixin`) keeps these shapes and changes the draws: labels from a
sequential model calibrated to ChestX-ray14's label frequencies with co-occurrence affinities
(:func:`label_model`), a severity per finding and image scaling its density change
(:data:`V2_CONTRAST`), occluded positions behind the heart or the diaphragm
(:data:`V2_OCCLUDABLE`), overlapping normal and enlarged heart sizes, and optional label noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from datasets.labels import FINDINGS

__all__ = [
    "FINDING_WEIGHTS",
    "NIH_ANY",
    "NIH_COUNTS",
    "NIH_IMAGES",
    "NIH_LABELS_PER_IMAGE",
    "NIH_NO_FINDING",
    "V2_AFFINITY",
    "V2_CONTRAST",
    "V2_OCCLUDABLE",
    "Finding",
    "FindingsMixin",
    "FindingsV2Mixin",
    "LabelModel",
    "label_model",
]


class Finding(NamedTuple):
    """One simulated finding: its label name and pixel bbox ``(r0, c0, r1, c1)``, half-open."""

    name: str
    bbox: tuple[int, int, int, int]


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


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


class FindingsMixin:
    """The findings part of a block of phantoms (see the module docstring)."""

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

    def _subset_view(self, idx):
        """A shallow view of this block restricted to images ``idx`` (for shape functions)."""
        view = object.__new__(type(self))
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


# -- version 2: ChestX-ray14 prevalences, co-occurrence, graded and occluded findings ---------------
NIH_IMAGES = 112_120
"""Images in NIH ChestX-ray14 (``Data_Entry_2017.csv``; Wang et al., "ChestX-ray8: Hospital-scale
Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common
Thorax Diseases", CVPR 2017, extended to 14 labels in the dataset's 2017 release)."""

NIH_COUNTS: dict[str, int] = {
    "Atelectasis": 11_559,
    "Cardiomegaly": 2_776,
    "Effusion": 13_317,
    "Infiltration": 19_894,
    "Mass": 5_782,
    "Nodule": 6_331,
    "Pneumonia": 1_431,
    "Pneumothorax": 5_302,
    "Consolidation": 4_667,
    "Edema": 2_303,
    "Emphysema": 2_516,
    "Fibrosis": 1_686,
    "Pleural_Thickening": 3_385,
    "Hernia": 227,
}
"""Images with each label among the :data:`NIH_IMAGES` (``Data_Entry_2017.csv``, 60,361 images
"No Finding"; the same counts are tabulated, e.g., in Table 1 of "Summary of the dataset",
J. Digit. Imaging 36(4), 2023, doi:10.1007/s10278-023-00801-4)."""

NIH_NO_FINDING = 60_361
NIH_ANY = (NIH_IMAGES - NIH_NO_FINDING) / NIH_IMAGES  # 0.4616: images with at least one label

NIH_LABELS_PER_IMAGE = (30_963, 14_306, 4_359, 2_131)
"""Positive images with 1, 2, 3 and 4 labels. 1 and 2 are ChestX-ray14's (30,963 and 14,306,
ibid.); its 6,490 images with 3 or more are split into 3 and 4 so that the mean number of labels
per positive image is the dataset's, 81,176 / 51,759 = 1.568 (the v2 generator draws at most 4)."""

V2_AFFINITY: dict[tuple[str, str], float] = {
    ("Atelectasis", "Effusion"): 4.0,
    ("Cardiomegaly", "Effusion"): 4.0,
    ("Edema", "Effusion"): 4.0,
    ("Infiltration", "Pneumonia"): 4.0,
    ("Consolidation", "Pneumonia"): 4.0,
    ("Mass", "Nodule"): 4.0,
    ("Atelectasis", "Consolidation"): 3.0,
    ("Consolidation", "Effusion"): 3.0,
    ("Cardiomegaly", "Edema"): 3.0,
    ("Emphysema", "Pneumothorax"): 3.0,
    ("Fibrosis", "Pleural_Thickening"): 3.0,
    ("Atelectasis", "Infiltration"): 2.0,
    ("Effusion", "Infiltration"): 2.0,
    ("Edema", "Infiltration"): 2.0,
    ("Consolidation", "Infiltration"): 2.0,
    ("Effusion", "Mass"): 1.5,
    ("Atelectasis", "Pneumothorax"): 1.5,
}
"""Co-occurrence affinities of the v2 label model (symmetric; 1 for pairs not listed): once a
finding is drawn, the weight of each partner is multiplied by its affinity. The pairs are the
clinical associations among ChestX-ray14's most frequent label pairs (effusion with atelectasis,
cardiomegaly and edema: heart failure; infiltration, consolidation and pneumonia: airspace
disease; mass with nodule; emphysema with pneumothorax; fibrosis with pleural thickening); the
factors are chosen, not fitted (the dataset's pair counts are not reproduced here)."""


def _affinity_matrix(pairs: dict[tuple[str, str], float] | None = None) -> np.ndarray:
    k = len(FINDINGS)
    a = np.ones((k, k))
    for (x, y), f in (V2_AFFINITY if pairs is None else pairs).items():
        i, j = FINDINGS.index(x), FINDINGS.index(y)
        a[i, j] = a[j, i] = f
    np.fill_diagonal(a, 0.0)  # no finding twice
    return a


def _sequences(k: int, length: int) -> np.ndarray:
    """All ordered sequences of ``length`` distinct indices below ``k``: ``(n, length)``."""
    import itertools

    return np.array(list(itertools.permutations(range(k), length)), dtype=np.int64).reshape(-1, length)


def _sequence_probs(weights: np.ndarray, affinity: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Probability of each ordered draw ``seq`` ``(n, L)`` under sequential sampling without
    replacement with weights ``weights * prod(affinity[already drawn])``."""
    n, length = seq.shape
    w = np.broadcast_to(weights, (n, len(weights))).copy()
    p = np.ones(n)
    for t in range(length):
        pick = seq[:, t]
        p *= w[np.arange(n), pick] / w.sum(1)
        w *= affinity[pick]
    return p


def _set_membership(seq_probs: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-finding and per-pair probability of being in the drawn set, given the sequences and
    their probabilities (each already weighted by the probability of its length)."""
    single, pair = np.zeros(k), np.zeros((k, k))
    for seq, p in seq_probs:
        onehot = np.zeros((len(seq), k))
        np.put_along_axis(onehot, seq, 1.0, axis=1)
        single += p @ onehot
        pair += (onehot * p[:, None]).T @ onehot
    return single, pair


class LabelModel(NamedTuple):
    """The calibrated v2 label model: ``weights`` (14,) base weights of the sequential draw,
    ``count_probs`` (4,) of 1-4 findings in a positive image, ``affinity`` (14, 14); ``marginal``
    (14,) and ``pair`` (14, 14) are the exact probabilities, *given a positive image*, that a finding
    (a pair of findings) is present."""

    weights: np.ndarray
    count_probs: np.ndarray
    affinity: np.ndarray
    marginal: np.ndarray
    pair: np.ndarray


_LABEL_MODEL: LabelModel | None = None


def label_model(affinity: dict[tuple[str, str], float] | None = None) -> LabelModel:
    """Base weights calibrated so that each finding's frequency among positive images is
    ChestX-ray14's (``NIH_COUNTS[f] / (NIH_IMAGES - NIH_NO_FINDING)``), by the fixed point
    ``w <- w * target / marginal`` on the exact marginals (all 26,404 ordered draws of 1-4 of the
    14 findings are enumerated). ``affinity``: other pairs than :data:`V2_AFFINITY` (``{}``: no
    co-occurrence beyond sharing a positive image), for comparisons. The default model is
    computed once (under a second)."""
    global _LABEL_MODEL
    if affinity is None and _LABEL_MODEL is not None:
        return _LABEL_MODEL
    k = len(FINDINGS)
    counts = np.array(NIH_LABELS_PER_IMAGE, dtype=np.float64)
    count_probs = counts / counts.sum()
    target = np.array([NIH_COUNTS[f] for f in FINDINGS], dtype=np.float64) / (NIH_IMAGES - NIH_NO_FINDING)
    matrix = _affinity_matrix(affinity)
    seqs = [_sequences(k, length) for length in range(1, len(count_probs) + 1)]
    w = target / target.sum()
    for _ in range(100):
        probs = [(s, cp * _sequence_probs(w, matrix, s)) for s, cp in zip(seqs, count_probs, strict=True)]
        marginal, pair = _set_membership(probs, k)
        if np.abs(marginal / target - 1).max() < 1e-5:
            break
        w = w * target / marginal
        w = w / w.sum()
    else:  # pragma: no cover - the constants above converge in about 10 steps
        raise RuntimeError("the v2 label model did not calibrate")
    model = LabelModel(w, count_probs, matrix, marginal, pair)
    if affinity is None:
        _LABEL_MODEL = model
    return model


V2_OCCLUDABLE = ("Atelectasis", "Infiltration", "Mass", "Nodule", "Pneumonia", "Consolidation")
"""Findings that v2 may place behind the heart or in the posterior costophrenic recess below the
diaphragm dome (``V2_P_OCCLUDED`` of the time)."""
V2_P_OCCLUDED = 0.3

V2_CONTRAST: dict[str, tuple[float, float]] = {
    "Atelectasis": (0.25, 0.9),
    "Cardiomegaly": (1.0, 1.0),  # its sign is the heart's size, not a density
    "Effusion": (0.25, 0.8),
    "Infiltration": (0.3, 1.0),
    "Mass": (0.25, 0.8),
    "Nodule": (0.35, 1.0),
    "Pneumonia": (0.25, 0.9),
    "Pneumothorax": (0.5, 1.0),
    "Consolidation": (0.2, 0.8),
    "Edema": (0.3, 1.0),
    "Emphysema": (0.3, 1.0),
    "Fibrosis": (0.3, 1.0),
    "Pleural_Thickening": (0.5, 1.0),
    "Hernia": (0.3, 1.0),
}
"""Severity range of each finding in v2: its attenuation change (and how much of the lung
markings it hides) is v1's times a severity drawn uniformly in this range, per image. Set by hand
so that a small classifier's full-image AUROC lands near 0.7-0.9 (``benchmarks/phantom_difficulty.py``;
two revisions: Mass, Nodule, Pneumothorax and Pleural_Thickening were raised after the first
measurement put them at 0.49-0.64, then Pneumothorax and Pleural_Thickening again at 0.50-0.60)."""

V2_HEART_W = ((0.33, 0.50), (0.46, 0.62))
"""Heart half-width (body units) of normal hearts and of Cardiomegaly in v2: the ranges overlap
(v1: 0.36-0.43 against 0.56-0.64, separable by eye)."""


class FindingsV2Mixin:
    """The v2 draws of the findings; the shapes are v1's (:class:`FindingsMixin`)."""

    def _draw_findings_v2(self) -> None:
        m, g, k = self.m, self.g, len(FINDINGS)
        model = label_model()
        positive = torch.rand(m, generator=g) < self.prevalence
        count = 1 + torch.searchsorted(
            torch.tensor(np.cumsum(model.count_probs)[:-1], dtype=torch.float32),
            torch.rand(m, generator=g),
            right=True,
        )
        affinity = torch.tensor(model.affinity, dtype=torch.float64)
        w = torch.tensor(model.weights, dtype=torch.float64).expand(m, -1).clone()
        present = torch.zeros(m, k, dtype=torch.bool)
        for j in range(len(model.count_probs)):
            pick = torch.multinomial(w, 1, generator=g)[:, 0]
            rows = positive & (count > j)
            present[rows, pick[rows]] = True
            w = w * affinity[pick]
        self.present = present
        U = self.U
        self.fp = {}
        for name in FINDINGS:
            lo, hi = V2_CONTRAST[name]
            self.fp[name] = {
                "side": torch.where(torch.rand(m, 1, 1, generator=g) < 0.5, -1.0, 1.0),
                "a": U(0.0, 1.0, 1, 32),
                "v": U(0.0, 1.0, 1, 32),
                "r": U(0.0, 1.0),
                "r2": U(0.0, 1.0),
                "angle": U(0.0, 1.0),
                "phase": U(0.0, 2 * math.pi, 1, 4),
                "field": torch.randn(m, 1, 16, 16, generator=g),
                "occluded": (torch.rand(m, 1, 1, generator=g) < V2_P_OCCLUDED) & (name in V2_OCCLUDABLE),
            }
        self.severity = torch.stack([U(*V2_CONTRAST[f])[:, 0, 0] for f in FINDINGS], 1)  # (m, 14)
        flip = torch.rand(m, k, generator=g) < self.label_noise  # drawn whatever the noise level
        self.observed = present ^ flip
        heart = self.present[:, FINDINGS.index("Cardiomegaly")].float()[:, None, None]
        self.heart_w = U(*V2_HEART_W[0]) * (1 - heart) + heart * U(*V2_HEART_W[1])
