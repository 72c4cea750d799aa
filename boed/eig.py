"""Expected information gain (EIG) of every candidate scan location, batched.

Eq. 17 of Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models"
(2021, §5; the greedy one-step design of Harvey et al. 2019, "Near-optimal glimpse sequences").
With the current observation ``x * m``, completions ``I_1..I_N`` drawn from (an approximation of)
``p(I | x * m)`` with normalised weights ``w_n`` (``1/N`` for plain samples), a classifier ``g`` on
partial views and a candidate patch ``c`` with mask ``m_c = m OR patch(c)``:

    IG_n(c) = H[g(v | x * m, m)] - H[g(v | I_n * m_c, m_c)]
    EIG(c)  = sum_n w_n IG_n(c)

The location is chosen where the EIG is largest (the paper's footnote 6: maximised).

``v`` is the *target*, resolved against the classifier's own labels (:func:`resolve_target`):
one of its labels by name (case-insensitive; ``"any"`` is the ``Any`` output: the paper's setting)
or ``"all"`` (the sum of the binary entropies of every label except ``Any``, i.e. the entropy of
the labels treated as independent; for ChestX-ray14 the 14 findings). Entropies are in nats.

The hot path is the (candidates x completions) product of classifier calls: 2,890 at the paper's
17 x 17 grid and N = 10. It is built with broadcasting, deduplicated (candidates whose new masks
coincide share their classifier calls), run in chunks bounded by a memory budget, and candidates
that reveal nothing new get exactly 0 without any classifier call (their completions equal the
current observation, so their IG is 0 by definition). Completions that agree exactly on every
pixel a candidate's view shows give the same classifier input, so they share one call too
(:func:`view_representatives`: a deterministic sampler's N identical completions cost one call
per candidate, not N; a continuous sampler's completions never agree, and cost what they did).
Everything stays on the device of the observation; only the boolean masks visit the CPU to be
de-duplicated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from boed.errors import BoedError

if TYPE_CHECKING:
    from boed.protocols import Classifier, Completions
    from boed.scanner import CandidateGrid

#: bytes of classifier input (masked images + masks) built per chunk by default
DEFAULT_MEMORY_BUDGET = 64 * 2**20
_EPS = 1e-7


ALL = "all"
ANY = "any"


@dataclass(frozen=True)
class Target:
    """The variable ``v`` whose entropy the design reduces.

    Attributes:
        name: the canonical name stored with a run: ``"all"`` or one label in the classifier's
            spelling (``"Any"`` for the target ``any``).
        indices: the classifier outputs whose binary entropies are summed.
        labels: the classifier's names of those outputs (same order as ``indices``).
    """

    name: str
    indices: tuple[int, ...]
    labels: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """How reports name the target: the label, or ``all (N labels)``."""
        if self.name == ALL:
            return f"all ({len(self.indices)} labels)"
        return self.name


def valid_targets(labels: Sequence[str]) -> list[str]:
    """Names accepted by :func:`resolve_target` for a classifier with these ``labels``.

    ``any`` only when the classifier has an ``Any`` output, ``all`` only when it has a label other
    than ``Any``, then every label but ``Any``.
    """
    others = [label for label in labels if label.lower() != ANY]
    return [*([ANY] if len(others) < len(labels) else []), *([ALL] if others else []), *others]


def resolve_target(target: str | Target, labels: Sequence[str]) -> Target:
    """Turn a target name into a :class:`Target` of a classifier with these ``labels``.

    - a label name (case-insensitive; so ``"any"`` is the ``Any`` output when there is one; a
      label literally called ``all`` is chosen over the keyword);
    - ``"all"``: every label except ``Any``.

    ``"any"`` for a classifier without an ``Any`` output is refused rather than derived: the
    probability that at least one label is positive is not a function of the per-label
    marginals the classifier returns (it would need their dependence), so the run would report a
    quantity the classifier never estimated.

    Raises:
        BoedError: an unknown name (the message lists the classifier's valid targets) or a
            classifier without the outputs the target needs.
    """
    if isinstance(target, Target):
        return target
    labels = [str(label) for label in labels]
    key = str(target).strip().lower()
    lowered = [label.lower() for label in labels]
    valid = ", ".join(valid_targets(labels))
    if key in lowered:
        i = lowered.index(key)
        return Target(labels[i], (i,), (labels[i],))
    if key == ALL:
        indices = tuple(i for i, label in enumerate(lowered) if label != ANY)
        if not indices:
            raise BoedError(f"target 'all' needs a label other than Any; the classifier has only {labels[0]}")
        return Target(ALL, indices, tuple(labels[i] for i in indices))
    if key == ANY:
        raise BoedError(
            f"target 'any' needs a classifier with an 'Any' output; this classifier's labels are "
            f"{', '.join(labels)} (valid targets: {valid})"
        )
    raise BoedError(f"unknown target {target!r}; valid targets: {valid}")


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """``-p log p - (1-p) log(1-p)`` in nats, elementwise, computed in float64 (p clamped to (0,1))."""
    p = p.double().clamp(_EPS, 1 - _EPS)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def target_entropy(probs: torch.Tensor, target: Target) -> torch.Tensor:
    """Entropy of the target from classifier probabilities ``(..., L)`` -> ``(...)`` float64."""
    return binary_entropy(probs[..., list(target.indices)]).sum(-1)


def normalised_weights(
    log_weights: torch.Tensor | None, n: int, device: torch.device | None = None
) -> torch.Tensor:
    """``w = softmax(log_weights)`` as float64 ``(N,)`` (uniform ``1/N`` when ``None``)."""
    if log_weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    lw = log_weights.reshape(-1).double()
    if lw.numel() != n:
        raise BoedError(f"{lw.numel()} log-weights for {n} completions")
    if torch.isnan(lw).any() or (lw == torch.inf).any():
        raise BoedError("the sampler returned NaN or +inf log-weights")
    if not torch.isfinite(lw).any():
        raise BoedError("every completion has a non-finite log-weight")
    return torch.softmax(lw, dim=0).to(device)


def check_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``values`` if every entry is finite, else raise :class:`BoedError` naming ``what``.

    A NaN probability or completion must fail the decision: left alone it becomes a NaN EIG map
    whose argmax is candidate 0 and a session recorded as done with null probabilities.
    """
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        kind = "NaN" if bool(torch.isnan(values).any()) else "infinite"
        raise BoedError(f"{what}: {bad} of {values.numel()} values are {kind}")
    return values


def predict_checked(classifier: Classifier, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``classifier.predict`` ``(B, L)``, refusing non-finite probabilities (BoedError)."""
    return check_finite(
        classifier.predict(observed, mask), "the classifier returned non-finite probabilities"
    )


class EIG(NamedTuple):
    """Result of :func:`expected_information_gain`.

    Attributes:
        eig: ``(K,)`` float64 expected information gain per candidate.
        ig: ``(N, K)`` float64 information gain per completion and candidate.
    """

    eig: torch.Tensor
    ig: torch.Tensor


def _single(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != 1:
        raise BoedError(f"{what}: expected one image (1, 1, H, W), got {tuple(t.shape)}")
    return t


def _completion_images(completions: Completions | torch.Tensor, shape: torch.Size) -> torch.Tensor:
    images = completions.images if hasattr(completions, "images") else completions
    if images.dim() == 5:
        if images.shape[1] != 1:
            raise BoedError(f"completions for {images.shape[1]} images; the EIG is computed for one")
        images = images[:, 0]
    if images.dim() != 4 or images.shape[1:] != shape[1:]:
        raise BoedError(f"completions {tuple(images.shape)} do not match the observation {tuple(shape)}")
    return images


def _candidate_masks(candidates: CandidateGrid | torch.Tensor) -> torch.Tensor:
    return candidates.masks if hasattr(candidates, "masks") else candidates


def expected_information_gain(
    classifier: Classifier,
    observed: torch.Tensor,
    mask: torch.Tensor,
    completions: Completions | torch.Tensor,
    candidates: CandidateGrid | torch.Tensor,
    target: str | Target = "any",
    log_weights: torch.Tensor | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    current_probs: torch.Tensor | None = None,
) -> EIG:
    """EIG (Eq. 17) of every candidate at once.

    ``EIG(c) = H[g(v | x*m, m)] - sum_n w_n H[g(v | I_n * m_c, m_c)]``, ``m_c = max(m, patch_c)``.

    Args:
        classifier: ``g``; ``predict(observed, mask) -> probs (B, L)``.
        observed: ``(1, 1, H, W)`` current observation ``x * m``.
        mask: ``(1, 1, H, W)`` what has been seen (1 = observed).
        completions: ``Completions`` with images ``(N, 1, 1, H, W)`` (or a tensor ``(N, 1, H, W)``);
            their log-weights are used when ``log_weights`` is not given.
        candidates: a :class:`~boed.scanner.CandidateGrid` or patch masks ``(K, 1, H, W)``.
        target: ``"any"``, ``"all"``, a label name or a resolved :class:`Target`.
        log_weights: optional ``(N,)`` or ``(N, 1)`` unnormalised log-weights (uniform if None).
        memory_budget: bytes of classifier input built per chunk (bounds peak memory).
        current_probs: ``g(v | x*m, m)`` ``(1, L)`` if already known (saves one call).

    Returns:
        :class:`EIG` ``(eig (K,), ig (N, K))``; exactly 0 for candidates revealing nothing new.
    """
    observed, mask = _single(observed, "observed"), _single(mask, "mask")
    images = _completion_images(completions, observed.shape)  # (N, 1, H, W)
    if log_weights is None and hasattr(completions, "log_weights"):
        log_weights = completions.log_weights
    lw = None if log_weights is None else log_weights.reshape(-1)
    from boed.protocols import Completions

    # one image of the batched estimator: the same flattening, de-duplication and chunking
    est = expected_information_gain_batch(
        classifier,
        observed,
        mask,
        [Completions(images[:, None], lw)],
        candidates,
        target,
        memory_budget=memory_budget,
        current_probs=current_probs,
    )
    return EIG(est.eig[0], est.ig[0])


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact de-duplication of boolean rows ``(A, P)``: ``(first index of each distinct row (U,),
    inverse (A,))``, by hashing the packed bytes (much faster than ``torch.unique(dim=0)``)."""
    import numpy as np

    packed = np.packbits(rows.cpu().numpy(), axis=1)
    seen: dict[bytes, int] = {}
    inverse = [seen.setdefault(row.tobytes(), len(seen)) for row in packed]
    first = [0] * len(seen)
    for i, u in reversed(list(enumerate(inverse))):
        first[u] = i
    return torch.tensor(first, device=rows.device), torch.tensor(inverse, device=rows.device)


def view_representatives(
    images: torch.Tensor, masks: torch.Tensor, base: torch.Tensor, memory_budget: int = 2**26
) -> torch.Tensor:
    """For each view mask ``u`` and completion ``n``, the first completion whose view equals it.

    The classifier input of completion ``n`` under mask ``m_u`` is ``(I_n * m_u, m_u)``; two
    completions that agree exactly on every pixel of ``m_u`` give the same input, so the same
    entropy, and one classifier call serves both (deterministic samplers return N identical
    completions: one call instead of N; samplers of discrete states repeat states). Exact
    equality is an equivalence, so the first equal completion represents its whole class.

    Args:
        images: ``(N, 1, H, W)`` completions of one image.
        masks: ``(U, 1, H, W)`` bool view masks, each containing ``base``.
        base: ``(1, 1, H, W)`` bool pixels every view shows (observed plus scans already chosen).
        memory_budget: bytes of pairwise differences built at once.

    Returns:
        ``(U, N)`` long: ``rep[u, n] <= n``, ``rep[u, n] == n`` where ``n`` needs its own call.
    """
    n, device = images.shape[0], images.device
    rep = torch.arange(n, device=device).expand(masks.shape[0], n).clone()
    if n < 2 or masks.shape[0] == 0:
        return rep
    flat = images.flatten(1)  # (N, P)
    pixels, shown = flat.shape[1], base.flatten()
    i, j = torch.triu_indices(n, n, 1, device=device)  # pairs i < j
    views = masks.flatten(1)  # (U, P) bool
    # a pair can agree on view u only if its differing pixels avoid u: at most P - |u| of them
    most_differing = pixels - int(views.sum(1).min())
    views = views.to(flat.dtype)
    equal = torch.zeros(n, n, masks.shape[0], dtype=torch.bool, device=device)  # [i, j, u]
    step = max(1, memory_budget // (pixels * flat.element_size()))
    for s in range(0, i.numel(), step):
        a, b = i[s : s + step], j[s : s + step]
        differ = flat[a] != flat[b]  # (Q, P)
        # pairs differing where every view looks, or in too many pixels, agree on no view
        possible = ~(differ & shown).any(1) & (differ.sum(1) <= most_differing)
        if not bool(possible.any()):
            continue
        a, b = a[possible], b[possible]
        counts = differ[possible].to(flat.dtype)  # 0/1: exact counts in float32 < 2^24
        equal[a, b] = (counts @ views.T) == 0  # (Q, U): no differing pixel inside the view
    first = equal.int().argmax(0)  # (N, U): the first i equal to j (0 where none)
    return torch.where(equal.any(0), first, rep.T).T.contiguous()


def target_cross_entropy(probs: torch.Tensor, truth: torch.Tensor, target: Target) -> torch.Tensor:
    """``-sum_l [y_l log p_l + (1-y_l) log(1-p_l)]`` over the target's known labels: ``(...)`` float64."""
    p = probs[..., list(target.indices)].double().clamp(_EPS, 1 - _EPS)
    y = truth.reshape(-1)[list(target.indices)].double().to(p.device)
    known = ~torch.isnan(y)
    y = torch.nan_to_num(y)
    return (-(y * p.log() + (1 - y) * (1 - p).log()) * known).sum(-1)


def expected_information_gain_loop(
    classifier: Classifier,
    observed: torch.Tensor,
    mask: torch.Tensor,
    completions: Completions | torch.Tensor,
    candidates: CandidateGrid | torch.Tensor,
    target: str | Target = "any",
    log_weights: torch.Tensor | None = None,
) -> EIG:
    """Straightforward reference: one classifier call per candidate and completion.

    Same formula and result as :func:`expected_information_gain` (no skipping, no batching);
    used by tests and as the baseline of ``benchmarks/decision.py``.
    """
    observed, mask = _single(observed, "observed"), _single(mask, "mask")
    images = _completion_images(completions, observed.shape)
    if log_weights is None and hasattr(completions, "log_weights"):
        log_weights = completions.log_weights
    cand = _candidate_masks(candidates)
    tgt = resolve_target(target, list(classifier.labels))
    weights = normalised_weights(log_weights, images.shape[0], observed.device)
    h_now = target_entropy(classifier.predict(observed, mask), tgt)[0]
    ig = torch.zeros(images.shape[0], cand.shape[0], dtype=torch.float64)
    for c in range(cand.shape[0]):
        m_c = torch.maximum(mask, cand[c : c + 1])
        for i in range(images.shape[0]):
            probs = classifier.predict(images[i : i + 1] * m_c, m_c)
            ig[i, c] = h_now - target_entropy(probs, tgt)[0]
    return EIG((weights[:, None] * ig).sum(0), ig)


# ---------------------------------------------------------------------------------------------
# The same estimator over B images at once (the batched scan environment, the controller), with
# its Monte Carlo standard error, and conditional on scans already chosen (k scans per step).


class BatchEIG(NamedTuple):
    """Result of :func:`expected_information_gain_batch` for ``B`` images.

    Attributes:
        eig: ``(B, K)`` float64 expected information gain per image and candidate.
        ig: ``B`` tensors ``(N_b, K)`` float64: information gain per completion and candidate
            (a list: samplers that return every consistent state give each image its own N).
        stderr: ``(B, K)`` float64 Monte Carlo standard error of ``eig``
            (:func:`eig_standard_error`).
    """

    eig: torch.Tensor
    ig: list[torch.Tensor]
    stderr: torch.Tensor


def eig_standard_error(ig: torch.Tensor, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Monte Carlo standard error of the EIG estimate ``sum_n w_n IG_n(c)`` from ``ig`` ``(N, K)``.

    - equal weights (``log_weights`` None): ``s / sqrt(N)`` with ``s`` the sample standard
      deviation (``N - 1`` in the denominator) of ``IG_1..IG_N``;
    - importance weights ``w = softmax(log_weights)``: the delta-method estimate of a
      self-normalised importance sampling mean, ``sqrt(sum_n w_n^2 (IG_n - EIG)^2)``
      (Owen, "Monte Carlo theory, methods and examples", 2013, ch. 9, self-normalised
      importance sampling).

    It measures only the spread of the N completions (not the sampler's or the classifier's
    bias). With a single completion (N = 1) it is unknown: NaN. Returns ``(K,)`` float64.
    """
    ig = ig.double()
    n = ig.shape[0]
    if log_weights is None:
        if n < 2:
            return torch.full(ig.shape[1:], torch.nan, dtype=torch.float64, device=ig.device)
        return ig.std(dim=0, correction=1) / n**0.5
    w = normalised_weights(log_weights, n, ig.device)
    eig = (w[:, None] * ig).sum(0)
    return ((w[:, None] ** 2) * (ig - eig) ** 2).sum(0).sqrt()


def _per_image(completions, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images ``(N_b, 1, H, W)`` and log-weights ``(N_b,)`` | None of image ``b``."""
    if isinstance(completions, (list, tuple)) and not hasattr(completions, "images"):
        item = completions[b]
        images = item.images if hasattr(item, "images") else item
        lw = getattr(item, "log_weights", None)
        if images.dim() == 5:
            images = images[:, 0]
        return images, None if lw is None else lw.reshape(-1)
    images = completions.images if hasattr(completions, "images") else completions
    lw = getattr(completions, "log_weights", None)
    return images[:, b], None if lw is None else lw[:, b]


def expected_information_gain_batch(
    classifier: Classifier,
    observed: torch.Tensor,
    mask: torch.Tensor,
    completions: Completions | Sequence[Completions] | torch.Tensor,
    candidates: CandidateGrid | torch.Tensor,
    target: str | Target = "any",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    current_probs: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
) -> BatchEIG:
    """EIG (Eq. 17) of every candidate for ``B`` images at once, classifier calls batched across them.

    For image ``b`` and candidate ``c`` the view is ``m_bc = m_b OR given_b OR patch(c)``:

        EIG_b(c) = H[g(v | x_b * m_b, m_b)] - sum_n w_bn H[g(v | I_bn * m_bc, m_bc)]

    With ``given`` (scans already chosen in this step but not yet observed) this is the EIG of
    observing the chosen scans *and* ``c``, each completion revealing the chosen patches too: the
    joint information of the set, which greedy k-scans-per-step maximises one location at a time.
    A candidate whose view adds nothing to ``m_b`` gets exactly 0 without a classifier call.

    The (image, candidate, completion) triples of all B images are flattened (image-major, then
    candidate-major, as :func:`expected_information_gain` orders one image) and sent to the
    classifier in chunks bounded by ``memory_budget``, so for B = 1 this returns exactly what
    :func:`expected_information_gain` returns.

    Args:
        observed, mask: ``(B, 1, H, W)``.
        completions: a :class:`~boed.protocols.Completions` with images ``(N, B, 1, H, W)`` and
            log-weights ``(N, B)`` | None, or a list of B ``Completions`` for one image each
            (images ``(N_b, 1, 1, H, W)``; each image may have its own N).
        candidates: a :class:`~boed.scanner.CandidateGrid` or patch masks ``(K, 1, H, W)``.
        target: ``"any"``, ``"all"``, a label name or a resolved :class:`Target`.
        memory_budget: bytes of classifier input built per chunk.
        current_probs: ``g(v | x_b * m_b, m_b)`` ``(B, L)`` if known (saves one batched call).
        given: ``(B, 1, H, W)`` masks of scans chosen earlier in the step, or None.

    Returns:
        :class:`BatchEIG` ``(eig (B, K), ig [B x (N_b, K)], stderr (B, K))``.
    """
    if observed.dim() != 4 or observed.shape[1] != 1 or mask.shape != observed.shape:
        raise BoedError(
            f"observed and mask must be (B, 1, H, W), got {tuple(observed.shape)}, {tuple(mask.shape)}"
        )
    b_count = observed.shape[0]
    device = observed.device
    per_image = [_per_image(completions, b) for b in range(b_count)]
    for images, _ in per_image:
        if images.dim() != 4 or images.shape[1:] != observed.shape[1:]:
            raise BoedError(
                f"completions {tuple(images.shape)} do not match the observation {tuple(observed.shape)}"
            )
        check_finite(images, "the sampler returned non-finite completions")
    weights = [normalised_weights(lw, images.shape[0], device) for images, lw in per_image]
    cand = _candidate_masks(candidates).to(device)  # (K, 1, H, W)
    if cand.dim() != 4 or cand.shape[1:] != observed.shape[1:]:
        raise BoedError(f"candidate masks {tuple(cand.shape)} do not match the image {tuple(observed.shape)}")
    tgt = resolve_target(target, list(classifier.labels))
    if current_probs is None:
        current_probs = classifier.predict(observed, mask)
    check_finite(current_probs, "the classifier returned non-finite probabilities on the observation")
    h_now = target_entropy(current_probs.reshape(b_count, -1), tgt)  # (B,)

    k = cand.shape[0]
    seen = mask > 0.5
    base = seen if given is None else seen | (given.to(device) > 0.5)
    all_masks, mask_rows, image_rows, layout = [], [], [], []
    n_masks = n_images = n_pairs = 0
    for b, (images, _) in enumerate(per_image):
        new_masks = base[b : b + 1] | (cand > 0.5)  # (K, 1, H, W)
        reveals = (new_masks & ~seen[b : b + 1]).flatten(1).any(1)
        active = reveals.nonzero().squeeze(1)
        n = images.shape[0]
        inverse = None
        slots = None
        if active.numel():
            first, inverse = _unique_rows(new_masks[active].flatten(1))
            unique = new_masks[active][first]  # (U, 1, H, W) bool
            # one classifier call per distinct view: completions that agree on a whole view share it
            rep = view_representatives(images, unique, base[b : b + 1])  # (U, N)
            distinct = (rep == torch.arange(n, device=device)).nonzero()  # (D, 2): (view mask, completion)
            slot = torch.full(rep.shape, -1, dtype=torch.long, device=device)
            slot[distinct[:, 0], distinct[:, 1]] = torch.arange(distinct.shape[0], device=device)
            slots = n_pairs + slot.gather(1, rep)  # (U, N): where each pair's entropy lands
            mask_rows.append(n_masks + distinct[:, 0])
            image_rows.append(n_images + distinct[:, 1])
            all_masks.append(unique.float())
            n_masks += unique.shape[0]
            n_pairs += distinct.shape[0]
        layout.append((active, inverse, slots, n))
        n_images += n
    stacked = torch.cat([images for images, _ in per_image])  # (sum N_b, 1, H, W)
    h_after = torch.empty(0, dtype=torch.float64, device=device)
    if all_masks:
        h_after = _map_pairs(
            classifier,
            stacked,
            torch.cat(all_masks),
            torch.cat(mask_rows),
            torch.cat(image_rows),
            lambda probs: target_entropy(probs, tgt),
            memory_budget,
        )
    eig = torch.zeros(b_count, k, dtype=torch.float64, device=device)
    stderr = torch.zeros(b_count, k, dtype=torch.float64, device=device)
    igs = []
    for b, (active, inverse, slots, n) in enumerate(layout):
        ig = torch.zeros(n, k, dtype=torch.float64, device=device)
        if inverse is not None:
            block = h_after[slots].T  # (N, U)
            ig[:, active] = h_now[b] - block[:, inverse]
        eig[b] = check_finite((weights[b][:, None] * ig).sum(0), "the EIG map is not finite")
        stderr[b] = eig_standard_error(ig, per_image[b][1])
        igs.append(ig)
    return BatchEIG(eig, igs, stderr)


def _map_pairs(
    classifier: Classifier,
    images: torch.Tensor,
    masks: torch.Tensor,
    mask_rows: torch.Tensor,
    image_rows: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int,
) -> torch.Tensor:
    """``reduce(g(v | images[i_p] * masks[m_p], masks[m_p]))`` for every pair ``p``: ``(P,)`` float64,
    in chunks whose inputs take at most ``memory_budget`` bytes, each built by indexing, with no
    Python loop over candidates."""
    total = int(mask_rows.numel())
    per_pair = 2 * images[0].numel() * images.element_size()
    chunk = max(1, int(memory_budget) // per_pair)
    out = torch.empty(total, dtype=torch.float64, device=images.device)
    for start in range(0, total, chunk):
        idx = slice(start, min(start + chunk, total))
        m = masks[mask_rows[idx]]
        out[idx] = reduce(predict_checked(classifier, images[image_rows[idx]] * m, m)).double()
    return out


def map_views(
    classifier: Classifier,
    images: torch.Tensor,
    masks: torch.Tensor,
    owner: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor],
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor:
    """``reduce(g(v | images[owner_r] * masks_r, masks_r))`` for every view ``r``: ``(R,)`` float64.

    ``images`` ``(B, 1, H, W)``, ``masks`` ``(R, 1, H, W)``, ``owner`` ``(R,)`` the image of each
    view: the views of B images (e.g. every candidate of every episode on its true image, for the
    greedy oracles) in one chunked stream of classifier calls.
    """
    rows = torch.arange(masks.shape[0], device=masks.device)
    return _map_pairs(classifier, images, masks, rows, owner.to(masks.device), reduce, memory_budget)
