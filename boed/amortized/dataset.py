"""The EIG-map dataset: what the exact controller decides on training images, map by map.

Each example is one decision of the exact controller (Eq. 17 of Harvey, Naderiparizi & Wood,
"Image Completion via Inference in Deep Generative Models", 2021)::

    observed (1, S, S) = x * m    mask (1, S, S) in {0, 1}    eig (K,) nats    stderr (K,)

recorded along scan sessions on **training** images (the held-out split is never opened here:
the split is fixed to ``train``). A session makes ``scans`` decisions (maps after 0 .. scans - 1
scans); each scan is the map's argmax with probability ``1 - epsilon`` and a uniformly random
revealing candidate otherwise, so the network sees both the observations exact BOED reaches and
others around them (a mix of on- and off-policy states; with ``epsilon = 0`` only BOED's own
trajectories, which the amortised policy leaves as soon as it errs once).

The first decision of every session sees nothing; its map is the same in law for every image, so
it is computed once per dataset (with ``prior_samples`` completions, more than ``n_samples``: it
is the one map every amortised session uses, so a less noisy target is worth the few seconds),
as ``boed simulate`` shares its first decision.

Files in ``OUT``::

    manifest.json             format, config, the checkpoints' sha256, dataset description
    prior.safetensors/.json   the shared first map (a boed.runtime.checkpoints pair)
    chunk-00000.safetensors/.json ...  ``chunk`` sessions each, decided together

Each chunk is written atomically and verified by its sha256 (``boed.runtime.checkpoints``), so a
run killed at any point keeps every chunk it finished; running the same command again skips
them (resumable). A different config, classifier or sampler in the same ``OUT`` is refused.
Every session draws from generators seeded by ``(seed, image index)``, so a chunk holds the
same maps whatever was generated before it.

Chunk tensors (``n`` = maps in the chunk)::

    observed (n, 1, S, S) float32   mask (n, 1, S, S) uint8   eig (n, K) float32
    stderr (n, K) float32   entropy (n,) float32 (target entropy on the observation)
    image (n,) int64 (dataset index)   step (n,) int64 (1-based decision)   chosen (n,) int64
    random (n,) uint8 (1: the scan after this map was drawn at random)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from boed.errors import BoedError

if TYPE_CHECKING:
    from boed.protocols import Classifier, Sampler
    from boed.scanner import CandidateGrid

FORMAT = "boed-eig-maps/1"
KIND = "eig-maps"
MANIFEST = "manifest.json"
TENSORS = ("observed", "mask", "eig", "stderr", "entropy", "image", "step", "chosen", "random")


@dataclass(frozen=True)
class MapConfig:
    """What defines a map dataset (stored in its manifest; a resumed run must match it).

    Attributes:
        images: the image source (``datasets.open_dataset``); the split is always ``train``.
        n_images: sessions (one per training image, the first ``n_images`` of the split).
        scans: decisions per session (maps after 0 .. scans - 1 scans).
        n_samples: completions N per decision (the exact controller's).
        prior_samples: completions of the shared first decision.
        epsilon: probability that a scan is random instead of the map's argmax.
        chunk: sessions per chunk (decided together, classifier calls batched across them).
        seed: seeds the sessions (and which phantoms, for generated sources).
    """

    images: str = "phantoms"
    n_images: int = 200
    scans: int = 5
    n_samples: int = 10
    prior_samples: int = 40
    grid: int = 17
    image_size: int = 64
    patch_size: int = 16
    target: str = "any"
    epsilon: float = 0.5
    chunk: int = 4
    seed: int = 0
    preset: str = "cpu"
    sampler: str = "aipo"

    def __post_init__(self) -> None:
        for name in ("n_images", "scans", "n_samples", "prior_samples", "grid", "chunk"):
            if int(getattr(self, name)) < 1:
                raise BoedError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise BoedError(f"--epsilon must lie in [0, 1], got {self.epsilon}")

    @property
    def n_chunks(self) -> int:
        return -(-self.n_images // self.chunk)


def part_record(part: Any) -> dict[str, Any] | None:
    """What identifies a classifier or sampler: its checkpoint's sha256, path and training data."""
    if part is None:
        return None
    meta = getattr(part, "meta", None) or {}
    return {
        "sha256": getattr(part, "sha256", None) or meta.get("sha256"),
        "name": getattr(part, "name", None) or meta.get("name"),
        "trained_on": meta.get("trained_on"),
    }


def chunk_path(out: Path, index: int) -> Path:
    return Path(out) / f"chunk-{index:05d}"


def _seed(seed: int, image: int, what: str) -> int:
    from boed.simulate import session_seed

    return session_seed(seed, image, f"amortized-maps:{what}")


def write_manifest(out: Path, config: MapConfig, parts: dict[str, Any], dataset: dict[str, Any]) -> dict:
    """Create ``OUT/manifest.json``, or check that the one there describes the same dataset.

    Raises :class:`BoedError` (one line naming the file) when ``OUT`` holds maps of another
    config, classifier or sampler, which must not be mixed into one training set.
    """
    out = Path(out)
    record = {"format": FORMAT, "config": asdict(config), "parts": parts, "dataset": dataset}
    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BoedError(f"{path}: not a readable map-dataset manifest ({exc})") from None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise BoedError(f"{path}: not a {FORMAT} manifest; give another --out")
        for key, what in (("config", "settings"), ("parts", "classifier or sampler checkpoints")):
            if old.get(key) != json.loads(json.dumps(record[key])):
                diff = _first_difference(old.get(key) or {}, json.loads(json.dumps(record[key])))
                raise BoedError(
                    f"{path}: this folder holds maps made with other {what} ({diff}); "
                    "give another --out (maps of different settings are not mixed)"
                )
        return old
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{MANIFEST}.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise BoedError(f"--out {out}: cannot write the map dataset there: {exc.strerror or exc}") from None
    return record


def _first_difference(old: dict, new: dict) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
    return "unknown difference"


def chunk_done(out: Path, index: int) -> bool:
    """Whether chunk ``index`` is on disk and verifies (its sha256 matches its sidecar)."""
    from boed.runtime.checkpoints import _pair_verifies, checkpoint_paths

    weights, sidecar = checkpoint_paths(chunk_path(out, index))
    return _pair_verifies(weights, sidecar)


def shared_prior(
    out: Path,
    config: MapConfig,
    sampler: Sampler,
    classifier: Classifier,
    candidates: CandidateGrid,
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first decision's ``(eig (K,), stderr (K,))``: loaded from ``OUT/prior`` or computed and saved."""
    from boed.eig import eig_standard_error
    from boed.runtime.checkpoints import _pair_verifies, checkpoint_paths, load_checkpoint, save_checkpoint
    from boed.session import prior_decision

    stem = Path(out) / "prior"
    if _pair_verifies(*checkpoint_paths(stem)):
        ckpt = load_checkpoint(stem, kind=KIND)
        return ckpt.tensors["eig"].double(), ckpt.tensors["stderr"].double()
    generator = torch.Generator(device=getattr(classifier, "device", "cpu")).manual_seed(
        _seed(config.seed, -1, "prior")
    )
    prior = prior_decision(
        sampler,
        classifier,
        candidates,
        config.prior_samples,
        config.target,
        generator=generator,
        memory_budget=memory_budget,
    )
    lw = prior.completions.log_weights
    stderr = eig_standard_error(prior.ig, None if lw is None else lw.reshape(-1))
    save_checkpoint(
        stem,
        {"eig": prior.eig.double().cpu(), "stderr": stderr.double().cpu()},
        {"kind": KIND, "what": "prior", "n_samples": config.prior_samples},
    )
    return prior.eig.double(), stderr.double()


def choose(
    eig: torch.Tensor, revealing: torch.Tensor, epsilon: float, generator: torch.Generator
) -> tuple[int, bool]:
    """The argmax of ``eig`` ``(K,)`` over ``revealing`` ``(K,)`` bool, or with probability
    ``epsilon`` a uniformly random revealing candidate; returns ``(candidate, was_random)``."""
    options = revealing.nonzero().squeeze(1)
    if float(torch.rand((), generator=generator)) < epsilon:
        pick = int(torch.randint(len(options), (), generator=generator))
        return int(options[pick]), True
    scores = eig.double().masked_fill(~revealing, -torch.inf)
    return int(torch.argmax(scores)), False


def run_chunk(
    images: torch.Tensor,
    indices: Sequence[int],
    config: MapConfig,
    sampler: Sampler,
    classifier: Classifier,
    candidates: CandidateGrid,
    prior: tuple[torch.Tensor, torch.Tensor],
    memory_budget: int,
) -> dict[str, torch.Tensor]:
    """The maps of the sessions on ``images`` ``(B, 1, S, S)`` (dataset indices ``indices``).

    The B sessions run as B :class:`~boed.acquisition.Controller` s decided together
    (:func:`~boed.acquisition.controller.decide_batch`: per-episode sampler draws, one
    classifier stream); each is given only the patches of its image where it scans.
    """
    from boed.acquisition.controller import Controller, decide_batch, predict_batch
    from boed.eig import target_entropy

    device = torch.device(getattr(classifier, "device", "cpu"))
    images = images.to(device)
    ctrls = [
        Controller(
            sampler,
            classifier,
            candidates,
            config.target,
            config.n_samples,
            generator=torch.Generator(device=device).manual_seed(_seed(config.seed, int(i), "sampler")),
            memory_budget=memory_budget,
            device=device,
        )
        for i in indices
    ]
    pickers = [torch.Generator().manual_seed(_seed(config.seed, int(i), "choice")) for i in indices]
    cand = candidates.masks.to(device)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in TENSORS}
    p = candidates.patch_size
    for step in range(1, config.scans + 1):
        entropy = target_entropy(predict_batch(ctrls), ctrls[0].target).float().cpu()
        if step == 1:
            eig = prior[0][None].expand(len(ctrls), -1).cpu()
            stderr = prior[1][None].expand(len(ctrls), -1).cpu()
        else:
            decisions = decide_batch(ctrls)
            eig = torch.stack([d.eig for d in decisions]).cpu()
            stderr = torch.stack([d.stderr for d in decisions]).cpu()
        masks = torch.cat([c.mask for c in ctrls])  # (B, 1, S, S)
        unseen = (masks <= 0.5).float()
        revealing = (torch.einsum("bchw,kchw->bk", unseen, cand) > 0).cpu()
        revealing |= ~revealing.any(1, keepdim=True)
        for b, ctrl in enumerate(ctrls):
            c, was_random = choose(eig[b], revealing[b], config.epsilon, pickers[b])
            rows["observed"].append(ctrl.observed.cpu().clone())
            rows["mask"].append((ctrl.mask > 0.5).to(torch.uint8).cpu())
            rows["eig"].append(eig[b : b + 1].float())
            rows["stderr"].append(stderr[b : b + 1].float())
            rows["entropy"].append(entropy[b : b + 1])
            rows["image"].append(torch.tensor([int(indices[b])]))
            rows["step"].append(torch.tensor([step]))
            rows["chosen"].append(torch.tensor([c]))
            rows["random"].append(torch.tensor([int(was_random)], dtype=torch.uint8))
            if step < config.scans:
                row, col = candidates.location(c)
                ctrl.observe((row, col), images[b, 0, row : row + p, col : col + p])
    return {k: torch.cat(v) for k, v in rows.items()}


@dataclass
class MapProgress:
    """Handed to the progress callback after every chunk."""

    sessions_done: int
    sessions_total: int
    maps: int
    seconds: float
    skipped: bool


def generate_maps(
    out: str | Path,
    config: MapConfig,
    *,
    sampler: Sampler,
    classifier: Classifier,
    dataset: Any,
    memory_budget: int | None = None,
    progress: Callable[[MapProgress], None] | None = None,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Write the map dataset of ``config`` into ``out`` (resumable; see the module docstring).

    Args:
        dataset: the **training** split (``ds[i] -> {"img" (1, S, S), ...}``, ``describe()``);
            a dataset that describes itself as another split is refused.
        max_chunks: stop after this many new chunks (tests; None: all).

    Returns:
        ``{"chunks", "maps", "seconds", "skipped_chunks"}`` of this call.
    """
    from boed.eig import DEFAULT_MEMORY_BUDGET
    from boed.runtime.checkpoints import save_checkpoint
    from boed.scanner import CandidateGrid

    out = Path(out)
    description = dict(dataset.describe()) if hasattr(dataset, "describe") else {}
    if description.get("split") not in (None, "train"):
        raise BoedError(
            f"the map dataset is made on training images only, got the {description.get('split')!r} "
            "split (the held-out images are for evaluating the amortised policy)"
        )
    if len(dataset) < config.n_images:
        raise BoedError(f"--n-images {config.n_images}: the training split has only {len(dataset)} images")
    for name, part in (("classifier", classifier), ("sampler", sampler)):
        if int(part.image_size) != config.image_size:
            raise BoedError(
                f"the {name} takes {part.image_size} px images, the maps are for {config.image_size} px"
            )
    parts = {"classifier": part_record(classifier), "sampler": part_record(sampler)}
    write_manifest(out, config, parts, description)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    candidates = CandidateGrid.from_grid(config.image_size, config.patch_size, config.grid)
    t0 = time.perf_counter()
    prior = shared_prior(out, config, sampler, classifier, candidates, budget)
    made = skipped = maps = 0
    for index in range(config.n_chunks):
        first = index * config.chunk
        indices = list(range(first, min(first + config.chunk, config.n_images)))
        if chunk_done(out, index):
            skipped += 1
            if progress is not None:
                progress(MapProgress(indices[-1] + 1, config.n_images, 0, 0.0, True))
            continue
        if max_chunks is not None and made >= max_chunks:
            break
        t_chunk = time.perf_counter()
        items = [dataset[i] for i in indices]
        size = config.image_size
        images = torch.stack([torch.as_tensor(it["img"]).float().reshape(1, size, size) for it in items])
        tensors = run_chunk(images, indices, config, sampler, classifier, candidates, prior, budget)
        seconds = time.perf_counter() - t_chunk
        save_checkpoint(
            chunk_path(out, index),
            tensors,
            {
                "kind": KIND,
                "chunk": index,
                "images": indices,
                "image_ids": [str(it.get("idx", i)) for it, i in zip(items, indices, strict=True)],
                "maps": int(tensors["eig"].shape[0]),
                "seconds": round(seconds, 3),
            },
        )
        made += 1
        maps += int(tensors["eig"].shape[0])
        if progress is not None:
            progress(
                MapProgress(indices[-1] + 1, config.n_images, int(tensors["eig"].shape[0]), seconds, False)
            )
    return {"chunks": made, "maps": maps, "seconds": time.perf_counter() - t0, "skipped_chunks": skipped}


@dataclass
class MapSet:
    """A loaded map dataset: every chunk's tensors concatenated, plus the manifest."""

    tensors: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    prior: torch.Tensor
    seconds: float

    def __len__(self) -> int:
        return int(self.tensors["eig"].shape[0])

    @property
    def grid(self) -> int:
        return int(self.manifest["config"]["grid"])

    def split(self, val_every: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train rows, val rows)``: validation holds the sessions of every ``val_every``-th image
        (whole sessions, so no observation of a validation image is trained on)."""
        image = self.tensors["image"]
        val = (image % val_every) == 0
        return (~val).nonzero().squeeze(1), val.nonzero().squeeze(1)


def load_maps(folder: str | Path) -> MapSet:
    """Every finished chunk of the dataset in ``folder`` (a chunk that does not verify is an error
    naming it; missing chunks are simply not there yet)."""
    from boed.runtime.checkpoints import CheckpointError, load_checkpoint

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BoedError(f"--maps {folder}: no {MANIFEST} there (make one with boed amortized-maps --out DIR)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoedError(f"{path}: not a readable map-dataset manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BoedError(f"{path}: not a {FORMAT} manifest")
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in TENSORS}
    seconds = 0.0
    n_chunks = MapConfig(**manifest["config"]).n_chunks
    for index in range(n_chunks):
        stem = chunk_path(folder, index)
        if not stem.with_suffix(".json").is_file():
            continue
        try:
            ckpt = load_checkpoint(stem, kind=KIND)
        except CheckpointError as exc:
            raise BoedError(
                f"{exc} (delete the chunk and run boed amortized-maps again to redo it)"
            ) from None
        missing = [k for k in TENSORS if k not in ckpt.tensors]
        if missing:
            raise BoedError(f"{ckpt.path}: chunk lacks {', '.join(missing)}")
        for k in TENSORS:
            rows[k].append(ckpt.tensors[k])
        seconds += float(ckpt.meta.get("seconds", 0.0))
    if not rows["eig"]:
        raise BoedError(f"--maps {folder}: no finished chunk yet")
    tensors = {k: torch.cat(v) for k, v in rows.items()}
    prior = load_checkpoint(folder / "prior", kind=KIND).tensors["eig"]
    return MapSet(tensors, manifest, prior, seconds)


JOINT_KEYS = ("grid", "image_size", "patch_size", "target", "n_samples", "preset", "sampler")
"""Settings the map datasets of one training set must share (:func:`join_maps`)."""


def join_maps(sets: list[MapSet], folders: list[str | Path]) -> MapSet:
    """One training set from several map datasets (e.g. made with other ``--seed``s).

    They must be made with the same classifier and sampler checkpoints (``parts``) and the same
    grid, sizes, target, N, preset and sampler; the image indices of each further dataset are
    shifted past the previous ones, so each session stays one image and the validation split
    (:meth:`MapSet.split`) keeps whole sessions. The manifest is the first's, with ``joined``
    listing every folder's config and dataset description.

    Raises:
        BoedError: datasets that differ (one line naming the folder and the first difference).
    """
    if len(sets) == 1:
        return sets[0]
    first = sets[0].manifest
    for folder, other in zip(folders[1:], sets[1:], strict=True):
        if other.manifest["parts"] != first["parts"]:
            raise BoedError(
                f"--maps {folder}: made with other classifier or sampler checkpoints than --maps {folders[0]}"
            )
        for key in JOINT_KEYS:
            a, b = first["config"].get(key), other.manifest["config"].get(key)
            if a != b:
                raise BoedError(f"--maps {folder}: {key} {b!r} differs from {a!r} of --maps {folders[0]}")
    tensors: dict[str, list[torch.Tensor]] = {k: [] for k in sets[0].tensors}
    offset = 0
    for one in sets:
        for k, v in one.tensors.items():
            tensors[k].append(v + offset if k == "image" else v)
        offset += int(one.tensors["image"].max()) + 1
    manifest = dict(first) | {
        "joined": [
            {"folder": str(f), "config": m.manifest["config"], "dataset": m.manifest.get("dataset")}
            for f, m in zip(folders, sets, strict=True)
        ]
    }
    joined = {k: torch.cat(v) for k, v in tensors.items()}
    return MapSet(joined, manifest, sets[0].prior, sum(m.seconds for m in sets))
