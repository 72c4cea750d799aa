"""Phantom anatomy: a frontal chest radiograph built from smooth shapes, and its rendering.

Each phantom is an attenuation map in *body coordinates* ``(u, v)`` (``u`` left to right on the
viewer's screen, ``v`` top to bottom, both about [-1, 1]), mapped to the image through a
per-patient similarity transform (size, position, slight rotation), then turned into MONOCHROME2
intensities (air dark, bone bright) with a film-like response, a per-patient exposure and noise.

Anatomy: body outline with neck and shoulders, soft tissue thicker in the middle, two lungs (apex,
rib-cage wall, medial border, diaphragm domes with sharp costophrenic angles, the patient's right
dome higher), heart (on the viewer's right) and mediastinum with aortic knob, trachea, spine with
vertebrae, posterior ribs, clavicles, gastric bubble, lung vessel markings branching from the hila
and fading towards the periphery. Variation: body and lung size, position, rotation, inspiration
(diaphragm level, rib spacing), heart size, exposure, contrast, noise, texture.

:class:`AnatomyMixin` draws the patient parameters and renders a block ``(m, 1, S, S)``, adding
the findings of :class:`~datasets.phantom_findings.FindingsMixin` on the way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from datasets.labels import FINDINGS, LABELS
from datasets.phantom_findings import Finding, _bboxes

__all__ = ["AnatomyMixin"]


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


class AnatomyMixin:
    """The anatomy part of a block of phantoms: random draws, geometry and rendering.

    ``V2`` (a class attribute) switches on the v2 variations of :meth:`_draw_patient_v2` in
    :meth:`render`; with it off every operation is v1's, in v1's order (bit-identical images).
    """

    V2 = False

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

    def _draw_patient_v2(self) -> None:
        """v2: v1's draws, then wider anatomical and exposure variation and what v1 lacks.

        Body habitus (soft-tissue thickness, body width), lung and heart size and position, a
        rotation of up to +-8 degrees, irregular rib spacing and thickness, bone density,
        exposure (contrast, gamma, a white point above the densest tissue so that heart, spine
        and abdomen never saturate, scatter fog, an exposure gradient across the film), quantum
        noise and a fine parenchymal texture that looks like small nodules.
        """
        self._draw_patient()
        U = self.U
        self.scale = U(0.84, 1.08)
        self.tx, self.ty = U(-0.08, 0.08), U(-0.05, 0.12)
        self.rot = U(-0.14, 0.14)
        self.body_w = U(0.74, 1.0)
        self.lung_w = U(0.86, 1.08)
        self.apex = U(-0.82, -0.66)
        self.vd = U(0.50, 0.76)
        self.dome_h = U(0.08, 0.20)
        self.right_up = U(0.0, 0.09)
        self.heart_u = U(0.02, 0.11)
        self.heart_h = U(0.25, 0.34)
        self.rib_phase = U(-0.05, 0.05)
        self.soft = U(0.8, 1.35)  # soft-tissue thickness (habitus)
        self.bone = U(0.7, 1.3)  # bone density
        self.rib_jitter = U(-0.02, 0.02, 2, 10)  # per side and rib: irregular spacing
        self.rib_thick = U(0.8, 1.3)
        self.contrast = U(1.5, 3.0)
        self.gamma = U(0.75, 1.35)
        self.noise_sd = U(0.012, 0.035)
        self.white = U(1.3, 1.5)  # attenuation shown white: above the densest tissue
        self.fog = U(0.0, 0.08)  # scatter lifts the blacks
        self.gradient = U(-0.06, 0.06, 1, 2)  # exposure gradient across the film (x, y)
        self.texture_fine = self.noise_field(32)

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

    def lung(self, side, u, v, shrink=None, centre=None, recess=None) -> torch.Tensor:
        """Soft mask of the lung on ``side`` at body points ``(u, v)``; optionally the lung shrunk
        by factor ``shrink`` towards ``centre`` (used for rims along the pleura), or reaching
        ``recess`` below the dome (the posterior costophrenic recess, hidden behind the diaphragm
        on a frontal film; v2 places findings there)."""
        if shrink is not None:
            cu, cv = centre
            u = cu + (u - cu) / shrink
            v = cv + (v - cv) / shrink
        a = side * u
        w = self.edge
        top = self.apex + 3.2 * (a - 0.38 * self.lung_w) ** 2
        lateral = self.lung_w * (0.72 + 0.07 * v)
        medial = 0.11 + 0.03 * v
        dome = self.dome(side, a)
        if recess is not None:
            dome = dome + recess
        return _sig((v - top) / w) * _sig((lateral - a) / w) * _sig((a - medial) / w) * _sig((dome - v) / w)

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
        if self.V2:
            return self._point_v2(name, vlo, vhi, alo, ahi, margin)
        a = alo + (ahi - alo) * p["a"]
        v = vlo + (vhi - vlo) * p["v"]
        u = side * a
        ok = torch.ones_like(a, dtype=torch.bool)
        for du, dv in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
            ok &= self.lung(side, u + du, v + dv) > 0.5
        ok &= self.heart(u, v) < 0.3
        return self._first_candidate(side, u, v, ok)

    def _point_v2(self, name: str, vlo: float, vhi: float, alo: float, ahi: float, margin: float):
        """v2: as v1 for findings drawn visible; an *occluded* finding (``fp[name]["occluded"]``)
        is centred behind the heart or in the posterior recess below the dome (candidates from a
        box reaching further down and in; kept when the lung, recess included, is there ``margin``
        away in four directions and the point is behind the heart or under the dome)."""
        p = self.fp[name]
        side, occ = p["side"], p["occluded"]
        a = torch.where(occ, 0.10 + (ahi - 0.10) * p["a"], alo + (ahi - alo) * p["a"])
        v = torch.where(occ, vlo + (vhi + 0.35 - vlo) * p["v"], vlo + (vhi - vlo) * p["v"])
        u = side * a
        recess = torch.where(occ, 0.12, 0.0)
        ok = torch.ones_like(a, dtype=torch.bool)
        for du, dv in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
            ok &= self.lung(side, u + du, v + dv, recess=recess) > 0.5
        heart = self.heart(u, v)
        hidden = (heart > 0.5) | (v > self.dome(side, a))
        ok &= torch.where(occ, hidden, heart < 0.3)
        return self._first_candidate(side, u, v, ok)

    @staticmethod
    def _first_candidate(side, u, v, ok):
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
        if self.V2:
            att = att * self.soft

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
        for si, side in enumerate((-1.0, 1.0)):
            rs, cs = self._window(side, 0.0, 1.0, -1.0, 1.0)
            us, vs = u[:, rs, cs], v[:, rs, cs]
            a = side * us
            ribs = torch.zeros_like(us)
            extent = _sig((a - 0.07) / w) * _sig((self.lung_w * 0.80 + 0.05 * vs - a) / w)
            arc = 0.85 * (a - 0.22) ** 2 - 0.03
            for k in range(10):
                thick_r = 0.026 + 0.0015 * k
                level = -0.78 + self.rib_phase + k * spacing
                if self.V2:
                    thick_r = thick_r * self.rib_thick
                    level = level + self.rib_jitter[:, si, k, None, None]
                d = (vs - arc - level).abs()
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
        att = att + (bones * body * self.bone if self.V2 else bones * body)

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
        if self.V2:  # findings may lie in the posterior recess behind the diaphragm
            self._maps["lung"] = (
                self.lung(-1.0, u, v, recess=0.12) + self.lung(1.0, u, v, recess=0.12)
            ).clamp(max=1)

        # findings
        add, vessel_keep = torch.zeros_like(att), torch.ones_like(att)
        footprints: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for j, name in enumerate(FINDINGS):
            idx = self.present[:, j].nonzero()[:, 0]
            if idx.numel() == 0:
                continue
            delta, keep, foot = getattr(self, "_f_" + name.lower())(idx)
            if self.V2:  # graded severity: a fraction of v1's density change and of its masking
                sev = self.severity[idx, j, None, None]
                delta, keep = delta * sev, 1 - sev * (1 - keep)
            add[idx] += delta
            vessel_keep[idx] *= keep
            footprints[name] = (idx, foot)
        att = att + 0.06 * vessels * air * vessel_keep + add

        # texture and film response
        tex = 0.025 * self._up(self.texture_lo) + 0.012 * self._up(self.texture_mid)
        if self.V2:
            tex = tex * 1.3 + 0.022 * self._up(self.texture_fine) * air
        att = att + tex * body
        img = 1 - torch.exp(-self.contrast * att.clamp(min=0))
        if self.V2:
            img = img / (1 - torch.exp(-self.contrast * self.white))
            lin = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
            ramp = (
                1 + self.gradient[..., :1] * lin[None, None, :] + self.gradient[..., 1:] * lin[None, :, None]
            )
            img = (self.fog + (1 - self.fog) * img) * ramp
        else:
            img = img / (1 - torch.exp(-self.contrast * 0.75))
        img = img.clamp(0, 1) ** self.gamma
        noise = torch.stack(
            [torch.randn(S, S, generator=torch.Generator().manual_seed(int(k))) for k in self.noise_seed]
        )
        noise = noise * self.noise_sd
        img = (img + noise).clamp(0, 1)

        labels = torch.zeros(m, len(LABELS))
        observed = self.observed if self.V2 else self.present  # v2: with label noise
        labels[:, : len(FINDINGS)] = observed.float()
        labels[:, -1] = observed.any(1).float()
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
