"""Scan policies: where to scan next, given what has been seen.

- ``boed``: the argmax of the EIG map (Eq. 17 of Harvey, Naderiparizi & Wood, "Image Completion
  via Inference in Deep Generative Models", 2021; maximised, their footnote 6).
- ``random``: a uniformly random candidate among those that reveal something new.
- ``random-disjoint``: a uniformly random candidate among those overlapping nothing seen (the
  non-overlapping random baseline of the fraction observed), else among those revealing most.
- ``boed-lcb``: the maximum of ``EIG − z · SE`` (the estimate's Monte Carlo standard error),
  a noise-averse BOED to compare with ``boed`` (docs/acquisition.md, "A sound first decision").
- ``amortized`` (beyond the paper): the argmax of a value network's predicted EIG map, one
  forward pass instead of the exact estimate (``boed.amortized``, docs/amortized.md).
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

One interface over a batch: every policy implements ``choose_batch(state: BatchState) -> (B,)``
for the ``B`` parallel episodes of the scan environment (``boed.acquisition.ScanEnv``): BOED takes
the row-wise argmax, the oracles score the candidate views of all B true images in one chunked
stream of classifier calls, random and raster go episode by episode (each with its own
generator, so an episode chooses the same whatever else is in the batch). ``choose(state)`` on
one :class:`DecisionState` is the same decision for a batch of one. :func:`choose_batch` also
serves a policy that implements only ``choose`` (one episode at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from boed.amortized.policy import AmortizedPolicy
from boed.eig import _EPS, DEFAULT_MEMORY_BUDGET, Target, map_views, target_entropy
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
    eig_se: torch.Tensor | None = None  # (K,) Monte Carlo standard error of ``eig`` where known

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


@dataclass
class BatchState:
    """What a policy may look at when choosing the next scan of ``B`` episodes at once.

    Attributes:
        step: the number of the scan being chosen (1 = the first); the same for every episode.
        observed, mask: ``(B, 1, H, W)`` current observations and masks. For the j-th scan of a
            step of k (``--scans-per-step``), ``mask`` also covers the j - 1 scans chosen
            before it in the step (not observed yet: ``observed`` is the view before the step).
        candidates: the candidate grid (shared).
        scanned: per episode, the candidate indices already scanned.
        generators: per episode, its random generator (or None).
        eig: ``(B, K)`` EIG maps when the policy ``needs_eig`` (for the j-th scan of a step: the
            EIG of the earlier choices and each candidate together), else None.
        eig_se: ``(B, K)`` Monte Carlo standard errors of ``eig`` where known (the first scan of
            a step), else None.
        truth: per episode, its hidden image and labels when the policy ``needs_truth``, else
            None; read them through :attr:`images` and :meth:`labels`.
        classifier, target, memory_budget: for policies that query the classifier (the oracles).
    """

    step: int
    observed: torch.Tensor
    mask: torch.Tensor
    candidates: CandidateGrid
    scanned: list[list[int]]
    generators: list[torch.Generator | None]
    eig: torch.Tensor | None = None
    truth: list[Truth] | None = None
    classifier: Classifier | None = None
    target: Target | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    eig_se: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @classmethod
    def of(cls, states: Sequence[DecisionState]) -> BatchState:
        """A batch of one-episode states (same step, candidates and classifier)."""
        first = states[0]
        truths = [s.truth for s in states]
        return cls(
            step=first.step,
            observed=torch.cat([s.observed for s in states]),
            mask=torch.cat([s.mask for s in states]),
            candidates=first.candidates,
            scanned=[list(s.scanned) for s in states],
            generators=[s.generator for s in states],
            eig=None if first.eig is None else torch.stack([s.eig for s in states]),
            eig_se=None if any(s.eig_se is None for s in states) else torch.stack([s.eig_se for s in states]),
            truth=None if any(t is None for t in truths) else truths,
            classifier=first.classifier,
            target=first.target,
            memory_budget=first.memory_budget,
        )

    def episode(self, b: int) -> DecisionState:
        """The :class:`DecisionState` of episode ``b`` alone."""
        return DecisionState(
            step=self.step,
            observed=self.observed[b : b + 1],
            mask=self.mask[b : b + 1],
            candidates=self.candidates,
            scanned=list(self.scanned[b]),
            generator=self.generators[b],
            eig=None if self.eig is None else self.eig[b],
            eig_se=None if self.eig_se is None else self.eig_se[b],
            truth=None if self.truth is None else self.truth[b],
            classifier=self.classifier,
            target=self.target,
            memory_budget=self.memory_budget,
        )

    def _truths(self, what: str) -> list[Truth]:
        if self.truth is None:
            raise BoedError(f"the {what} is hidden: only a policy that declares needs_truth receives it")
        return self.truth

    @property
    def images(self) -> torch.Tensor:
        """The hidden images ``(B, 1, H, W)`` (policies with ``needs_truth`` only)."""
        return torch.cat([t.image for t in self._truths("hidden image")])

    def labels(self, b: int) -> torch.Tensor:
        """The true labels ``(L,)`` of episode ``b`` (policies with ``needs_truth`` only)."""
        return self.episode(b).labels if self.truth is not None else self._truths("true labels")[0].labels

    def new_pixels(self) -> torch.Tensor:
        """``(B, K)`` number of unseen pixels each candidate would reveal in each episode."""
        unseen = (self.mask <= 0.5).to(self.candidates.masks)  # (B, 1, H, W)
        cand = self.candidates.masks.to(unseen.device)  # (K, 1, H, W)
        return torch.einsum("bchw,kchw->bk", unseen, cand)

    def revealing(self) -> torch.Tensor:
        """``(B, K)`` bool: candidates revealing something new (a row of all True where none does)."""
        reveals = self.new_pixels() > 0
        return reveals | ~reveals.any(1, keepdim=True)

    def candidate_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The revealing candidates of every episode as views for :func:`~boed.eig.map_views`:
        ``(masks (R, 1, H, W) = m_b OR patch(c), owner (R,) = b, candidate (R,) = c)``."""
        owner, cand = self.revealing().nonzero(as_tuple=True)
        owner, cand = owner.to(self.mask.device), cand.to(self.mask.device)
        masks = torch.maximum(self.mask[owner], self.candidates.masks.to(self.mask)[cand])
        return masks, owner, cand


def _argmin_per_episode(
    values: torch.Tensor, owner: torch.Tensor, cand: torch.Tensor, b_count: int
) -> torch.Tensor:
    """For each episode, the candidate of its smallest value (the first on ties): ``(B,)`` long."""
    out = torch.empty(b_count, dtype=torch.long)
    for b in range(b_count):
        rows = (owner == b).nonzero().squeeze(1)
        out[b] = int(cand[rows[torch.argmin(values[rows])]])
    return out


def choose_batch(policy: Policy, state: BatchState) -> torch.Tensor:
    """``policy``'s choice for every episode of ``state``: ``(B,)`` long; a policy without a
    ``choose_batch`` of its own is asked one episode at a time."""
    if hasattr(policy, "choose_batch"):
        return torch.as_tensor(policy.choose_batch(state), dtype=torch.long).reshape(len(state))
    return torch.tensor([int(policy.choose(state.episode(b))) for b in range(len(state))], dtype=torch.long)


def lower_confidence_bound(eig: torch.Tensor, stderr: torch.Tensor | None, z: float) -> torch.Tensor:
    """``EIG − z · SE`` elementwise (float64), the score :class:`BoedLCBPolicy` maximises; where the
    standard error is unknown (None, or NaN as for N = 1) the EIG itself."""
    eig = eig.double()
    if stderr is None:
        return eig
    se = torch.nan_to_num(stderr.double().to(eig.device), nan=0.0)
    return eig - float(z) * se


class BoedPolicy:
    """Scan where the expected information gain is largest (lowest index on ties)."""

    name = "boed"
    needs_eig = True
    needs_truth = False

    def choose(self, state: DecisionState) -> int:
        return int(self.choose_batch(BatchState.of([state]))[0])

    def score(self, state: BatchState) -> torch.Tensor:
        """``(B, K)`` what the policy maximises: the EIG map."""
        return state.eig.double()

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        if state.eig is None:
            raise BoedError(f"the {self.name} policy needs the EIG map")
        score = self.score(state).masked_fill(~state.revealing().to(state.eig.device), -torch.inf)
        return torch.argmax(score, dim=1).cpu()  # the first maximum of each row


class BoedLCBPolicy(BoedPolicy):
    """BOED robust to Monte Carlo noise: the maximum of the lower confidence bound ``EIG − z · SE``.

    ``SE`` is the estimate's Monte Carlo standard error per candidate (``boed.eig.eig_standard_error``,
    handed over in ``BatchState.eig_se``); ``z`` = :attr:`z` (1: a one-sided 84 % bound). A
    candidate whose large EIG rests on a few completions loses to one that is nearly as good
    and surely so. Where no standard error is known (the 2nd..k-th scan of a step with
    ``--scans-per-step``, N = 1) it is the argmax of the EIG. Measured on the exact toy world
    (benchmarks/first_decision.py, docs/acquisition.md "A sound first decision"): at N = 10 it
    picks the truly best scan *less* often than the plain argmax (0.80 against 0.88 in world A;
    high-EIG candidates are also the high-variance ones) and at N ≥ 20 only 1–2 points more often
    in world B, while more completions help far more; so ``boed`` stays the default and this
    policy is there to compare.
    """

    name = "boed-lcb"
    z = 1.0

    def score(self, state: BatchState) -> torch.Tensor:
        return lower_confidence_bound(state.eig, state.eig_se, self.z)


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

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        # episode by episode: each draws from its own generator, whatever else is in the batch
        return torch.tensor([self.choose(state.episode(b)) for b in range(len(state))], dtype=torch.long)


class RandomDisjointPolicy:
    """A uniformly random candidate among those that overlap nothing seen so far (seeded); once
    none is left, a uniformly random one among those revealing the most new pixels.

    The non-overlapping random baseline: ``random`` wastes pixels on overlapping scans, this one
    observes ``k p²`` pixels after k scans as long as a disjoint candidate exists (on the 64 px
    cpu preset with 16 px scans and a 17 x 17 grid, at least 4 scans always fit).
    """

    name = "random-disjoint"
    needs_eig = False
    needs_truth = False

    def choose(self, state: DecisionState) -> int:
        new = state.new_pixels()
        best = new == new.max()
        choices = best.nonzero().squeeze(1).cpu()
        device = state.generator.device if state.generator is not None else "cpu"
        pick = torch.randint(len(choices), (1,), generator=state.generator, device=device)
        return int(choices[int(pick)])

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        return torch.tensor([self.choose(state.episode(b)) for b in range(len(state))], dtype=torch.long)


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

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        return torch.tensor([self.choose(state.episode(b)) for b in range(len(state))], dtype=torch.long)


class EntropyOraclePolicy:
    """Greedy one-step on the true image: ``argmin_c H[g(v | x * m_c, m_c)]`` (bounds the criterion)."""

    name = "oracle-entropy"
    needs_eig = False
    needs_truth = True

    def choose(self, state: DecisionState) -> int:
        return int(self.choose_batch(BatchState.of([state]))[0])

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        if state.classifier is None or state.target is None:
            raise BoedError("the oracle-entropy policy needs the classifier and the target")
        target = state.target
        masks, owner, cand = state.candidate_views()
        entropy = map_views(
            state.classifier,
            state.images,
            masks,
            owner,
            lambda p: target_entropy(p, target),
            state.memory_budget,
        )
        return _argmin_per_episode(entropy, owner.cpu(), cand.cpu(), len(state))


class OraclePolicy:
    """Greedy one-step on the true image and labels: ``argmin_c CE(y, g(v | x * m_c, m_c))``."""

    name = "oracle"
    needs_eig = False
    needs_truth = True

    def choose(self, state: DecisionState) -> int:
        return int(self.choose_batch(BatchState.of([state]))[0])

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        if state.classifier is None or state.target is None:
            raise BoedError("the oracle policy needs the classifier and the target")
        target = state.target
        truths = [state.labels(b).reshape(-1) for b in range(len(state))]
        for truth in truths:
            if bool(torch.isnan(truth[list(target.indices)]).any()):
                # with unknown labels every candidate scores 0 and the argmin is candidate 0: a
                # raster scan reported as an upper bound; refuse instead
                raise BoedError(
                    f"the oracle policy needs the true {target.title} label(s), "
                    f"unknown (NaN) for this image; leave the oracle out or use labelled images"
                )
        masks, owner, cand = state.candidate_views()
        truth_rows = torch.stack(truths).double().to(masks.device)[owner]  # (R, L)

        return _argmin_per_episode(
            _map_rows(state, masks, owner, truth_rows, target), owner.cpu(), cand.cpu(), len(state)
        )


def _map_rows(state: BatchState, masks, owner, truth_rows, target: Target) -> torch.Tensor:
    """``CE(y_b, g(v | x_b * m_r, m_r))`` for every view ``r`` of episode ``owner_r``: ``(R,)``,
    in chunks of views (each chunk's truths are those of its views' episodes)."""
    per_view = 2 * state.mask[0].numel() * state.mask.element_size()
    chunk = max(1, int(state.memory_budget) // per_view)
    out = []
    images = state.images
    for start in range(0, masks.shape[0], chunk):
        rows = slice(start, start + chunk)
        truth = truth_rows[rows]
        out.append(
            map_views(
                state.classifier,
                images,
                masks[rows],
                owner[rows],
                lambda p, truth=truth: _cross_entropy_rows(p, truth, target),
                state.memory_budget,
            )
        )
    return torch.cat(out)


def _cross_entropy_rows(probs: torch.Tensor, truth: torch.Tensor, target: Target) -> torch.Tensor:
    """:func:`~boed.eig.target_cross_entropy` with one row of true labels ``(R, L)`` per row of
    ``probs`` ``(R, L)``: ``(R,)`` float64 (the same elementwise terms, so the same values)."""
    idx = list(target.indices)
    p = probs[..., idx].double().clamp(_EPS, 1 - _EPS)
    y = truth[:, idx].double().to(p.device)
    known = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    return (-(y * p.log() + (1 - y) * (1 - p).log()) * known).sum(-1)


POLICIES: dict[str, type] = {
    "boed": BoedPolicy,
    "random": RandomPolicy,
    "raster": RasterPolicy,
    "oracle": OraclePolicy,
    "oracle-entropy": EntropyOraclePolicy,
    "random-disjoint": RandomDisjointPolicy,
    "boed-lcb": BoedLCBPolicy,
    "amortized": AmortizedPolicy,
}


def get_policy(name: str, **options: object) -> Policy:
    """Build the policy called ``name``; the error lists the valid names. ``options`` (e.g.
    ``amortized_checkpoint``) go to the policies that name them in their ``options``; the others
    ignore them."""
    key = name.strip().lower()
    if key not in POLICIES:
        raise BoedError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    cls = POLICIES[key]
    return cls(**{k: v for k, v in options.items() if k in getattr(cls, "options", ())})


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

    def should_stop(self, entropy: float, eig: torch.Tensor | None = None) -> bool:
        """Either criterion, for an external loop: ``rule.should_stop(proposal.entropy, proposal.eig)``."""
        return self.stop_on_entropy(float(entropy)) or self.stop_on_eig(eig)
