"""Simulated scan sessions over a dataset, logged to the store; reproducible from a seed.

For every image (in dataset order) the simulation records one session per policy plus the
full-image reference (the classifier on the whole image: policy ``"full-image"``, a single step).
Each session draws from its own generator, seeded from ``(seed, image index, policy)``, so a
session's result does not depend on which other sessions ran, and a resumed run
(``store.resume_plan``) adds exactly the missing sessions.

With ``batch_episodes`` B > 1 the sessions of one policy on B images at a time run as the B
episodes of one ``boed.acquisition.ScanEnv`` (classifier calls batched across the images); each
episode keeps its own seeded generator, so the results are those of B = 1 (a test checks it).
A batch is written to the store once it has finished; if anything in it fails, its sessions are
run again one at a time, so a bad image fails only its own session, with the error it has at B = 1.

Faults: an error of the sampler, the classifier or the data on one image marks that session
failed (with its message) and the run goes on. An error of the store (a write it could not take:
disk full, database gone) is not the image's fault: the run stops at once with
:class:`StoreFault`, marked ``interrupted`` with the reason when the store still takes that
write; everything committed before is kept and ``--resume`` continues. Ctrl-C and SIGTERM
(:class:`Terminated`) mark the run ``interrupted`` too. The failed-session count of a run is read
from the store, so it is true across resumed parts.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from boed.config import ConfigError, from_dict, to_dict
from boed.eig import DEFAULT_MEMORY_BUDGET, predict_checked, resolve_target
from boed.errors import BoedError
from boed.policies import FULL_IMAGE, StoppingRule, get_policy, parse_policies
from boed.scanner import CandidateGrid
from boed.session import PriorDecision, prior_decision, run_session
from boed.store.errors import StoreError, StoreWriteError

if TYPE_CHECKING:
    from boed.protocols import Classifier, Sampler
    from boed.runtime.distributed import Group


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulation run (stored with the run; ``--resume`` reuses it)."""

    images: str = "chestxray"
    split: str = "test"
    data_root: str | None = None
    n_images: int = 30
    scans: int = 5
    n_samples: int = 10
    grid: int = 17
    image_size: int = 64
    patch_size: int = 16
    target: str = "any"
    policies: tuple[str, ...] = ("boed", "random", "oracle")
    seed: int = 0
    preset: str = "cpu"
    sampler: str = "aipo"
    sampler_checkpoint: str | None = None
    classifier_checkpoint: str | None = None
    figure_sessions: int = 3
    figure_completions: int = 5
    stop_entropy: float | None = None
    stop_eig: float | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    share_prior_decision: bool = True
    allow_training_images: bool = False
    # how the dataset is opened (datasets.open_dataset); split_seed None: the one the classifier
    # (else the sampler) was trained with, else datasets.DEFAULT_SPLIT_SEED
    split_seed: int | None = None
    max_pixels: int | None = None
    allow_symlinks: bool = False
    allow_modalities: tuple[str, ...] = ()
    skip_bad: bool = False
    # beyond the paper: k scans per decision (greedy, each conditional on the earlier ones), and
    # B sessions of a policy run at once as the episodes of one batched environment
    scans_per_step: int = 1
    batch_episodes: int = 1
    # per-episode: each episode's own generator (results independent of B); joint: one sampler
    # call for the whole batch (faster where the sampler dominates; draws then depend on B)
    sampler_batching: str = "per-episode"
    # beyond the paper: the value network of policy amortized (None: the shipped one)
    amortized_checkpoint: str | None = None
    # completions of the shared first decision (nothing observed, computed once per run); None:
    # n_samples, as runs were before the option (FIRST_COMPLETIONS holds the presets' defaults)
    first_completions: int | None = None
    # the classifier's inference runtime (classifiers.runtime: eager, onnx, compile), recorded so
    # that a run says how its decisions were computed; eager is the reference
    runtime: str = "eager"

    @property
    def prior_completions(self) -> int:
        """N of the shared first decision: ``first_completions``, else ``n_samples``."""
        return self.n_samples if self.first_completions is None else int(self.first_completions)

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of ``datasets.open_dataset`` beyond the source, split, size and n."""
        options: dict[str, Any] = {"allow_symlinks": self.allow_symlinks, "skip_bad": self.skip_bad}
        if self.split_seed is not None:
            options["split_seed"] = self.split_seed
        if self.max_pixels is not None:
            options["max_pixels"] = self.max_pixels
        if self.allow_modalities:
            options["allow_modalities"] = self.allow_modalities
        return options

    def __post_init__(self) -> None:
        object.__setattr__(self, "policies", parse_policies(self.policies))
        positive = ("n_images", "scans", "n_samples", "grid", "scans_per_step", "batch_episodes")
        if self.first_completions is not None:
            positive = (*positive, "first_completions")
        for name in positive:
            if getattr(self, name) < 1:
                raise BoedError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.patch_size <= self.image_size:
            raise BoedError(f"scan patch {self.patch_size} px does not fit {self.image_size} px images")
        positions = self.image_size - self.patch_size + 1
        if self.grid > positions:
            raise BoedError(
                f"--grid {self.grid} is more than the {positions} scan positions per side of "
                f"{self.image_size} px images with {self.patch_size} px scans; use --grid {positions} or less"
            )
        from boed.acquisition.controller import SAMPLER_BATCHING

        if self.sampler_batching not in SAMPLER_BATCHING:
            raise BoedError(
                f"unknown sampler batching {self.sampler_batching!r}; valid: {', '.join(SAMPLER_BATCHING)}"
            )
        if self.scans_per_step > self.grid**2:
            raise BoedError(
                f"scans-per-step {self.scans_per_step} is more than the {self.grid**2} candidate locations "
                f"of --grid {self.grid}"
            )

    @property
    def stopping(self) -> StoppingRule:
        return StoppingRule(self.stop_entropy, self.stop_eig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationConfig:
        try:
            return from_dict(cls, data)
        except ConfigError as exc:
            raise BoedError(f"stored run config does not fit this version: {exc}") from None


FIRST_COMPLETIONS = {"cpu": 200}
"""Default completions N of the shared first decision per preset (``--first-completions``); other
presets use their ``n_samples``. On the cpu preset N = 200 costs about 20 decisions of N = 10 once
per run (measured in docs/acquisition.md, "A sound first decision")."""


SAMPLER_FLOATS_PER_PIXEL = 64
"""The sampler's live activations per completion pixel, in float32 values, assumed by
:func:`decision_memory` (a VDVAE decoder of width 32 keeps about two such tensors at full size)."""


def decision_memory(config: SimulationConfig) -> int:
    """Bytes one BOED decision needs at most, estimated from the config alone (before anything loads).

    With ``S`` = image size, ``K = G^2`` candidates, ``N`` completions, ``A`` =
    :data:`SAMPLER_FLOATS_PER_PIXEL`, ``E`` = the episodes decided together (``batch_episodes``)
    and ``B`` = the classifier memory budget::

        E 9 K S^2          candidate masks: float32 grid masks, boolean and float32 union masks
      + E 4 N S^2          completions (float32), kept for every episode
      + 4 N S^2 A          the sampler's activations while drawing them (one episode at a time)
      + E 24 N K           information gains: ig, h_after and its gather (float64, N x K each)
      + 4 B                classifier chunks: inputs (bounded by B) and their activations

    where the episodes' term is at least that of the shared first decision (one episode with
    ``N = first_completions``, drawn in sampler calls of ``n_samples``: the sampler term stays).
    A lower bound for wider samplers (their activations grow with the width); it catches values
    that cannot fit long before a decision tries to allocate them.
    """
    s2, k, n, e = config.image_size**2, config.grid**2, config.n_samples, config.batch_episodes
    per_episode = 9 * k * s2 + 4 * n * s2 + 24 * n * k
    # the shared first decision: one episode with first_completions, drawn in chunks of n_samples
    first = config.prior_completions
    prior = 9 * k * s2 + 4 * first * s2 + 24 * first * k
    return max(e * per_episode, prior) + 4 * n * s2 * SAMPLER_FLOATS_PER_PIXEL + 4 * config.memory_budget


def check_memory(config: SimulationConfig, available: int | None, where: str = "this machine") -> None:
    """Refuse ``--n-samples`` / ``--grid`` whose :func:`decision_memory` exceeds ``available`` bytes."""
    if available is None or not any(get_policy(p).needs_eig for p in config.policies):
        return
    need = decision_memory(config)
    if need > available:
        raise BoedError(
            f"--n-samples {config.n_samples} with --grid {config.grid} at {config.image_size} px"
            + (f" and --batch-episodes {config.batch_episodes}" if config.batch_episodes > 1 else "")
            + f" needs about {_gib(need)} per decision (estimate in boed.simulate.decision_memory), more "
            f"than the {_gib(available)} available on {where}; lower --n-samples or --grid"
            + (" or --batch-episodes" if config.batch_episodes > 1 else "")
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class Terminated(KeyboardInterrupt):
    """Raised by the CLI's SIGTERM handler: the run stops as on Ctrl-C and is marked interrupted."""


class StoreFault(StoreError):
    """The store failed a write while a run was running: the run stopped at once.

    Nothing committed before is lost (every store write is one transaction); the run is marked
    ``interrupted`` with the reason when the store still takes that write (``marked``), else it
    still shows ``running``; either way ``boed simulate --resume RUN_ID`` continues it.
    """

    def __init__(self, run_id: str, cause: str, marked: bool, db: str | None = None):
        self.run_id, self.cause, self.marked, self.db = run_id, cause, marked, db
        state = "marked interrupted" if marked else "it could not be marked and still shows 'running'"
        resume = f"boed simulate --resume {run_id}" + (f" --db {db}" if db else "")
        super().__init__(
            f"the store failed while writing run {run_id} ({cause}); the run stopped ({state}); "
            f"everything written before is kept; fix the store, then continue with: {resume}"
        )


class _StoreFailed(BaseException):  # noqa: N818 - control flow, never leaves run_simulation
    """A store call of the run loop failed. A BaseException, so that no ``except Exception`` on
    the way (a session's own error handling) takes it for an error of the image."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


class _GuardedStore:
    """The run's store as the run loop sees it: every exception of a store call becomes
    :class:`_StoreFailed`, except a plain :class:`StoreError` from ``log_step`` / ``save_array``:
    that is the store refusing what one image produced (e.g. a wrong number of probabilities) and
    fails that session like any other error of the image."""

    _VALUES = ("log_step", "save_array")

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except StoreError as exc:
                if name in self._VALUES and not isinstance(exc, StoreWriteError):
                    raise
                raise _StoreFailed(str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - any failure of the store stops the run
                raise _StoreFailed(f"{type(exc).__name__}: {exc}") from exc

        return call


def session_seed(seed: int, image_index: int, policy: str) -> int:
    """A 63-bit seed for the session of ``policy`` on image ``image_index`` of a run seeded ``seed``."""
    digest = hashlib.sha256(f"{seed}:{image_index}:{policy}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def code_version() -> str:
    """``<package version>+<git commit>`` (``+dirty`` when the tree has changes), or just the version."""
    from boed import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}" if commit else __version__


def check_parts(
    config: SimulationConfig, sampler: Sampler | None, classifier: Classifier, dataset: Any
) -> list[str]:
    """Refuse, before any work, parts that do not fit the config or each other.

    Checks image sizes, labels, the target (against the classifier's labels) and the provenance
    of the checkpoints (:func:`check_provenance`). Returns the provenance warnings (empty: none).
    """
    sizes = {"config": config.image_size, "classifier": int(classifier.image_size)}
    if sampler is not None:
        sizes["sampler"] = int(sampler.image_size)
    if dataset is not None and len(dataset):
        sizes["dataset"] = int(dataset[0]["img"].shape[-1])
    if len(set(sizes.values())) > 1:
        raise BoedError(
            "image sizes do not fit: "
            + ", ".join(f"{k} {v} px" for k, v in sizes.items())
            + f" (preset {config.preset!r})"
        )
    if dataset is not None and tuple(dataset.labels) != tuple(classifier.labels):
        raise BoedError(
            f"the classifier's labels ({', '.join(classifier.labels)}) differ from the dataset's "
            f"({', '.join(dataset.labels)})"
        )
    resolve_target(config.target, list(classifier.labels))
    if any(get_policy(p).needs_eig for p in config.policies) and sampler is None:
        raise BoedError("the boed policy needs a sampler")
    amortized = amortized_warnings(config, classifier, sampler)
    if dataset is None:
        return amortized
    return amortized + check_provenance(
        {"classifier": classifier, "sampler": sampler}, dataset.describe(), config.allow_training_images
    )


def _policy(config: SimulationConfig, name: str) -> Any:
    """The policy ``name`` of a run (``amortized``: with the run's checkpoint, where it names one)."""
    if name == "amortized" and config.amortized_checkpoint is not None:
        return get_policy(name, amortized_checkpoint=config.amortized_checkpoint)
    return get_policy(name)


def amortized_warnings(
    config: SimulationConfig, classifier: Classifier, sampler: Sampler | None
) -> list[str]:
    """Policy ``amortized``: load its checkpoint and check its candidate grid now (a bad one fails
    before the run starts); one warning line per part it was not trained for."""
    if "amortized" not in config.policies:
        return []
    from boed.amortized.policy import AmortizedPolicy, checkpoint_warnings

    policy = AmortizedPolicy(config.amortized_checkpoint)
    policy.check_candidates(CandidateGrid.from_grid(config.image_size, config.patch_size, config.grid))
    return checkpoint_warnings(policy.meta, classifier, sampler)


def check_provenance(
    parts: dict[str, Any], description: dict[str, Any], allow_training_images: bool
) -> list[str]:
    """Compare what each checkpoint was trained on (``part.meta["data"]``) with the dataset.

    A part whose checkpoint was trained on some of these images is refused (its accuracy there
    says nothing) unless ``allow_training_images``; a dataset from another source than the
    checkpoint's training data (e.g. the phantom checkpoints on real radiographs, where they
    return saturated, meaningless probabilities) gives a warning. Parts without a record of
    their training data (toy models, checkpoints written before it was recorded) are not checked.

    Returns:
        The warnings, one line each, naming the part.
    """
    from datasets.errors import DatasetError
    from datasets.provenance import check_training_data

    warnings: list[str] = []
    for what, part in parts.items():
        if not _training_data(part):
            continue
        try:
            warnings += check_training_data(
                part.meta["data"],
                description,
                what=f"the {what} checkpoint",
                allow_overlap=allow_training_images,
            )
        except DatasetError as exc:
            raise BoedError(str(exc)) from None
    return warnings


def _training_data(part: Any) -> bool:
    meta = getattr(part, "meta", None)
    return isinstance(meta, dict) and isinstance(meta.get("data"), dict) and bool(meta["data"])


@dataclass
class Progress:
    """What a progress callback is told after every session."""

    done: int
    total: int
    image_index: int
    policy: str
    status: str
    seconds: float
    failures: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def run_simulation(
    store: Any,
    dataset: Any,
    sampler: Sampler | None,
    classifier: Classifier,
    config: SimulationConfig,
    *,
    run_id: str | None = None,
    dataset_description: dict[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    retry_failed: bool = False,
    ranks: Group | None = None,
) -> str:
    """Simulate ``config.n_images`` images x (policies + full-image); return the run id.

    With ``run_id`` the run is resumed: sessions already done are skipped, half-written ones are
    deleted by ``store.resume_plan`` and redone (with ``retry_failed`` the failed ones too).
    ``on_start(run_id)`` is called once the run exists (so a caller can say how to resume it after
    an interruption). Raises :class:`StoreFault` when the store fails a write (the run stops
    at once; see the module docstring); ``KeyboardInterrupt`` / :class:`Terminated` after marking
    the run interrupted.

    ``ranks`` (:class:`boed.runtime.distributed.Group`, default the single process): under
    torchrun every rank calls this with the same arguments. Rank 0 creates the run (or prepares
    the resumed one) and shares its id; each rank runs the sessions of its contiguous share of the
    images that still miss a session; rank 0 alone marks the run done, after every rank has
    finished (an end-of-run gather of their timings), or ``interrupted`` if sessions are missing.
    The other ranks write the run's row only when a store write of theirs fails (``interrupted``,
    timings untouched), so no two ranks race on its status or timings (docs/scaling.md).
    """
    from boed.runtime.distributed import DistributedError, Group

    ranks = ranks if ranks is not None else Group()
    check_parts(config, sampler, classifier, dataset)
    n_images = min(config.n_images, len(dataset))
    if n_images < 1:
        raise BoedError("the dataset has no images")
    labels = list(classifier.labels)
    candidates = CandidateGrid.from_grid(config.image_size, config.patch_size, config.grid)
    target = resolve_target(config.target, labels)
    guarded = _GuardedStore(store)
    policies = (FULL_IMAGE, *config.policies)
    resumed = run_id

    def open_run() -> list[Any]:  # on rank 0: [run id, done pairs, earlier timings, images to do]
        return _open_run(guarded, store, resumed, retry_failed, ranks.enabled, n_images, policies, create)

    def create() -> str:
        return guarded.create_run(
            config.to_dict(),
            sampler=getattr(sampler, "name", config.sampler) if sampler is not None else "none",
            sampler_sha256=getattr(sampler, "sha256", None),
            classifier=getattr(classifier, "name", type(classifier).__name__),
            classifier_sha256=getattr(classifier, "sha256", None),
            dataset=dataset_description if dataset_description is not None else dataset.describe(),
            seed=config.seed,
            labels=labels,
            code_version=code_version(),
            target=target.name,
        )

    run_id, done_pairs, previous, pending = ranks.on_main(open_run, "start the run")
    done = {(str(image_id), str(policy)) for image_id, policy in done_pairs}
    indices = ranks.shard(pending)
    try:
        failures = guarded.session_counts(run_id).get("failed", 0) if done else 0
    except _StoreFailed as exc:
        raise StoreFault(run_id, exc.cause, _mark(store, run_id, "interrupted", None, exc.cause)) from None
    if on_start is not None:
        on_start(run_id)

    plan = [(i, p) for i in indices for p in policies]
    timings: dict[str, float] = {p: 0.0 for p in policies}
    t_run = time.perf_counter()
    context = _RunContext(guarded, run_id, sampler, classifier, candidates, target, config)
    width = max(1, config.batch_episodes)
    n_done = 0
    try:
        for first in range(0, len(indices), width):
            items = {i: _load_item(dataset, i) for i in indices[first : first + width]}
            for policy in policies:
                group = [(i, str(items[i]["idx"]), items[i]) for i in items]
                group = [g for g in group if (g[1], policy) not in done]
                n_done += len(items) - len(group)
                ready = [g for g in group if "error" not in g[2]]
                t0 = time.perf_counter()
                statuses: dict[int, str] = {}
                for index, image_id, item in group:  # an unreadable image: its sessions are failed
                    if "error" in item:
                        statuses[index] = _failed_session(context, index, image_id, policy, item["error"])
                if len(ready) == 1 or (ready and policy == FULL_IMAGE):
                    for index, image_id, item in ready:
                        statuses[index] = _one_session(context, index, image_id, item, policy)
                elif ready:
                    statuses |= _batch_sessions(context, ready, policy)
                seconds = (time.perf_counter() - t0) / max(1, len(group))
                for index, _image_id, _item in group:
                    n_done += 1
                    timings[policy] += seconds
                    failures += statuses[index] != "done"
                    if progress is not None:
                        progress(
                            Progress(
                                n_done,
                                len(plan),
                                index,
                                policy,
                                statuses[index],
                                seconds,
                                failures,
                                dict(timings),
                            )
                        )
        if ranks.enabled:  # waits for every rank's share; session seconds add up over ranks
            shares = ranks.gather(timings)
            timings = {p: sum(float(share[p]) for share in shares) for p in policies}
        if ranks.is_main:
            _finish_run(guarded, run_id, _timings(timings, t_run, previous), ranks, n_images * len(policies))
    except _StoreFailed as exc:
        spent = _timings(timings, t_run, previous) if ranks.is_main else None
        raise StoreFault(run_id, exc.cause, _mark(store, run_id, "interrupted", spent, exc.cause)) from None
    except DistributedError as exc:  # another rank stopped: what is stored stays, --resume continues
        spent = _timings(timings, t_run, previous) if ranks.is_main else None
        _mark(store, run_id, "interrupted", spent, str(exc))
        raise
    except KeyboardInterrupt as exc:
        why = "SIGTERM" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        if ranks.is_main:  # under torchrun every rank gets the signal; rank 0 marks the run
            _mark(store, run_id, "interrupted", _timings(timings, t_run, previous), why)
        raise
    except BaseException as exc:
        spent = _timings(timings, t_run, previous) if ranks.is_main else None
        _mark(store, run_id, "failed", spent, f"{type(exc).__name__}: {exc}")
        raise
    return run_id


def _open_run(
    guarded: _GuardedStore,
    store: Any,
    run_id: str | None,
    retry_failed: bool,
    sharded: bool,
    n_images: int,
    policies: tuple[str, ...],
    create: Callable[[], str],
) -> list[Any]:
    """Create the run (``run_id`` None) or prepare it to be resumed; on rank 0 only.

    Returns ``[run id, done (image_id, policy) pairs, earlier timings, image indices to do]``
    (JSON, so rank 0 can hand it to the other ranks). The images to do are every index on one
    process (the loop skips done pairs); with several ranks, those that still miss a session,
    so that a resumed run's remaining work is shared evenly whatever the number of ranks.
    """
    try:
        if run_id is None:
            return [create(), [], {}, list(range(n_images))]
        done = sorted(guarded.resume_plan(run_id, retry_failed=retry_failed))
        previous = _previous_timings(guarded, run_id)
        pending = list(range(n_images))
        if sharded and done:
            sessions = guarded.sessions(run_id)
            have = set(zip(sessions["image_index"].astype(int), sessions["policy"].astype(str), strict=True))
            pending = [i for i in pending if any((i, p) not in have for p in policies)]
        return [run_id, [list(pair) for pair in done], previous, pending]
    except _StoreFailed as exc:
        if run_id is None:  # nothing was written
            raise StoreError(f"the store failed before the run started: {exc.cause}") from None
        raise StoreFault(run_id, exc.cause, _mark(store, run_id, "interrupted", None, exc.cause)) from None


def _finish_run(guarded: _GuardedStore, run_id: str, final: dict, ranks: Group, expected: int) -> None:
    """Rank 0, after every rank finished: mark the run done with its timings, or ``interrupted``
    when the store holds fewer sessions than (images x policies) (a share that never ran)."""
    counts = guarded.session_counts(run_id)
    final["failed_sessions"] = counts.get("failed", 0)
    final.pop("ranks", None)  # of an earlier, sharded part
    if not ranks.enabled:
        guarded.finish_run(run_id, status="done", timings=final)
        return
    final["ranks"] = ranks.world_size
    missing = expected - sum(counts.values())
    if missing > 0:
        guarded.finish_run(
            run_id,
            status="interrupted",
            timings=final,
            error=f"{missing} of {expected} sessions missing after every rank finished; resume the run",
        )
    else:
        guarded.finish_run(run_id, status="done", timings=final)


def _mark(store: Any, run_id: str, status: str, timings: dict | None, error: str) -> bool:
    """Best effort: mark a run that stopped early (``error``: why, one line); False when the store
    cannot take even that write (the run then shows ``running``; resuming works all the same).
    The failed-session count is added when the store can still be read."""
    timings = dict(timings) if timings is not None else None
    try:
        if timings is not None:
            timings["failed_sessions"] = store.session_counts(run_id).get("failed", 0)
    except Exception:  # noqa: BLE001, S110 - a count is not worth losing the mark
        pass
    try:
        store.finish_run(run_id, status=status, timings=timings, error=error.splitlines()[0][:500])
    except Exception:  # noqa: BLE001 - the store itself failed: the caller says so
        return False
    return True


def _previous_timings(store: Any, run_id: str) -> dict[str, float]:
    """Timings recorded by the earlier parts of a resumed run (if the store keeps them); without
    the failed count, which is read from the store afresh."""
    try:
        timings = dict(store.get_run(run_id).timings or {})
    except AttributeError:
        return {}
    timings.pop("failed_sessions", None)
    return timings


def image_findings(dataset: Any, index: int) -> list[tuple[str, tuple[int, int, int, int]]] | None:
    """The located findings of image ``index``: ``[(label, (r0, c0, r1, c1)), ...]`` pixel boxes
    of the simulated image (``dataset.findings(i)``: phantoms, ChestX-ray14's
    ``BBox_List_2017.csv``), stored with each session for the report's hit rate; None where the
    dataset gives no locations for it (no ``findings``, or ``findings_known(i)`` is False)."""
    get = getattr(dataset, "findings", None)
    if not callable(get):
        return None
    known = getattr(dataset, "findings_known", None)
    if callable(known) and not known(index):
        return None
    from boed.store.records import findings_json

    # checked here, so a malformed box fails this image's sessions (not the store, not the run)
    return [(f["label"], tuple(f["box"])) for f in findings_json(list(get(index)))]


def _located(item: dict[str, Any]) -> dict[str, Any]:
    """``start_session``'s ``findings`` keyword for an item, only where there are locations (so a
    store without the column, e.g. a test double, is called as before)."""
    return {} if item.get("findings") is None else {"findings": item["findings"]}


def _load_item(dataset: Any, index: int) -> dict[str, Any]:
    try:
        return dict(dataset[index]) | {"findings": image_findings(dataset, index)}
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded per session, the run goes on
        ids = getattr(dataset, "ids", None)
        image_id = str(ids[index]) if ids is not None and index < len(ids) else f"index-{index}"
        return {"idx": image_id, "error": f"{type(exc).__name__}: {exc}"}


def log_record(store: Any, session_id: int, record: Any) -> None:
    """Write one :class:`~boed.session.StepRecord` (with its decision's diagnostics) to the store."""
    store.log_step(
        session_id,
        step=record.step,
        location=record.location,
        candidate=record.candidate,
        eig=record.eig,
        eig_map=record.eig_map,
        probs=record.probs,
        seconds=record.seconds,
        diagnostics=record.diagnostics,
    )


def _failed_session(context: _RunContext, index: int, image_id: str, policy: str, error: str) -> str:
    session_id = context.store.start_session(
        context.run_id,
        image_id=image_id,
        image_index=index,
        policy=policy,
        true_labels=[math.nan] * len(context.classifier.labels),
    )
    context.store.finish_session(session_id, status="failed", error=error)
    return "failed"


def _timings(per_policy: dict[str, float], t_run: float, previous: dict | None = None) -> dict[str, float]:
    """Seconds in total and per policy (added to ``previous`` when a run is resumed)."""
    previous = previous or {}
    now = {"total_s": time.perf_counter() - t_run} | {f"{k}_s": v for k, v in per_policy.items()}
    return {k: round(v + float(previous.get(k, 0.0)), 3) for k, v in now.items()} | {
        k: v for k, v in previous.items() if k not in now
    }


@dataclass
class _RunContext:
    store: Any
    run_id: str
    sampler: Any
    classifier: Any
    candidates: CandidateGrid
    target: Any
    config: SimulationConfig
    _prior: PriorDecision | None = None

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.classifier, "device", "cpu"))

    def prior(self) -> PriorDecision | None:
        """The shared first decision, computed once per run (seeded, so a resumed run gets the same)."""
        if not self.config.share_prior_decision or self.sampler is None:
            return None
        if self._prior is None:
            generator = torch.Generator(device=self.device).manual_seed(
                session_seed(self.config.seed, -1, "prior-decision")
            )
            self._prior = prior_decision(
                self.sampler,
                self.classifier,
                self.candidates,
                self.config.prior_completions,
                self.target,
                generator=generator,
                memory_budget=self.config.memory_budget,
                chunk=self.config.n_samples,
            )
        return self._prior


def _one_session(context: _RunContext, index: int, image_id: str, item: dict[str, Any], policy: str) -> str:
    store, run_id, sampler, classifier = context.store, context.run_id, context.sampler, context.classifier
    candidates, target, config = context.candidates, context.target, context.config
    size = config.image_size
    image = item["img"].float().reshape(1, 1, size, size).to(context.device)
    true_labels = [float(v) for v in item["lab"].reshape(-1).tolist()]
    session_id = store.start_session(
        run_id, image_id=image_id, image_index=index, policy=policy, true_labels=true_labels, **_located(item)
    )
    try:
        if policy == FULL_IMAGE:
            t0 = time.perf_counter()
            probs = predict_checked(classifier, image, torch.ones_like(image))
            store.log_step(
                session_id,
                step=0,
                location=None,
                candidate=None,
                eig=None,
                eig_map=None,
                probs=[float(v) for v in probs[0].tolist()],
                seconds=time.perf_counter() - t0,
            )
        else:
            generator = torch.Generator(device=image.device).manual_seed(
                session_seed(config.seed, index, policy)
            )
            figure = policy == "boed" and index < config.figure_sessions

            def on_step(record):
                log_record(store, session_id, record)

            def on_array(step: int, name: str, array: np.ndarray) -> None:
                store.save_array(session_id, step, name, array)

            needs_eig = get_policy(policy).needs_eig
            run_session(
                image,
                labels=item["lab"].float().reshape(-1),
                classifier=classifier,
                policy=_policy(config, policy),
                candidates=candidates,
                scans=config.scans,
                sampler=sampler,
                n_samples=config.n_samples,
                target=target,
                generator=generator,
                stopping=config.stopping,
                memory_budget=config.memory_budget,
                on_step=on_step,
                on_array=on_array if figure else None,
                figure_completions=config.figure_completions if figure else 0,
                prior_decision=context.prior if needs_eig else None,
                scans_per_step=config.scans_per_step,
            )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # one bad image must not end the run (a store fault is no Exception)
        store.finish_session(session_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    store.finish_session(session_id, status="done")
    return "done"


def _batch_sessions(
    context: _RunContext, group: list[tuple[int, str, dict[str, Any]]], policy: str
) -> dict[int, str]:
    """The sessions of ``policy`` on the images of ``group`` as the episodes of one environment.

    Each episode draws from the generator its session has at B = 1, so its steps are the same.
    The steps are kept until the whole batch has run, then written session by session; if the
    batch raises, its sessions are run again one at a time (:func:`_one_session`), so a bad image
    fails only its own session, with its own error. Returns ``{image index: status}``.
    """
    from boed.acquisition.env import ScanEnv, run_episodes

    config, classifier, device = context.config, context.classifier, context.device
    size = config.image_size
    chosen = _policy(config, policy)
    records: list[list[Any]] = [[] for _ in group]
    arrays: list[list[tuple[int, str, np.ndarray]]] = [[] for _ in group]
    try:
        env = ScanEnv(
            classifier,
            context.candidates,
            num_envs=len(group),
            sampler=context.sampler,
            n_samples=config.n_samples,
            target=context.target,
            scans=config.scans,
            memory_budget=config.memory_budget,
            prior=context.prior if chosen.needs_eig else None,
            sampler_batching=config.sampler_batching,
        )
        options = {
            "images": torch.cat([item["img"].float().reshape(1, 1, size, size) for _, _, item in group]).to(
                device
            ),
            "labels": torch.stack([item["lab"].float().reshape(-1) for _, _, item in group]),
            "generators": [
                torch.Generator(device=device).manual_seed(session_seed(config.seed, index, policy))
                for index, _, _ in group
            ],
        }
        figures = [
            b for b, (index, _, _) in enumerate(group) if policy == "boed" and index < config.figure_sessions
        ]
        run_episodes(
            env,
            chosen,
            config.scans,
            reset_options=options,
            scans_per_step=config.scans_per_step,
            stopping=config.stopping,
            on_step=lambda b, record: records[b].append(record),
            on_array=lambda b, step, name, array: arrays[b].append((step, name, array)),
            figure_episodes=figures,
            figure_completions=config.figure_completions if figures else 0,
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001 - which image? run them one at a time, each with its own error
        return {
            index: _one_session(context, index, image_id, item, policy) for index, image_id, item in group
        }
    statuses = {}
    for b, (index, image_id, item) in enumerate(group):
        statuses[index] = _write_session(context, index, image_id, item, policy, records[b], arrays[b])
    return statuses


def _write_session(
    context: _RunContext,
    index: int,
    image_id: str,
    item: dict[str, Any],
    policy: str,
    records: list[Any],
    arrays: list[tuple[int, str, np.ndarray]],
) -> str:
    """Write one finished episode of a batch as its session (as :func:`_one_session` would have)."""
    store = context.store
    true_labels = [float(v) for v in item["lab"].reshape(-1).tolist()]
    session_id = store.start_session(
        context.run_id,
        image_id=image_id,
        image_index=index,
        policy=policy,
        true_labels=true_labels,
        **_located(item),
    )
    try:
        for record in records:
            log_record(store, session_id, record)
        for step, name, array in arrays:
            store.save_array(session_id, step, name, array)
    except Exception as exc:  # noqa: BLE001 - the store refused a value of this session (a fault is no Exception)
        store.finish_session(session_id, status="failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    store.finish_session(session_id, status="done")
    return "done"
