"""One scan session: choose, scan, predict, log; repeated for a number of scans.

The loop of docs/ARCHITECTURE.md (and §5 of Harvey, Naderiparizi & Wood, "Image Completion via
Inference in Deep Generative Models", 2021)::

    m = 0;  p_0 = g(v | x*m, m)                               step 0, before any scan
    for t = 1..T:
        (policies that need it) I_1..I_N, w <- sampler(x*m, m); EIG map (Eq. 17)
        c_t <- policy(state);  m <- m OR patch(c_t);  p_t = g(v | x*m, m)

Each step is handed to ``on_step`` (the simulation writes it to the store) as a
:class:`StepRecord`; ``on_array`` receives the arrays of a Fig. 6-style visualisation when
``figure_completions > 0``.

Only a policy that declares ``needs_truth`` (the oracles) is handed the hidden image and labels.
Every model output is checked: non-finite probabilities, completions or EIG values fail the
session with a :class:`~boed.errors.BoedError` naming the step, instead of being logged as a
result (a NaN EIG map would otherwise pick candidate 0 and the session end ``done``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from boed.eig import (
    DEFAULT_MEMORY_BUDGET,
    check_finite,
    expected_information_gain,
    predict_checked,
    resolve_target,
    target_entropy,
)
from boed.errors import BoedError
from boed.policies import DecisionState, StoppingRule, Truth
from boed.scanner import CandidateGrid, Scanner

if TYPE_CHECKING:
    from boed.eig import Target
    from boed.protocols import Classifier, Completions, Policy, Sampler


@dataclass(frozen=True)
class StepRecord:
    """One step of a session, as logged (step 0: the prediction before any scan)."""

    step: int
    location: tuple[int, int] | None
    candidate: int | None
    eig: float | None
    eig_map: list[list[float]] | None
    probs: list[float]
    seconds: float


@dataclass
class SessionResult:
    """What a session did: its steps and whether the stopping rule ended it early."""

    steps: list[StepRecord] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def scans_used(self) -> int:
        return len(self.steps) - 1

    @property
    def final_probs(self) -> list[float]:
        return self.steps[-1].probs


class PriorDecision(NamedTuple):
    """Completions drawn with nothing observed and their EIG map (shared first decision)."""

    completions: Completions
    eig: torch.Tensor
    ig: torch.Tensor


def prior_decision(
    sampler: Sampler,
    classifier: Classifier,
    candidates: CandidateGrid,
    n_samples: int,
    target: str | Target = "any",
    generator: torch.Generator | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> PriorDecision:
    """The EIG of every candidate before anything is seen (identical in law for every image)."""
    size = candidates.image_size
    device = getattr(classifier, "device", "cpu")
    observed = torch.zeros(1, 1, size, size, device=device)
    with at_step(1):
        completions = sampler.sample(observed, observed, n_samples, generator=generator)
        eig, ig = expected_information_gain(
            classifier, observed, observed, completions, candidates, target, memory_budget=memory_budget
        )
    return PriorDecision(completions, eig, ig)


@contextmanager
def at_step(step: int) -> Iterator[None]:
    """Prefix a :class:`BoedError` raised inside with ``step N:`` (which decision failed), once."""
    try:
        yield
    except BoedError as exc:
        if str(exc).startswith("step "):  # already says which step (the shared first decision)
            raise
        raise BoedError(f"step {step}: {exc}") from exc


def _eig_map(eig: torch.Tensor, candidates: CandidateGrid) -> list[list[float]]:
    values = eig.double().cpu()
    grid = candidates.as_map(values) if candidates.grid else values[None]
    return grid.tolist()


def run_session(
    image: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    classifier: Classifier,
    policy: Policy,
    candidates: CandidateGrid,
    scans: int,
    sampler: Sampler | None = None,
    n_samples: int = 10,
    target: str | Target = "any",
    generator: torch.Generator | None = None,
    stopping: StoppingRule | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    on_step: Callable[[StepRecord], None] | None = None,
    on_array: Callable[[int, str, np.ndarray], None] | None = None,
    figure_completions: int = 0,
    prior_decision: PriorDecision | Callable[[], PriorDecision | None] | None = None,
) -> SessionResult:
    """Run one session on the hidden ``image`` ``(1, 1, S, S)`` (or ``(1, S, S)``).

    Args:
        labels: the true labels ``(L,)`` (handed, with ``image``, only to a policy that declares
            ``needs_truth``: the oracles).
        classifier: ``g`` on partial views.
        policy: chooses each scan (``policy.needs_eig``: the EIG map is estimated first).
        candidates: the candidate grid (its image size must match ``image``).
        scans: the number of scans ``T``.
        sampler: draws completions (needed only by policies that need the EIG).
        n_samples: ``N`` completions per step.
        target: ``"any"``, ``"all"`` or a label name.
        generator: the session's generator (sampler draws, random choices).
        stopping: optional early-stopping rule.
        on_step: called with every :class:`StepRecord` as soon as it is known.
        on_array: ``(step, name, array)`` for the Fig. 6 arrays, when ``figure_completions > 0``.
        figure_completions: how many completions (and their IG maps) to keep per step.
        prior_decision: the first decision's completions and EIG, shared by every session of a
            run (see :func:`prior_decision`): with nothing observed, the posterior is the prior
            for every image, so it is computed once instead of once per session. A callable is
            called only when the first decision is due (so an error in it is reported at step 1,
            after step 0's own checks); it may return None (then the session samples itself).
    """
    if image.dim() == 3:
        image = image[None]
    if policy.needs_eig and sampler is None:
        raise BoedError(f"policy {policy.name!r} needs a sampler")
    tgt = resolve_target(target, list(classifier.labels))
    check_finite(image, "the image has non-finite pixels")
    truth = Truth(image, labels) if getattr(policy, "needs_truth", False) else None
    stopping = stopping or StoppingRule()
    scanner = Scanner(image, candidates)
    result = SessionResult()

    def emit(record: StepRecord) -> None:
        result.steps.append(record)
        if on_step is not None:
            on_step(record)

    t0 = time.perf_counter()
    with at_step(0):
        probs = predict_checked(classifier, scanner.observed, scanner.mask)  # (1, L)
    emit(StepRecord(0, None, None, None, None, probs[0].tolist(), time.perf_counter() - t0))

    for step in range(1, scans + 1):
        t0 = time.perf_counter()
        if stopping.stop_on_entropy(float(target_entropy(probs, tgt)[0])):
            result.stopped_early = True
            break
        observed, mask = scanner.observed, scanner.mask
        state = DecisionState(
            step=step,
            observed=observed,
            mask=mask,
            candidates=candidates,
            scanned=list(scanner.scanned),
            generator=generator,
            truth=truth,
            classifier=classifier,
            target=tgt,
            memory_budget=memory_budget,
        )
        ig = completions = None
        with at_step(step):
            prior = None
            if policy.needs_eig and prior_decision is not None and not bool(mask.any()):
                prior = prior_decision() if callable(prior_decision) else prior_decision
            if prior is not None:
                completions, state.eig, ig = prior
            elif policy.needs_eig:
                completions = sampler.sample(observed, mask, n_samples, generator=generator)
                state.eig, ig = expected_information_gain(
                    classifier,
                    observed,
                    mask,
                    completions,
                    candidates,
                    tgt,
                    memory_budget=memory_budget,
                    current_probs=probs,
                )
            if stopping.stop_on_eig(state.eig):
                result.stopped_early = True
                break
            choice = policy.choose(state)
            scanner.scan(choice)
            probs = predict_checked(classifier, scanner.observed, scanner.mask)
        eig_value = float(state.eig[choice]) if state.eig is not None else None
        eig_map = _eig_map(state.eig, candidates) if state.eig is not None else None
        seconds = time.perf_counter() - t0
        if on_array is not None and figure_completions > 0 and completions is not None:
            _save_figure_arrays(
                on_array,
                step,
                observed,
                mask,
                scanner,
                completions,
                ig,
                state.eig,
                candidates,
                choice,
                figure_completions,
            )
        emit(
            StepRecord(
                step, candidates.location(choice), choice, eig_value, eig_map, probs[0].tolist(), seconds
            )
        )
    return result


def _save_figure_arrays(on_array, step, observed, mask, scanner, completions, ig, eig, candidates, choice, k):
    """The arrays of one row of a Fig. 6-style figure (float16 images, float32 maps)."""
    images = completions.images[:, 0, 0] if completions.images.dim() == 5 else completions.images[:, 0]
    k = min(k, images.shape[0])

    def as_map(values: torch.Tensor) -> np.ndarray:
        values = values.float().cpu()
        return (candidates.as_map(values) if candidates.grid else values).numpy()

    on_array(step, "observed", observed[0, 0].cpu().numpy().astype(np.float16))
    on_array(step, "mask", mask[0, 0].cpu().numpy().astype(np.float16))
    on_array(step, "completions", images[:k].cpu().numpy().astype(np.float16))
    on_array(step, "mean_completion", images.mean(0).cpu().numpy().astype(np.float16))
    on_array(step, "ig", as_map(ig[:k]))
    on_array(step, "eig", as_map(eig))
    on_array(step, "location", np.asarray(candidates.location(choice), dtype=np.float32))
    on_array(step, "observed_after", scanner.observed[0, 0].cpu().numpy().astype(np.float16))
