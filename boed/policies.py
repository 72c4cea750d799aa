"""Scan policies: where to scan next, given what has been seen.

- ``boed``: the argmax of the EIG map (Eq. 17 of Harvey, Naderiparizi & Wood, "Image Completion
  via Inference in Deep Generative Models", 2021; maximised, their footnote 6).
- ``random``: a uniformly random candidate among those that reveal something new.
- ``raster``: the next candidate in row-major order that overlaps nothing seen so far (a tiling),
  else the one revealing the most new pixels.
- ``oracle``: greedy one-step on the true image *and* its labels: the candidate whose scan gives
  the true labels the highest probability, ``argmin_c CE(y, g(v | x * m_c, m_c))``. It scores with
  the ground truth, like the greedy oracle of active MRI acquisition, so it is an upper bound on
  the accuracy any one-step design can reach with this classifier; not a usable policy.
- ``oracle-entropy``: greedy one-step on the true image alone: the candidate whose scan leaves the
  classifier least uncertain, ``argmin_c H[g(v | x * m_c, m_c)]``, i.e. the largest *realised*
  information gain: an upper bound for the design criterion (entropy) but not for accuracy.
  Among the 289 views it picks the one the classifier is most sure about, so where the classifier
  is confidently wrong on some view (on the shipped phantom checkpoint: a few healthy images get
  p(Any) > 0.9 on single normal-lung views) it finds exactly that view.

Policies declare what they need: ``needs_eig`` (the session estimates the EIG map first) and
``needs_truth`` (the session hands over the hidden image and labels, :class:`Truth`). Only the
two oracles declare ``needs_truth``; every other policy gets a :class:`DecisionState` whose
``image`` and ``labels`` raise :class:`~boed.errors.BoedError` when read, so a usable policy
cannot peek at what the scanner has not revealed.

The full-image reference (the classifier on the whole image) is not a policy: ``boed.simulate``
records it as the session policy :data:`FULL_IMAGE` with a single step.

Every policy skips candidates that reveal nothing new, as long as any candidate does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from boed.eig import DEFAULT_MEMORY_BUDGET, Target, entropies_after, map_predictions, target_cross_entropy
from boed.errors import BoedError

if TYPE_CHECKING:
    from boed.protocols import Classifier, Policy
    from boed.scanner import CandidateGrid

FULL_IMAGE = "full-image"


@dataclass(frozen=True)
class Truth:
    """What the scanner hides, handed only to policies that declare ``needs_truth``.

    Attributes:
        image: the hidden image ``(1, 1, H, W)``.
        labels: its true labels ``(L,)`` in the classifier's order (NaN = unknown), or None.
    """

    image: torch.Tensor
    labels: torch.Tensor | None = None


@dataclass
class DecisionState:
    """What a policy may look at when choosing scan ``step`` (1-based).

    Attributes:
        step: the number of the scan being chosen (1 = the first).
        observed, mask: ``(1, 1, H, W)`` current observation and mask.
        candidates: the candidate grid.
        scanned: indices already scanned.
        generator: the session's random generator.
        eig: ``(K,)`` EIG map when the policy ``needs_eig``, else None.
        truth: the hidden image and labels when the policy ``needs_truth``, else None; read them
            through :attr:`image` and :attr:`labels`, which refuse when they were not given.
        classifier, target: for policies that query the classifier (the oracles).
    """

    step: int
    observed: torch.Tensor
    mask: torch.Tensor
    candidates: CandidateGrid
    scanned: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    eig: torch.Tensor | None = None
    truth: Truth | None = None
    classifier: Classifier | None = None
    target: Target | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def _truth(self, what: str) -> Truth:
        if self.truth is None:
            raise BoedError(f"the {what} is hidden: only a policy that declares needs_truth receives it")
        return self.truth

    @property
    def image(self) -> torch.Tensor:
        """The hidden image ``(1, 1, H, W)`` (policies with ``needs_truth`` only)."""
        return self._truth("hidden image").image

    @property
    def labels(self) -> torch.Tensor:
        """The true labels ``(L,)``, NaN = unknown (policies with ``needs_truth`` only)."""
        labels = self._truth("true labels").labels
        if labels is None:
            raise BoedError("the true labels were not given to the session")
        return labels

    def new_pixels(self) -> torch.Tensor:
        """``(K,)`` number of pixels each candidate would reveal that are not seen yet."""
        unseen = (self.mask <= 0.5).to(self.candidates.masks)
        return (self.candidates.masks.to(unseen.device) * unseen).flatten(1).sum(1)

    def revealing(self) -> torch.Tensor:
        """``(K,)`` bool: candidates revealing something new (all True if none does)."""
        reveals = self.new_pixels() > 0
        return reveals if reveals.any() else torch.ones_like(reveals)


class BoedPolicy:
    """Scan where the expected information gain is largest (lowest index on ties)."""

    name = "boed"
    needs_eig = True
    needs_truth = False

    def choose(self, state: DecisionState) -> int:
        if state.eig is None:
            raise BoedError("the boed policy needs the EIG map")
        eig = state.eig.double().masked_fill(~state.revealing().to(state.eig.device), -torch.inf)
        return int(torch.argmax(eig))


class RandomPolicy:
    """A uniformly random candidate among those that reveal something new (seeded)."""

    name = "random"
    needs_eig = False
    needs_truth = False

    def choose(self, state: DecisionState) -> int:
        choices = state.revealing().nonzero().squeeze(1).cpu()
        device = state.generator.device if state.generator is not None else "cpu"
        pick = torch.randint(len(choices), (1,), generator=state.generator, device=device)
        return int(choices[int(pick)])


class RasterPolicy:
    """Row-major order, tiling: the first candidate overlapping nothing seen, else the most new pixels."""

    name = "raster"
    needs_eig = False
    needs_truth = False

    def choose(self, state: DecisionState) -> int:
        new = state.new_pixels()
        full = state.candidates.masks.flatten(1).sum(1).to(new)
        untouched = (new == full) & (full > 0)
        if untouched.any():
            return int(untouched.nonzero()[0, 0])
        return int(torch.argmax(new))  # first of the maxima


class EntropyOraclePolicy:
    """Greedy one-step on the true image: ``argmin_c H[g(v | x * m_c, m_c)]`` (bounds the criterion)."""

    name = "oracle-entropy"
    needs_eig = False
    needs_truth = True

    def choose(self, state: DecisionState) -> int:
        if state.classifier is None or state.target is None:
            raise BoedError("the oracle-entropy policy needs the classifier and the target")
        active = state.revealing().nonzero().squeeze(1).to(state.mask.device)
        masks = torch.maximum(state.mask, state.candidates.masks.to(state.mask)[active])
        entropy = entropies_after(state.classifier, state.image, masks, state.target, state.memory_budget)[0]
        return int(active[torch.argmin(entropy)])


class OraclePolicy:
    """Greedy one-step on the true image and labels: ``argmin_c CE(y, g(v | x * m_c, m_c))``."""

    name = "oracle"
    needs_eig = False
    needs_truth = True

    def choose(self, state: DecisionState) -> int:
        if state.classifier is None or state.target is None:
            raise BoedError("the oracle policy needs the classifier and the target")
        target, truth = state.target, state.labels
        known = truth.reshape(-1)[list(target.indices)]
        if bool(torch.isnan(known).any()):
            # with unknown labels every candidate scores 0 and the argmin is candidate 0: a raster
            # scan reported as an upper bound; refuse instead
            raise BoedError(
                f"the oracle policy needs the true {target.title} label(s), "
                f"unknown (NaN) for this image; leave the oracle out or use labelled images"
            )
        active = state.revealing().nonzero().squeeze(1).to(state.mask.device)
        masks = torch.maximum(state.mask, state.candidates.masks.to(state.mask)[active])
        loss = map_predictions(
            state.classifier,
            state.image,
            masks,
            lambda p: target_cross_entropy(p, truth, target),
            state.memory_budget,
        )[0]
        return int(active[torch.argmin(loss)])


POLICIES: dict[str, type] = {
    "boed": BoedPolicy,
    "random": RandomPolicy,
    "raster": RasterPolicy,
    "oracle": OraclePolicy,
    "oracle-entropy": EntropyOraclePolicy,
}


def get_policy(name: str) -> Policy:
    """Build the policy called ``name``; the error lists the valid names."""
    key = name.strip().lower()
    if key not in POLICIES:
        raise BoedError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    return POLICIES[key]()


def parse_policies(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"boed,random"`` -> ``("boed", "random")``: validated, de-duplicated, order kept."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for name in names:
        key = name.strip().lower()
        if not key:
            continue
        get_policy(key)
        if key not in out:
            out.append(key)
    if not out:
        raise BoedError(f"no policy given; valid policies: {', '.join(POLICIES)}")
    return tuple(out)


@dataclass(frozen=True)
class StoppingRule:
    """Optional early stop (beyond the paper): spend scans only where they are needed.

    A session stops before its next scan once the classifier's target entropy is below
    ``entropy_below`` (nats), or, for policies that estimate it, once the best EIG is below
    ``eig_below`` (nats). ``None`` disables a criterion.
    """

    entropy_below: float | None = None
    eig_below: float | None = None

    @property
    def enabled(self) -> bool:
        return self.entropy_below is not None or self.eig_below is not None

    def stop_on_entropy(self, entropy: float) -> bool:
        return self.entropy_below is not None and entropy < self.entropy_below

    def stop_on_eig(self, eig: torch.Tensor | None) -> bool:
        return self.eig_below is not None and eig is not None and float(eig.max()) < self.eig_below
