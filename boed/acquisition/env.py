"""A Gymnasium-style scan environment over B parallel episodes, and the one loop that runs them.

:class:`ScanEnv` follows ``gymnasium.vector.VectorEnv``: ``reset(seed=, options=) -> (obs, info)``,
``step(actions) -> (obs, rewards, terminations, truncations, info)``, batched
``observation_space`` / ``action_space`` built from the single-episode spaces
(``gymnasium.vector.utils.batch_space``), no auto-reset (``AutoresetMode.DISABLED``: a batch of
sessions ends, the caller resets with the next images). Observations are torch tensors shaped as
the spaces say (``{"observed": (B, 1, S, S), "mask": (B, 1, S, S)}`` float32); an action is a
candidate index per episode (``-1``: no scan, for an episode that has stopped). The reward of a
scan is the realised information gain: the drop of the classifier's target entropy (nats).

Each episode is a :class:`~boed.acquisition.Controller` that is given the patches its hidden image
shows where it scans, exactly as a real scanner would give them (the controller never holds the
hidden image): simulation and real use share that one code path. Beyond it the environment
offers what research on policies needs: :meth:`ScanEnv.decide` (the EIG maps of the episodes,
classifier calls batched across all B images), :meth:`ScanEnv.try_action` (score actions on the
hidden images without applying them, as the greedy oracles do) and :meth:`ScanEnv.batch_state`
(the :class:`~boed.policies.BatchState` a policy chooses from).

:func:`run_episodes` is the session loop of docs/ARCHITECTURE.md over the B episodes, with the
stopping rule and k scans per step; ``boed.session.run_session`` is this loop with B = 1 and
``boed.simulate`` runs it with ``--batch-episodes B``. Every episode has its own generator, so an
episode's result does not depend on B or on the other episodes (checked by the tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from boed.acquisition.controller import (
    Controller,
    Decision,
    conditional_eig_batch,
    decide_batch,
    decision_diagnostics,
    greedy_scans,
    predict_batch,
)
from boed.eig import DEFAULT_MEMORY_BUDGET, check_finite, map_views, resolve_target, target_entropy
from boed.errors import BoedError
from boed.policies import BatchState, StoppingRule, Truth, choose_batch

if TYPE_CHECKING:
    from boed.eig import Target
    from boed.protocols import Classifier, Policy, Sampler
    from boed.scanner import CandidateGrid
    from boed.session import PriorDecision, SessionResult, StepRecord


class ScanEnv(VectorEnv):
    """B parallel scan episodes on hidden images (one Controller each).

    Args:
        classifier: ``g`` on partial views.
        candidates: the candidate grid (K locations, ``p x p`` scans, ``S x S`` images).
        num_envs: B (or give ``images`` here or to :meth:`reset`).
        sampler, n_samples: for :meth:`decide` (policies that need the EIG).
        target: ``"any"``, ``"all"`` or a label name.
        scans: the episode length in scans (``truncations`` after that many), or None.
        memory_budget: bytes of classifier input per chunk.
        prior: the shared first decision (``boed.session.prior_decision``) or a callable.
        sampler_batching: ``"per-episode"`` or ``"joint"`` (``boed.acquisition.decide_batch``).
        keep_completions: keep completions and IG maps in the decisions (figures).
    """

    metadata = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(
        self,
        classifier: Classifier,
        candidates: CandidateGrid,
        *,
        num_envs: int | None = None,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sampler: Sampler | None = None,
        n_samples: int = 10,
        target: str | Target = "any",
        scans: int | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        prior: PriorDecision | Callable[[], PriorDecision | None] | None = None,
        sampler_batching: str = "per-episode",
    ):
        if num_envs is None:
            if images is None:
                raise BoedError("ScanEnv needs num_envs or images")
            num_envs = int(images.shape[0])
        if num_envs < 1:
            raise BoedError(f"the environment needs at least one episode, got {num_envs}")
        self.num_envs = int(num_envs)
        self.classifier, self.candidates, self.sampler = classifier, candidates, sampler
        self.n_samples, self.scans, self.memory_budget = int(n_samples), scans, int(memory_budget)
        self.target = resolve_target(target, list(classifier.labels))
        self.prior, self.sampler_batching = prior, sampler_batching
        size = candidates.image_size
        image_box = spaces.Box(0.0, 1.0, shape=(1, size, size), dtype=np.float32)
        self.single_observation_space = spaces.Dict({"observed": image_box, "mask": image_box})
        self.single_action_space = spaces.Discrete(len(candidates))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.device = torch.device(getattr(classifier, "device", "cpu"))
        self._images, self._labels = images, labels
        self.controllers: list[Controller] = []

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start B new episodes; returns ``(obs, info)`` with ``info["probs"]`` ``(B, L)`` and
        ``info["entropy"]`` ``(B,)``, the classifier before any scan.

        ``options``: ``images`` ``(B, 1, S, S)`` (else those given to the constructor),
        ``labels`` ``(B, L)`` (NaN = unknown; for the oracles and ``try_action``), and the
        episodes' randomness: ``generators`` (B torch generators) or ``seeds`` (B ints); without
        them ``seed`` seeds episode b with ``seed + b``.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        images = options.get("images", self._images)
        if images is None:
            raise BoedError("reset needs the episodes' images (options['images'])")
        size = self.candidates.image_size
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.dim() == 3:
            images = images[None]
        if images.shape != (self.num_envs, 1, size, size):
            raise BoedError(
                f"expected {self.num_envs} images (B, 1, {size}, {size}), got {tuple(images.shape)}"
            )
        check_finite(images, "the image has non-finite pixels")
        labels = options.get("labels", self._labels if "images" not in options else None)
        self._images = images.to(self.device)
        self._labels = (
            None
            if labels is None
            else torch.as_tensor(labels, dtype=torch.float32).reshape(self.num_envs, -1)
        )
        generators = options.get("generators")
        if generators is None and options.get("seeds") is not None:
            generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in options["seeds"]]
        if generators is None and seed is not None:
            generators = [
                torch.Generator(device=self.device).manual_seed(int(seed) + b) for b in range(self.num_envs)
            ]
        if generators is None:
            generators = [None] * self.num_envs
        if len(generators) != self.num_envs:
            raise BoedError(f"{len(generators)} generators for {self.num_envs} episodes")
        self.controllers = [
            Controller(
                self.sampler,
                self.classifier,
                self.candidates,
                self.target,
                self.n_samples,
                generator=g,
                memory_budget=self.memory_budget,
                prior=self.prior,
                device=self.device,
            )
            for g in generators
        ]
        self.scans_taken = np.zeros(self.num_envs, dtype=np.int64)
        probs = predict_batch(self.controllers)
        return self._obs(), {"probs": probs, "entropy": target_entropy(probs, self.target)}

    def step(self, actions: Any):
        """Scan candidate ``actions[b]`` in every episode b (``-1``: none) and predict again.

        Returns ``(obs, rewards (B,), terminations (B,), truncations (B,), info)``: the reward is
        the drop of the target entropy (0 for an episode that did not scan), ``terminations``:
        nothing is left to reveal, ``truncations``: the episode has taken ``scans`` scans;
        ``info["probs"]`` ``(B, L)`` and ``info["entropy"]`` ``(B,)`` after the scan.
        """
        actions = torch.as_tensor(actions, dtype=torch.long).reshape(-1)
        if actions.numel() != self.num_envs:
            raise BoedError(f"step takes one action per episode ({self.num_envs}), got {actions.numel()}")
        k = len(self.candidates)
        if bool(((actions < -1) | (actions >= k)).any()):
            raise BoedError(f"candidate index out of range [0, {k}) (or -1 for no scan): {actions.tolist()}")
        before = target_entropy(predict_batch(self.controllers), self.target)
        p = self.candidates.patch_size
        for b in (actions >= 0).nonzero().squeeze(1).tolist():
            row, col = self.candidates.location(int(actions[b]))
            self.controllers[b].observe((row, col), self._images[b, 0, row : row + p, col : col + p])
            self.scans_taken[b] += 1
        probs = predict_batch(self.controllers)
        after = target_entropy(probs, self.target)
        rewards = torch.where(actions >= 0, before - after, torch.zeros_like(after))
        seen = torch.cat([c.mask for c in self.controllers]) > 0.5
        terminations = seen.flatten(1).all(1).cpu().numpy()
        truncations = self.scans_taken >= (self.scans if self.scans is not None else np.iinfo(np.int64).max)
        return self._obs(), rewards, terminations, truncations, {"probs": probs, "entropy": after}

    def _obs(self) -> dict[str, torch.Tensor]:
        return {
            "observed": torch.cat([c.observed for c in self.controllers]),
            "mask": torch.cat([c.mask for c in self.controllers]),
        }

    # ------------------------------------------------------------------ beyond gymnasium
    def try_action(self, actions: Any) -> dict[str, torch.Tensor]:
        """Score actions on the hidden images without applying them (the greedy oracle's query).

        ``actions`` ``(B,)`` or ``(B, M)``: M candidate indices per episode, each scored alone
        (``mask_b OR patch(a)``). Returns ``probs`` ``(B, M, L)``, ``entropy`` ``(B, M)``,
        ``reward`` ``(B, M)`` (the entropy drop the scan would give) and ``cross_entropy``
        ``(B, M)`` against the true labels (NaN where a target label is unknown).
        """
        actions = torch.as_tensor(actions, dtype=torch.long)
        if actions.dim() == 1:
            actions = actions[:, None]
        if actions.shape[0] != self.num_envs or bool(
            ((actions < 0) | (actions >= len(self.candidates))).any()
        ):
            raise BoedError(
                f"try_action takes (B, M) candidate indices in [0, {len(self.candidates)}), "
                f"B = {self.num_envs}"
            )
        b_count, m = actions.shape
        owner = torch.arange(b_count).repeat_interleave(m).to(self.device)
        masks = torch.cat([c.mask for c in self.controllers])[owner]
        masks = torch.maximum(masks, self.candidates.masks.to(masks)[actions.reshape(-1).to(self.device)])
        rows: list[torch.Tensor] = []

        def keep(probs: torch.Tensor) -> torch.Tensor:
            rows.append(probs.detach())
            return torch.zeros(probs.shape[0], dtype=torch.float64, device=probs.device)

        map_views(self.classifier, self._images, masks, owner, keep, self.memory_budget)
        probs = torch.cat(rows).reshape(b_count, m, -1)
        entropy = target_entropy(probs, self.target)
        now = target_entropy(predict_batch(self.controllers), self.target)
        if self._labels is None:
            ce = torch.full_like(entropy, torch.nan)
        else:
            idx = list(self.target.indices)
            y = self._labels[:, idx].double().to(probs.device)[:, None, :]
            pt = probs[..., idx].double().clamp(1e-7, 1 - 1e-7)
            ce = -(y * pt.log() + (1 - y) * (1 - pt).log()).sum(-1)
        return {"probs": probs, "entropy": entropy, "reward": now[:, None] - entropy, "cross_entropy": ce}

    def decide(self, episodes: Sequence[int] | None = None) -> list[Decision]:
        """The EIG decisions of ``episodes`` (default all), batched across them."""
        episodes = range(self.num_envs) if episodes is None else episodes
        return decide_batch([self.controllers[b] for b in episodes], self.sampler_batching)

    def conditional_eig(self, episodes: Sequence[int], decisions: Sequence[Decision], given: torch.Tensor):
        """``(len(episodes), K)`` EIG of ``given`` and each candidate together (k scans per step)."""
        return conditional_eig_batch([self.controllers[b] for b in episodes], decisions, given)

    def batch_state(
        self,
        episodes: Sequence[int],
        step: int,
        policy: Policy,
        mask: torch.Tensor | None = None,
        eig: torch.Tensor | None = None,
        generators: Sequence[torch.Generator | None] | None = None,
        eig_se: torch.Tensor | None = None,
    ) -> BatchState:
        """The :class:`BatchState` of ``episodes`` for ``policy`` (truth only if it ``needs_truth``)."""
        ctrl = [self.controllers[b] for b in episodes]
        truth = None
        if getattr(policy, "needs_truth", False):
            truth = [
                Truth(self._images[b : b + 1], None if self._labels is None else self._labels[b])
                for b in episodes
            ]
        return BatchState(
            step=step,
            observed=torch.cat([c.observed for c in ctrl]),
            mask=torch.cat([c.mask for c in ctrl]) if mask is None else mask,
            candidates=self.candidates,
            scanned=[[s for s in c.scanned if s is not None] for c in ctrl],
            generators=list(generators) if generators is not None else [c.generator for c in ctrl],
            eig=eig,
            eig_se=eig_se,
            truth=truth,
            classifier=self.classifier,
            target=self.target,
            memory_budget=self.memory_budget,
        )


def run_episodes(
    env: ScanEnv,
    policy: Policy,
    scans: int,
    *,
    reset_options: dict[str, Any],
    scans_per_step: int = 1,
    stopping: StoppingRule | None = None,
    on_step: Callable[[int, StepRecord], None] | None = None,
    on_array: Callable[[int, int, str, np.ndarray], None] | None = None,
    figure_episodes: Sequence[int] = (),
    figure_completions: int = 0,
) -> list[SessionResult]:
    """Run the B episodes of ``env`` under ``policy`` for ``scans`` scans each.

    Per decision (all running episodes at once): stop the episodes whose target entropy is below
    the stopping rule's threshold; for policies that need it, the EIG maps (:meth:`ScanEnv.decide`;
    stop those whose best EIG is below threshold); then ``k = scans_per_step`` choices each
    conditional on the earlier ones (:func:`~boed.acquisition.greedy_scans`), scanned one after
    the other, each logged as its own step (so step t is always the t-th scan). Errors are
    prefixed with the number of the scan being decided (``step N: ...``).

    ``on_step(b, record)`` receives every :class:`~boed.session.StepRecord` of episode b as soon
    as it is known; ``on_array(b, step, name, array)`` the Fig. 6 arrays of the episodes in
    ``figure_episodes``. Returns one :class:`~boed.session.SessionResult` per episode.
    """
    from boed.session import SessionResult, StepRecord, at_step, eig_grid, save_figure_arrays

    if policy.needs_eig and env.sampler is None:
        raise BoedError(f"policy {policy.name!r} needs a sampler")
    if scans_per_step < 1:
        raise BoedError(f"scans per step must be at least 1, got {scans_per_step}")
    stopping = stopping or StoppingRule()
    results = [SessionResult() for _ in range(env.num_envs)]

    def emit(b: int, record: StepRecord) -> None:
        results[b].steps.append(record)
        if on_step is not None:
            on_step(b, record)

    t0 = time.perf_counter()
    with at_step(0):
        _, info = env.reset(options=reset_options)
    probs = info["probs"]
    seconds = (time.perf_counter() - t0) / env.num_envs
    for b in range(env.num_envs):
        emit(b, StepRecord(0, None, None, None, None, probs[b].tolist(), seconds))

    candidates, active, done = env.candidates, list(range(env.num_envs)), 0
    while done < scans and active:
        t0 = time.perf_counter()
        step, k = done + 1, min(scans_per_step, scans - done)
        entropy = target_entropy(predict_batch([env.controllers[b] for b in active]), env.target)
        for b, h in zip(list(active), entropy.tolist(), strict=True):
            if stopping.stop_on_entropy(float(h)):
                results[b].stopped_early = True
                active.remove(b)
        if not active:
            break
        with at_step(step):
            decisions = env.decide(active) if policy.needs_eig else None
            if decisions is not None:
                keep = [i for i, d in enumerate(decisions) if not stopping.stop_on_eig(d.eig)]
                for i, b in enumerate(list(active)):
                    if i not in keep:
                        results[b].stopped_early = True
                decisions = [decisions[i] for i in keep]
                active = [active[i] for i in keep]
                if not active:
                    break
            elif stopping.eig_below is not None and hasattr(policy, "predict_batch"):
                # a policy that predicts the EIG map itself (amortized) stops on its prediction
                state = env.batch_state(active, step, policy)
                predicted = policy.predict_batch(state).masked_fill(~state.revealing().cpu(), 0.0)
                stop = [stopping.stop_on_eig(row) for row in predicted]
                for b, stopped in zip(list(active), stop, strict=True):
                    results[b].stopped_early |= stopped
                active = [b for b, stopped in zip(active, stop, strict=True) if not stopped]
                if not active:
                    break
            running = list(active)
            observed_before = torch.cat([env.controllers[b].observed for b in running])
            mask_before = torch.cat([env.controllers[b].mask for b in running])

            chosen, maps = _choose_step(env, policy, running, step, mask_before, k, decisions)
            after: list[torch.Tensor] = []
            for j in range(k):
                actions = torch.full((env.num_envs,), -1, dtype=torch.long)
                actions[running] = chosen[:, j]
                _, _, _, _, info = env.step(actions)
                after.append(info["probs"])
        seconds = (time.perf_counter() - t0) / (len(running) * k)
        for i, b in enumerate(running):
            if (
                on_array is not None
                and figure_completions > 0
                and decisions is not None
                and b in figure_episodes
            ):
                ctrl = env.controllers[b]
                save_figure_arrays(
                    lambda s, name, a, b=b: on_array(b, s, name, a),
                    step,
                    observed_before[i : i + 1],
                    mask_before[i : i + 1],
                    ctrl.observed,
                    decisions[i].completions,
                    decisions[i].ig,
                    decisions[i].eig,
                    candidates,
                    int(chosen[i, 0]),
                    figure_completions,
                )
            diagnostics = None
            if decisions is not None:
                with at_step(step):
                    diagnostics = decision_diagnostics(env.controllers[b], decisions[i], int(chosen[i, 0]))
            for j in range(k):
                c = int(chosen[i, j])
                eig_j = maps[j][i] if maps[j] is not None else None
                emit(
                    b,
                    StepRecord(
                        step + j,
                        candidates.location(c),
                        c,
                        float(eig_j[c]) if eig_j is not None else None,
                        eig_grid(eig_j, candidates) if eig_j is not None else None,
                        after[j][b].tolist(),
                        seconds,
                        diagnostics if j == 0 else None,
                    ),
                )
        done += k
    return results


def _choose_step(env, policy, running, step, mask, k, decisions):
    """The k choices of one step for the ``running`` episodes (:func:`greedy_scans`)."""

    first_eig = None if decisions is None else torch.stack([d.eig for d in decisions])
    first_se = None if decisions is None else torch.stack([d.stderr for d in decisions])

    def choose(mask_j: torch.Tensor, eig_j: torch.Tensor | None) -> torch.Tensor:
        # the standard errors belong to the step's first map only (the conditional ones have none)
        se = first_se if decisions is not None and eig_j is first_eig else None
        return choose_batch(policy, env.batch_state(running, step, policy, mask_j, eig_j, eig_se=se))

    if decisions is None:
        return greedy_scans(choose, mask, env.candidates, k, None, None)
    return greedy_scans(
        choose,
        mask,
        env.candidates,
        k,
        first_eig,
        lambda given: env.conditional_eig(running, decisions, given),
    )
