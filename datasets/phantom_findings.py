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
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from datasets.labels import FINDINGS

__all__ = ["FINDING_WEIGHTS", "Finding", "FindingsMixin"]


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
