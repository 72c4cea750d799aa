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

:func:`run_session` is the scan environment (``boed.acquisition.ScanEnv``) with one episode:
the decisions are made by a ``boed.acquisition.Controller`` that is handed only the patches the
scanner reveals, the code a real acquisition runs (docs/acquisition.md).

Only a policy that declares ``needs_truth`` (the oracles) is handed the hidden image and labels.
Every model output is checked: non-finite probabilities, completions or EIG values fail the
session with a :class:`~boed.errors.BoedError` naming the step, instead of being logged as a
result (a NaN EIG map would otherwise pick candidate 0 and the session end ``done``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from boed.eig import DEFAULT_MEMORY_BUDGET, check_finite, expected_information_gain, resolve_target
from boed.errors import BoedError
from boed.policies import StoppingRule
from boed.scanner import CandidateGrid

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
    # the decision's eig_se, ess, target_observed, target_completions (decision_diagnostics);
    # None where no EIG was estimated (step 0, policies without one, the 2nd..kth scan of a step)
    diagnostics: dict[str, float] | None = None


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
    chunk: int | None = None,
) -> PriorDecision:
    """The EIG of every candidate before anything is seen (identical in law for every image).

    Computed once per run, so it can rest on many more completions than the later decisions
    (``boed simulate --first-completions``). ``chunk``: draw the ``n_samples`` completions in
    sampler calls of at most this many (one generator, in turn), so the sampler's memory stays that
    of one ordinary decision; None = one call. The chunks' completions (and log-weights, each
    call's as the sampler gives them) are concatenated; per-call ``info`` is dropped (the EIG
    never reads it).
    """
    size = candidates.image_size
    device = getattr(classifier, "device", "cpu")
    observed = torch.zeros(1, 1, size, size, device=device)
    with at_step(1):
        completions = _draw_in_chunks(sampler, observed, n_samples, generator, chunk)
        eig, ig = expected_information_gain(
            classifier, observed, observed, completions, candidates, target, memory_budget=memory_budget
        )
    return PriorDecision(completions, eig, ig)


def _draw_in_chunks(sampler, observed, n: int, generator, chunk: int | None) -> Completions:
    from boed.protocols import Completions

    if chunk is None or chunk >= n:
        return sampler.sample(observed, observed, n, generator=generator)
    parts = [
        sampler.sample(observed, observed, min(chunk, n - start), generator=generator)
        for start in range(0, n, chunk)
    ]
    images = torch.cat([p.images if p.images.dim() == 5 else p.images[:, None] for p in parts])
    weights = [p.log_weights for p in parts]
    log_weights = None if any(w is None for w in weights) else torch.cat([w.reshape(-1, 1) for w in weights])
    return Completions(images, log_weights, None)


@contextmanager
def at_step(step: int) -> Iterator[None]:
    """Prefix a :class:`BoedError` raised inside with ``step N:`` (which decision failed), once."""
    try:
        yield
    except BoedError as exc:
        if str(exc).startswith("step "):  # already says which step (the shared first decision)
            raise
        raise BoedError(f"step {step}: {exc}") from exc


def eig_grid(eig: torch.Tensor, candidates: CandidateGrid) -> list[list[float]]:
    """An EIG map ``(K,)`` as the nested list the store keeps: ``(G, G)``, or ``(1, K)`` off a grid."""
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
    scans_per_step: int = 1,
) -> SessionResult:
    """Run one session on the hidden ``image`` ``(1, 1, S, S)`` (or ``(1, S, S)``).

    The scan environment with one episode (``boed.acquisition.ScanEnv`` and
    ``boed.acquisition.run_episodes``): its :class:`~boed.acquisition.Controller` is given the
    patches of ``image`` where the policy scans, as a real scanner would give them, so a
    simulated session and a real acquisition run the same code.

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
        scans_per_step: k scans chosen per decision, each conditional on the earlier ones
            (``boed.acquisition.greedy_scans``); every scan is logged as its own step.
    """
    from boed.acquisition.env import ScanEnv, run_episodes

    if image.dim() == 3:
        image = image[None]
    if policy.needs_eig and sampler is None:
        raise BoedError(f"policy {policy.name!r} needs a sampler")
    resolve_target(target, list(classifier.labels))
    check_finite(image, "the image has non-finite pixels")
    env = ScanEnv(
        classifier,
        candidates,
        num_envs=1,
        sampler=sampler,
        n_samples=n_samples,
        target=target,
        scans=scans,
        memory_budget=memory_budget,
        prior=prior_decision if policy.needs_eig else None,
    )
    options = {
        "images": image,
        "labels": None if labels is None else labels.reshape(1, -1),
        "generators": [generator],
    }
    (result,) = run_episodes(
        env,
        policy,
        scans,
        reset_options=options,
        scans_per_step=scans_per_step,
        stopping=stopping,
        on_step=None if on_step is None else (lambda _b, record: on_step(record)),
        on_array=None if on_array is None else (lambda _b, step, name, array: on_array(step, name, array)),
        figure_episodes=(0,),
        figure_completions=figure_completions,
    )
    return result


def save_figure_arrays(
    on_array, step, observed, mask, observed_after, completions, ig, eig, candidates, choice, k
):
    """The arrays of one row of a Fig. 6-style figure (float16 images, float32 maps): the view
    ``observed``/``mask`` ``(1, 1, S, S)`` before the scan, ``k`` of its completions and IG maps,
    the mean completion, the EIG map, the chosen location and the view after the step."""
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
    on_array(step, "observed_after", observed_after[0, 0].cpu().numpy().astype(np.float16))
