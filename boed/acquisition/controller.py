"""The BOED controller for real use: propose where to scan, be told what the scan showed.

A :class:`Controller` holds what has been *observed* (the patches it was given and where) and
never a hidden image, so it can drive a real scanner: ::

    controller = Controller(sampler, classifier, candidates, target="any", n_samples=10, seed=0)
    while True:
        proposal = controller.propose()            # completions, EIG map (Eq. 17), its error
        if rule.should_stop(proposal.entropy, proposal.eig):
            break
        patch = scanner.acquire(proposal.location)  # the outside world takes the exposure
        controller.observe(proposal.location, patch)

Eq. 17 of Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models"
(2021): ``EIG(c) = H[g(v | x*m, m)] - sum_n w_n H[g(v | I_n * m_c, m_c)]`` over completions
``I_n`` drawn from the sampler given the observation; the proposal is its argmax (their
footnote 6). Beyond the paper: its Monte Carlo standard error, and k locations per step
(:func:`greedy_scans`).

The simulation drives the same controllers: ``boed.acquisition.ScanEnv`` keeps one per episode,
reveals the patches of its hidden images through :meth:`Controller.observe` and makes the
decisions of all its episodes at once with :func:`decide_batch` (sampler draws per episode, with
the episode's own generator; classifier calls batched across the episodes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from boed.eig import (
    DEFAULT_MEMORY_BUDGET,
    check_finite,
    eig_standard_error,
    expected_information_gain_batch,
    normalised_weights,
    predict_checked,
    resolve_target,
    target_entropy,
)
from boed.errors import BoedError
from boed.protocols import Completions

if TYPE_CHECKING:
    from boed.eig import Target
    from boed.protocols import Classifier, Sampler
    from boed.scanner import CandidateGrid
    from boed.session import PriorDecision

SAMPLER_BATCHING = ("per-episode", "joint")


@dataclass(frozen=True)
class Decision:
    """The EIG estimate of one decision (before any choice).

    Attributes:
        completions: ``Completions`` images ``(N, 1, 1, H, W)``, log-weights ``(N, 1)`` | None.
        eig: ``(K,)`` float64 EIG map.
        ig: ``(N, K)`` float64 information gain per completion.
        stderr: ``(K,)`` float64 Monte Carlo standard error of ``eig``.
        probs: ``(1, L)`` classifier probabilities on the current observation.
        shared: True when it is the run's shared first decision (nothing observed).
    """

    completions: Completions
    eig: torch.Tensor
    ig: torch.Tensor
    stderr: torch.Tensor
    probs: torch.Tensor
    shared: bool = False


@dataclass(frozen=True)
class Proposal:
    """What :meth:`Controller.propose` returns: where to scan next and why.

    Attributes:
        location: ``(row, col)`` top-left pixel of the first proposed scan.
        candidate: its index into the candidate grid.
        eig: ``(K,)`` float64 EIG map (nats) of the decision (the first scan's).
        stderr: ``(K,)`` float64 Monte Carlo standard error of ``eig`` (NaN for N = 1).
        entropy: the target's entropy (nats) on the current observation.
        probs: ``(L,)`` classifier probabilities on the current observation.
        locations, candidates_chosen: the k scans of the step (``scans_per_step``), in the order
            chosen; the first is ``location``.
        joint_eig: for j = 1..k, the EIG of observing the first j scans together.
        maps: for j = 1..k, the EIG map the j-th scan was chosen from (conditional on the
            earlier ones being observed in every completion); ``maps[0]`` is ``eig``.
        completions: the completions (``keep_completions=True``), else None.
        ig: ``(N, K)`` information gain per completion (``keep_completions=True``), else None.
    """

    location: tuple[int, int]
    candidate: int
    eig: torch.Tensor
    stderr: torch.Tensor
    entropy: float
    probs: torch.Tensor
    locations: tuple[tuple[int, int], ...]
    candidates_chosen: tuple[int, ...]
    joint_eig: tuple[float, ...]
    maps: tuple[torch.Tensor, ...]
    completions: Completions | None = None
    ig: torch.Tensor | None = None

    @property
    def best_eig(self) -> float:
        """The EIG of the first proposed scan (nats)."""
        return float(self.eig[self.candidate])


class Controller:
    """Greedy one-step BOED for one acquisition: :meth:`propose`, then :meth:`observe`.

    Args:
        sampler: draws completions of the observation (``boed.protocols.Sampler``).
        classifier: ``g(v | x*m, m)`` (``boed.protocols.Classifier``).
        candidates: the candidate scan locations (``boed.scanner.CandidateGrid``).
        target: ``"any"``, ``"all"`` or a label name (checked against the classifier's labels).
        n_samples: ``N`` completions per decision.
        generator, seed: the randomness of the sampler draws (a generator, or a seed for one).
        scans_per_step: k locations per proposal (:func:`greedy_scans`).
        memory_budget: bytes of classifier input per chunk.
        keep_completions: keep the completions and per-completion IG maps in each proposal.
        prior: the first decision (nothing observed) computed once and shared
            (``boed.session.prior_decision``), or a callable returning it or None.
        sampler_batching: see :func:`decide_batch` (for the environment's batches).

    The controller keeps only what it was given: ``observed`` and ``mask`` ``(1, 1, S, S)``
    and the locations scanned; a patch is written where :meth:`observe` is told it was taken.
    """

    def __init__(
        self,
        sampler: Sampler | None,
        classifier: Classifier,
        candidates: CandidateGrid,
        target: str | Target = "any",
        n_samples: int = 10,
        *,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        scans_per_step: int = 1,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        keep_completions: bool = False,
        prior: PriorDecision | Callable[[], PriorDecision | None] | None = None,
        device: torch.device | str | None = None,
    ):
        if int(n_samples) < 1:
            raise BoedError(f"n_samples must be at least 1, got {n_samples}")
        if not 1 <= int(scans_per_step) <= len(candidates):
            raise BoedError(
                f"scans per step must be between 1 and the {len(candidates)} candidates, got {scans_per_step}"
            )
        if int(classifier.image_size) != candidates.image_size:
            raise BoedError(
                f"the classifier takes {classifier.image_size} px images, the candidates are for "
                f"{candidates.image_size} px"
            )
        if sampler is not None and int(sampler.image_size) != candidates.image_size:
            raise BoedError(
                f"the sampler takes {sampler.image_size} px images, the candidates are for "
                f"{candidates.image_size} px"
            )
        self.sampler, self.classifier, self.candidates = sampler, classifier, candidates
        self.target = resolve_target(target, list(classifier.labels))
        self.n_samples, self.scans_per_step = int(n_samples), int(scans_per_step)
        self.memory_budget, self.keep_completions, self.prior = int(memory_budget), keep_completions, prior
        self.device = torch.device(device if device is not None else getattr(classifier, "device", "cpu"))
        if generator is None and seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.generator = generator
        self.reset()

    # ------------------------------------------------------------------ what has been observed
    def reset(self) -> None:
        """Forget every observation (a new acquisition)."""
        size = self.candidates.image_size
        self.observed = torch.zeros(1, 1, size, size, device=self.device)
        self.mask = torch.zeros(1, 1, size, size, device=self.device)
        self.scanned: list[int | None] = []
        self.locations: list[tuple[int, int]] = []
        self._probs: torch.Tensor | None = None

    def observe(self, location: Sequence[int], patch: Any) -> None:
        """Record that the scan at ``location`` ``(row, col)`` returned ``patch`` ``(p, p)``.

        ``patch`` (a tensor, numpy array or nested list; ``(p, p)``, ``(1, p, p)`` or
        ``(1, 1, p, p)``) holds the pixels in [0, 1] (MONOCHROME2) of the ``p x p`` field whose
        top-left pixel is ``location``. Raises :class:`BoedError` for a location outside the image,
        a patch of another size, or non-finite or out-of-range pixels; nothing is recorded then.
        """
        row, col = _location(location, self.candidates)
        p = self.candidates.patch_size
        values = torch.as_tensor(patch, dtype=torch.float32).to(self.device)
        if tuple(values.shape) not in ((p, p), (1, p, p), (1, 1, p, p)):
            raise BoedError(
                f"the patch at {row, col} has shape {tuple(values.shape)}; the scans are {p} x {p}"
            )
        values = values.reshape(p, p)
        check_finite(values, f"the patch at {row, col} has non-finite pixels")
        if float(values.min()) < 0 or float(values.max()) > 1:
            raise BoedError(
                f"the patch at {row, col} has pixels outside [0, 1] ({float(values.min()):.3g} to "
                f"{float(values.max()):.3g}); give intensities normalised like the training images"
            )
        self.observed[0, 0, row : row + p, col : col + p] = values
        self.mask[0, 0, row : row + p, col : col + p] = 1.0
        self.scanned.append(self.candidates.index_of((row, col)))
        self.locations.append((row, col))
        self._probs = None

    def set_observation(self, observed: torch.Tensor, mask: torch.Tensor) -> None:
        """Replace the state by ``observed`` and ``mask`` (``(S, S)``, ``(1, S, S)`` or ``(1, 1, S, S)``;
        mask values in {0, 1}); the observation is taken where the mask is 1 (``observed * mask``)."""
        size = self.candidates.image_size
        observed, mask = _image(observed, size, "observed"), _image(mask, size, "mask")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise BoedError("the mask must hold only 0 (not seen) and 1 (seen)")
        check_finite(observed * mask, "the observation has non-finite pixels")
        self.observed, self.mask = (observed * mask).to(self.device), mask.to(self.device)
        self.scanned, self.locations, self._probs = [], [], None

    @property
    def probs(self) -> torch.Tensor:
        """``(1, L)`` classifier probabilities on the current observation (cached)."""
        if self._probs is None:
            self._probs = predict_checked(self.classifier, self.observed, self.mask)
        return self._probs

    @property
    def entropy(self) -> float:
        """The target's entropy (nats) on the current observation."""
        return float(target_entropy(self.probs, self.target)[0])

    # ------------------------------------------------------------------ deciding
    def decide(self) -> Decision:
        """The EIG map of the current observation (no choice)."""
        return decide_batch([self])[0]

    def propose(self, observed: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> Proposal:
        """Where to scan next: the argmax of the EIG map (k of them with ``scans_per_step``).

        With ``observed`` and ``mask`` the state is first replaced by them
        (:meth:`set_observation`); without, the patches given to :meth:`observe` are used.
        Candidates that reveal nothing new are proposed only when none does.
        """
        if (observed is None) != (mask is None):
            raise BoedError("propose takes both observed and mask, or neither")
        if observed is not None:
            self.set_observation(observed, mask)
        return propose_batch([self])[0]


def _location(location: Sequence[int], candidates: CandidateGrid) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in location)
    except (TypeError, ValueError):
        raise BoedError(f"a scan location is (row, col), got {location!r}") from None
    top = candidates.image_size - candidates.patch_size
    if not (0 <= row <= top and 0 <= col <= top):
        raise BoedError(f"scan location {row, col} is outside [0, {top}] x [0, {top}] (top-left pixels)")
    return row, col


def _image(t: Any, size: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    while t.dim() < 4:
        t = t[None]
    if t.shape != (1, 1, size, size):
        raise BoedError(f"{what} must be one {size} x {size} image, got shape {tuple(t.shape)}")
    return t


# ---------------------------------------------------------------------- batched over controllers
def _shared(controllers: Sequence[Controller]) -> Controller:
    first = controllers[0]
    for c in controllers[1:]:
        if (c.classifier, c.sampler, c.candidates, c.target, c.n_samples) != (
            first.classifier,
            first.sampler,
            first.candidates,
            first.target,
            first.n_samples,
        ):
            raise BoedError(
                "controllers decided together must share sampler, classifier, candidates, target and N"
            )
    return first


def predict_batch(controllers: Sequence[Controller]) -> torch.Tensor:
    """``(B, L)`` probabilities of every controller's observation, one classifier call for those
    not cached (each controller keeps its row)."""
    if not controllers:
        return torch.empty(0)
    first = _shared(controllers)
    missing = [c for c in controllers if c._probs is None]
    if missing:
        probs = predict_checked(
            first.classifier, torch.cat([c.observed for c in missing]), torch.cat([c.mask for c in missing])
        )
        for i, c in enumerate(missing):
            c._probs = probs[i : i + 1]
    return torch.cat([c._probs for c in controllers])


def _prior_of(controller: Controller) -> PriorDecision | None:
    if controller.prior is None or bool(controller.mask.any()):
        return None
    return controller.prior() if callable(controller.prior) else controller.prior


def decide_batch(controllers: Sequence[Controller], sampler_batching: str = "per-episode") -> list[Decision]:
    """The EIG maps of B controllers' observations, classifier calls batched across them.

    Completions: a controller with nothing observed and a shared ``prior`` uses it; the others
    draw from the sampler. ``sampler_batching``: ``"per-episode"`` (default) calls the sampler
    once per controller with its own generator, so a decision is the same whatever else is in the
    batch (the sampler is ~7 % of a decision's time on the cpu preset, benchmarks/decision.py);
    ``"joint"`` draws for all of them in one call with the first controller's generator
    (faster where the sampler dominates, e.g. on a GPU, but then draws depend on the batch).
    """
    if sampler_batching not in SAMPLER_BATCHING:
        raise BoedError(
            f"unknown sampler batching {sampler_batching!r}; valid: {', '.join(SAMPLER_BATCHING)}"
        )
    first = _shared(controllers)
    probs = predict_batch(controllers)
    priors = [_prior_of(c) for c in controllers]
    todo = [i for i, p in enumerate(priors) if p is None]
    if todo and first.sampler is None:
        raise BoedError("the EIG needs a sampler")
    observed = torch.cat([controllers[i].observed for i in todo]) if todo else None
    mask = torch.cat([controllers[i].mask for i in todo]) if todo else None
    drawn: list[Completions] = []
    if todo and sampler_batching == "joint":
        joint = first.sampler.sample(
            observed, mask, first.n_samples, generator=controllers[todo[0]].generator
        )
        drawn = [_slice(joint, j) for j in range(len(todo))]
    elif todo:
        for i in todo:
            c = controllers[i]
            drawn.append(_one(c.sampler.sample(c.observed, c.mask, c.n_samples, generator=c.generator)))
    out: list[Decision | None] = [None] * len(controllers)
    if todo:
        est = expected_information_gain_batch(
            first.classifier,
            observed,
            mask,
            drawn,
            first.candidates,
            first.target,
            memory_budget=first.memory_budget,
            current_probs=probs[todo],
        )
        for j, i in enumerate(todo):
            out[i] = Decision(drawn[j], est.eig[j], est.ig[j], est.stderr[j], probs[i : i + 1])
    for i, prior in enumerate(priors):
        if prior is not None:
            completions, eig, ig = prior
            lw = None if completions.log_weights is None else completions.log_weights.reshape(-1)
            stderr = eig_standard_error(ig, lw)
            out[i] = Decision(completions, eig, ig, stderr, probs[i : i + 1], shared=True)
    return out  # type: ignore[return-value]


def _one(completions: Completions) -> Completions:
    images = completions.images
    if images.dim() == 4:  # (N, 1, H, W): one image
        images = images[:, None]
    return Completions(images, completions.log_weights, completions.info)


def _slice(completions: Completions, j: int) -> Completions:
    lw, n = completions.log_weights, completions.images.shape[0]

    def part(t: torch.Tensor) -> torch.Tensor:  # info is (N, B, ...) or (B, ...)
        return t[:, j : j + 1] if t.dim() >= 2 and t.shape[0] == n else t[j : j + 1]

    info = None if completions.info is None else {k: part(v) for k, v in completions.info.items()}
    return Completions(completions.images[:, j : j + 1], None if lw is None else lw[:, j : j + 1], info)


def decision_diagnostics(controller: Controller, decision: Decision, candidate: int) -> dict[str, float]:
    """What a decision's EIG estimate rests on, for the step it chose (``boed.store.models.Step``).

    * ``eig_se``: the Monte Carlo standard error of the EIG at ``candidate``;
    * ``ess``: the effective sample size ``1 / Σ w²`` of the normalised completion weights (N for
      an equally weighted sampler);
    * ``target_observed``: the classifier's probability of the target on the observation
      (``decision.probs``; mean over the labels of an ``all`` target);
    * ``target_completions``: the weighted mean of its probability of the target on the N
      completions themselves (one extra classifier call per completion, fully observed).

    Eq. 17 of Harvey et al. (2022) averages the classifier over completions as if they were real
    images: a gap between the last two says the classifier reads the sampler's completions
    differently, which biases the EIG (the report shows the gap per policy and scan).
    """
    images = decision.completions.images[:, 0]  # (N, 1, H, W)
    n = len(images)
    w = normalised_weights(decision.completions.log_weights, n, images.device)
    # a diagnostic: non-finite probabilities here leave target_completions NaN (stored as null);
    # the decision itself refuses them where they matter (the EIG's own classifier calls)
    probs = controller.classifier.predict(images, torch.ones_like(images))  # (N, L)
    idx = list(controller.target.indices)
    on_completions = (w[:, None] * probs[:, idx].double()).sum(0).mean()
    return {
        "eig_se": float(decision.stderr[candidate]),
        "ess": float(1.0 / (w**2).sum()),
        "target_observed": float(decision.probs[0, idx].double().mean()),
        "target_completions": float(on_completions),
    }


def conditional_eig_batch(
    controllers: Sequence[Controller], decisions: Sequence[Decision], given: torch.Tensor
) -> torch.Tensor:
    """``(B, K)`` EIG of observing the scans in ``given`` ``(B, 1, H, W)`` and each candidate
    together, every completion of each decision revealing both (k scans per step)."""
    first = _shared(controllers)
    return expected_information_gain_batch(
        first.classifier,
        torch.cat([c.observed for c in controllers]),
        torch.cat([c.mask for c in controllers]),
        [d.completions for d in decisions],
        first.candidates,
        first.target,
        memory_budget=first.memory_budget,
        current_probs=torch.cat([d.probs for d in decisions]),
        given=given,
    ).eig


def greedy_scans(
    choose: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    mask: torch.Tensor,
    candidates: CandidateGrid,
    k: int,
    first_eig: torch.Tensor | None,
    conditional_eig: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Choose k scans per episode greedily, each conditional on the earlier ones (beyond the paper).

    The j-th scan is chosen by ``choose(mask_j, eig_j)`` where ``mask_j`` is the current mask
    ``(B, 1, H, W)`` with the j - 1 scans chosen before it added (so a policy skips what they
    cover), and, for EIG policies, ``eig_j = conditional_eig(given_j)`` ``(B, K)``: the EIG of the
    earlier choices and each candidate observed together in every completion (``eig_1`` =
    ``first_eig``). For BOED this greedily maximises the estimated joint information of the set,
    which for k = 2 is never below that of the two best single-scan EIGs (both share the best
    first scan, and the second is the best partner of it); the submodularity-style guarantee of
    greedy selection does not hold in general for EIG, so larger k are compared in
    benchmarks/scans_per_step.py.

    Returns ``(chosen (B, k) long, maps [k x (B, K) | None])``.
    """
    b_count = mask.shape[0]
    chosen = torch.empty(b_count, k, dtype=torch.long)
    maps: list[torch.Tensor | None] = []
    given = torch.zeros_like(mask)
    cand = candidates.masks.to(mask)
    for j in range(k):
        eig = first_eig if j == 0 else (conditional_eig(given) if conditional_eig is not None else None)
        picks = choose(torch.maximum(mask, given), eig).reshape(b_count)
        chosen[:, j] = picks
        maps.append(eig)
        given = torch.maximum(given, cand[picks.to(cand.device)])
    return chosen, maps


def propose_batch(controllers: Sequence[Controller], sampler_batching: str = "per-episode") -> list[Proposal]:
    """:meth:`Controller.propose` for B controllers at once (EIG argmax, k scans per step)."""
    from boed.policies import BatchState, BoedPolicy

    first = _shared(controllers)
    decisions = decide_batch(controllers, sampler_batching)
    eig = torch.stack([d.eig for d in decisions])
    policy = BoedPolicy()
    observed = torch.cat([c.observed for c in controllers])

    def choose(mask_j: torch.Tensor, eig_j: torch.Tensor | None) -> torch.Tensor:
        state = BatchState(
            step=0,
            observed=observed,
            mask=mask_j,
            candidates=first.candidates,
            scanned=[[s for s in c.scanned if s is not None] for c in controllers],
            generators=[c.generator for c in controllers],
            eig=eig_j,
        )
        return policy.choose_batch(state)

    chosen, maps = greedy_scans(
        choose,
        torch.cat([c.mask for c in controllers]),
        first.candidates,
        first.scans_per_step,
        eig,
        lambda given: conditional_eig_batch(controllers, decisions, given),
    )
    out = []
    for b, (c, d) in enumerate(zip(controllers, decisions, strict=True)):
        picks = [int(v) for v in chosen[b]]
        maps_b = tuple(m[b] for m in maps)
        out.append(
            Proposal(
                location=first.candidates.location(picks[0]),
                candidate=picks[0],
                eig=d.eig,
                stderr=d.stderr,
                entropy=float(target_entropy(d.probs, c.target)[0]),
                probs=d.probs[0],
                locations=tuple(first.candidates.location(p) for p in picks),
                candidates_chosen=tuple(picks),
                joint_eig=tuple(float(m[p]) for m, p in zip(maps_b, picks, strict=True)),
                maps=maps_b,
                completions=d.completions if c.keep_completions else None,
                ig=d.ig if c.keep_completions else None,
            )
        )
    return out
