"""The evaluation engine: every sampler on the same held-out images and masks, cached per chunk.

Work is cut into **chunks** of ``chunk_size`` consecutive image indices (``chunks(n, size)``); a
chunk's masks and draws come from generators seeded by ``(seed, setting, chunk start)`` only, so a
chunk's result does not depend on which process evaluates it or on which other chunks ran. For
each sampler and chunk, :func:`evaluate_chunk` returns per-image arrays (:data:`IMAGE_AXIS` says
along which axis each is per image) and :class:`ChunkCache` stores them as
``DIR/cache/<sampler>/chunk-<start>-<stop>.safetensors`` (written atomically), with the
configuration's fingerprint in ``DIR/cache/<sampler>/meta.json``; :func:`merge` concatenates
chunks by image index. Features of every image are kept, so the Fréchet distances are computed
after merging (a later torchrun rank split only has to hand out chunks and merge; H-scale).

Settings (one mask distribution each, ``datasets.masks``):

* ``squares-k`` for k = 0..5: exactly k observed squares of side 35 % (the FID-n of Fig. 3 of
  Harvey, Naderiparizi & Wood 2021);
* ``holes``: everything observed but one square of side 35 % (their "FID (holes)", Table 1);
* any name of ``datasets.masks.MASKS`` (``aipo``, ``three_squares``, ``blob``, ``centre_square``).

The fidelity and pixel-diversity functions come from the caller (:class:`Scorers`; the CLI passes
``generative.metrics.fidelity`` / ``summarise`` and ``generative.evaluation.pairwise_distance``),
because boed/ never imports generative/.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from boed.errors import BoedError
from boed.evaluation import metrics as M

SQUARE_SETTINGS = tuple(f"squares-{k}" for k in range(6))
SIDE_FRAC = 0.35
MASK_ALIASES = {"centre": "centre_square", "center": "centre_square", "three-squares": "three_squares"}
FIDELITY_KEYS = ("l1", "mse", "maem", "psnr", "ssim")

# axis along which each cached array is per image (merge concatenates along it)
IMAGE_AXIS = {
    "index": 0,
    "real_features": 0,
    "real_probs": 0,
    "observed_frac": 1,
    "log_weights": 1,
    "div_pixel": 1,
    "div_feature": 1,
    "features": 1,
    "probs": 1,
    "obs_probs": 1,
    "rank": 1,
    "truth_bpd": 1,
    "truth_rank": 1,
    **{f"fid_{k}": 1 for k in FIDELITY_KEYS},
}


@dataclass(frozen=True)
class Scorers:
    """Fidelity functions of the completions (see :mod:`generative.metrics`).

    ``fidelity(completions (n, B, 1, H, W), truth (B, 1, H, W), mask) -> {key: (n, B)}`` with the
    keys of :data:`FIDELITY_KEYS`; ``summarise({key: (n, B)}, log_weights) -> {key, key_best}``;
    ``pairwise(completions) -> (l1 (B,), l2 (B,))``.
    """

    fidelity: Callable[..., dict[str, torch.Tensor]]
    summarise: Callable[..., dict[str, float]]
    pairwise: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def normalise_setting(name: str) -> str:
    """The canonical name of a setting (``centre`` → ``centre_square``); BoedError for unknown ones."""
    from datasets.masks import MASKS

    name = MASK_ALIASES.get(name.strip(), name.strip())
    if name in SQUARE_SETTINGS or name == "holes" or name in MASKS and name not in ("squares", "classifier"):
        return name
    valid = [*SQUARE_SETTINGS, "holes", *(m for m in MASKS if m not in ("squares", "classifier"))]
    raise BoedError(f"--masks: unknown mask setting {name!r}; valid: {', '.join(valid)}")


def setting_masks(setting: str, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, S, S)`` masks (1 = observed) of ``setting``."""
    from datasets.masks import MASKS, squares_masks

    if setting.startswith("squares-"):
        return squares_masks(n, size, int(setting.split("-")[1]), SIDE_FRAC, generator)
    if setting == "holes":
        return 1.0 - squares_masks(n, size, 1, SIDE_FRAC, generator)
    return MASKS[setting](n, size, generator=generator)


def stream_seed(*parts: Any) -> int:
    """A 31-bit seed from ``parts`` (crc32 of their text), stable across processes and runs."""
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of consecutive image indices ``0..n`` in chunks of ``size``."""
    if size < 1:
        raise BoedError(f"--chunk-size must be at least 1, got {size}")
    return [(a, min(a + size, n)) for a in range(0, n, size)]


@dataclass(frozen=True)
class EvalConfig:
    """What defines an evaluation's per-image results (its fingerprint keys the cache)."""

    settings: tuple[str, ...] = (*SQUARE_SETTINGS, "holes")
    n_samples: int = 10
    seed: int = 0
    chunk_size: int = 25
    batch: int = 8
    target: str = "Any"

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise BoedError(f"--n-samples must be at least 1, got {self.n_samples}")
        if self.batch < 1:
            raise BoedError(f"batch must be at least 1, got {self.batch}")
        chunks(1, self.chunk_size)

    def fingerprint(self, **parts: Any) -> dict[str, Any]:
        """The config plus ``parts`` (sampler / classifier sha256, data fingerprint) as a JSON-able dict."""
        return {**asdict(self), "settings": list(self.settings), **parts}


def _likelihood(sampler: Any, x: torch.Tensor, m: torch.Tensor, done: Any, seed: int) -> tuple:
    """``(truth bits/dim (B,), truth rank (B,))`` where the sampler has a likelihood, else NaN.

    * a model with ``log_prob(x, mask)`` (exact ``log p(x_missing | observed)``, the Pixel
      Constrained CNN): bits per missing pixel, and the ground truth's rank among itself and the
      completions' ``info["log_likelihood"]`` (§5.4 of Dupont & Suresha 2019; 1 = most likely);
    * a model with ``bounds`` (the hierarchical VAE of AIPO): the Eq. 10 bound on
      ``−log p(I | Î)`` of Harvey et al. (2021) in bits per pixel of the image (no rank: the
      completions have no exact likelihood).
    """
    b = len(x)
    nan = torch.full((b,), math.nan)
    model = getattr(sampler, "model", None)
    info = done.info or {}
    missing = (1 - m).flatten(1).sum(1).clamp_min(1)
    if hasattr(model, "log_prob") and "log_likelihood" in info:
        truth = model.log_prob(x, m).double().cpu()
        bpd = (-truth / (missing.double() * math.log(2))).float()
        rank = (1 + (info["log_likelihood"].double().cpu() > truth[None]).sum(0)).float()
        return torch.where(missing > 0, bpd, nan), rank
    if hasattr(model, "bounds"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cond = model.bounds(x, m)["cond"].double().cpu()
        return (-cond / (x[0].numel() * math.log(2))).float(), nan
    return nan, nan


def evaluate_chunk(
    sampler: Any,
    classifier: Any,
    images: torch.Tensor,
    start: int,
    config: EvalConfig,
    scorers: Scorers,
) -> dict[str, torch.Tensor]:
    """Per-image arrays (:data:`IMAGE_AXIS`) of the chunk ``images`` ``(B, 1, S, S)`` whose first
    image is image index ``start``; S settings, n completions, F features, L labels:

    ``index (B,)``, ``real_features (B, F)``, ``real_probs (B, L)`` (the classifier on the full
    true image), and per setting ``observed_frac (S, B)``, ``fid_<key> (S, B, n)`` (fidelity),
    ``log_weights (S, B, n)`` (NaN for unweighted samplers), ``div_pixel``, ``div_feature``
    ``(S, B)`` (NaN for n = 1), ``features (S, B, F)`` of the first completion, ``probs
    (S, B, n, L)`` of every completion, ``obs_probs (S, B, L)`` (the classifier on x⊙m),
    ``rank (S, B)`` (calibration rank of the target), ``truth_bpd``, ``truth_rank (S, B)``.
    """
    labels = list(classifier.labels)
    if config.target not in labels:
        raise BoedError(f"target {config.target!r} is not a label of the classifier ({', '.join(labels)})")
    t = labels.index(config.target)
    b, size, n = len(images), images.shape[-1], config.n_samples
    full = torch.ones_like(images)
    out: dict[str, list] = {}
    for setting in config.settings:
        masks = setting_masks(
            setting, b, size, torch.Generator().manual_seed(stream_seed(config.seed, setting, start, "mask"))
        )
        gen = torch.Generator().manual_seed(stream_seed(config.seed, setting, start, "sample"))
        rank_gen = torch.Generator().manual_seed(stream_seed(config.seed, setting, start, "rank"))
        row: dict[str, list] = {}
        for i in range(0, b, config.batch):
            x, m = images[i : i + config.batch], masks[i : i + config.batch]
            done = sampler.sample(x * m, m, n, generator=gen)
            comp = done.images.detach().cpu().float()  # (n, k, 1, S, S)
            k = comp.shape[1]
            for key, v in scorers.fidelity(comp, x, m).items():
                row.setdefault(f"fid_{key}", []).append(v.T)  # (k, n)
            lw = done.log_weights
            row.setdefault("log_weights", []).append(
                torch.full((k, n), math.nan) if lw is None else lw.detach().cpu().float().T
            )
            flat = comp.flatten(0, 1)
            feats = classifier.features(flat, torch.ones_like(flat)).cpu().float().view(n, k, -1)
            probs = classifier.predict(flat, torch.ones_like(flat)).cpu().float().view(n, k, -1)
            obs = classifier.predict(x * m, m).cpu().float()  # (k, L)
            truth_p = classifier.predict(x, torch.ones_like(x)).cpu().float()[:, t]
            row.setdefault("features", []).append(feats[0])
            row.setdefault("probs", []).append(probs.transpose(0, 1))
            row.setdefault("obs_probs", []).append(obs)
            row.setdefault("rank", []).append(M.calibration_ranks(truth_p, probs[..., t], rank_gen).float())
            if n > 1:
                row.setdefault("div_pixel", []).append(scorers.pairwise(comp)[0].float())
                row.setdefault("div_feature", []).append(M.feature_diversity(feats))
            else:
                row.setdefault("div_pixel", []).append(torch.full((k,), math.nan))
                row.setdefault("div_feature", []).append(torch.full((k,), math.nan))
            bpd, grank = _likelihood(
                sampler, x, m, done, stream_seed(config.seed, setting, start + i, "bound")
            )
            row.setdefault("truth_bpd", []).append(bpd)
            row.setdefault("truth_rank", []).append(grank)
            row.setdefault("observed_frac", []).append(m.flatten(1).mean(1))
        for key, parts in row.items():
            out.setdefault(key, []).append(torch.cat(parts))
    result = {key: torch.stack(v) for key, v in out.items()}  # (S, B, ...)
    result["index"] = torch.arange(start, start + b)
    result["real_features"] = classifier.features(images, full).cpu().float()
    result["real_probs"] = classifier.predict(images, full).cpu().float()
    return {k: v.contiguous() for k, v in result.items()}


def merge(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate chunk results along their image axes, ordered by image index."""
    if not parts:
        raise BoedError("nothing to merge: no chunk was evaluated")
    parts = sorted(parts, key=lambda p: int(p["index"][0]))
    keys = parts[0].keys()
    return {k: torch.cat([p[k] for p in parts], dim=IMAGE_AXIS.get(k, 0)) for k in keys}


class ChunkCache:
    """Per-(sampler, chunk) results in ``root/<sampler>/`` with the fingerprint in ``meta.json``.

    A folder made with another fingerprint is refused (:class:`BoedError` naming the folder and
    the keys that differ), so results of different settings never mix; nothing is deleted.
    """

    def __init__(self, root: Path, sampler: str, fingerprint: dict[str, Any]):
        self.folder = Path(root) / sampler
        self.fingerprint = json.loads(json.dumps(fingerprint))
        meta = self.folder / "meta.json"
        if meta.is_file():
            try:
                stored = json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise BoedError(
                    f"{meta}: unreadable cache description ({exc}); move the folder away"
                ) from None
            differ = sorted(
                k for k in set(stored) | set(self.fingerprint) if stored.get(k) != self.fingerprint.get(k)
            )
            if differ:
                raise BoedError(
                    f"{self.folder}: cached with other settings ({', '.join(differ)} differ); use another "
                    "--out or move that folder away"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            _atomic_write(meta, json.dumps(self.fingerprint, indent=1).encode())

    def path(self, start: int, stop: int) -> Path:
        return self.folder / f"chunk-{start:06d}-{stop:06d}.safetensors"

    def load(self, start: int, stop: int) -> dict[str, torch.Tensor] | None:
        """The cached chunk, or None when absent or unreadable (then it is recomputed)."""
        from safetensors.torch import load_file

        path = self.path(start, stop)
        if not path.is_file():
            return None
        try:
            data = load_file(path)
        except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed, not trusted
            return None
        if "index" not in data or data["index"].tolist() != list(range(start, stop)):
            return None
        return data

    def save(self, start: int, stop: int, data: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save

        path = self.path(start, stop)
        _atomic_write(path, save({k: v.contiguous() for k, v in data.items()}))
        return path

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        _atomic_write(self.folder / name, json.dumps(value, indent=1).encode())

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def evaluate_sampler(
    sampler: Any,
    classifier: Any,
    images: torch.Tensor,
    config: EvalConfig,
    scorers: Scorers,
    cache: ChunkCache,
    *,
    indices: list[tuple[int, int]] | None = None,
    on_chunk: Callable[[int, int, bool], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Evaluate (or load from ``cache``) the chunks ``indices`` (default: all of ``images``) and merge.

    ``images`` ``(N, 1, S, S)`` are the held-out images by index; ``on_chunk(start, stop, cached)``
    is called after each chunk.
    """
    parts = []
    for start, stop in indices or chunks(len(images), config.chunk_size):
        data = cache.load(start, stop)
        cached = data is not None
        if data is None:
            data = evaluate_chunk(sampler, classifier, images[start:stop], start, config, scorers)
            cache.save(start, stop, data)
        parts.append(data)
        if on_chunk is not None:
            on_chunk(start, stop, cached)
    return merge(parts)


# -- cost --------------------------------------------------------------------------------------------
@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the duration."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_tensor_memory(fn: Callable[[], Any]) -> float:
    """Peak live CPU tensor memory (MiB) while ``fn()`` runs, at operator granularity.

    ``torch.profiler`` with ``profile_memory=True`` records each operator's own allocations
    minus frees; their running sum in time order is the live memory and its maximum the peak.
    Used instead of the process's resident size, which glibc's reuse of freed heap pages hides
    after earlier work (measured: 0.1 MiB for AIPO after a chunk against 37 MiB here, in a fresh
    process as after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = top = 0
    for e in events:
        live += e.self_cpu_memory_usage
        top = max(top, live)
    return top / 2**20


def measure_cost(
    sampler: Any, image: torch.Tensor, mask: torch.Tensor, *, n: int = 10, repeats: int = 3
) -> dict[str, float]:
    """Median seconds for ``n`` completions of one image ``(1, 1, S, S)`` over ``repeats`` runs and
    the peak memory of one call: the CUDA peak allocation on a GPU, else the peak live CPU tensor
    memory of one more (profiled, untimed) call, :func:`peak_tensor_memory`."""
    device = getattr(sampler, "device", None)
    cuda = torch.cuda.is_available() and str(device or "cpu").startswith("cuda")
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for r in range(repeats):
        t0 = time.perf_counter()
        sampler.sample(image * mask, mask, n, generator=torch.Generator().manual_seed(r))
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_tensor_memory(
            lambda: sampler.sample(image * mask, mask, n, generator=torch.Generator().manual_seed(0))
        )
    times.sort()
    return {"seconds_per_10": times[len(times) // 2] * 10 / n, "peak_mib": peak, "repeats": repeats}


@dataclass
class SamplerResult:
    """What the report needs of one sampler: its merged arrays, cost and notes."""

    name: str
    arrays: dict[str, torch.Tensor]
    cost: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    deterministic: bool = False


def grid_samples(
    sampler: Any, images: torch.Tensor, settings: tuple[str, ...], *, n: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Completions for the sample grid: every image of ``images`` ``(R, 1, S, S)`` under every
    setting, with masks seeded by ``(seed, setting, "grid")`` only, so every sampler gets the same
    inputs. Returns ``truth``, ``mask`` ``(R·len(settings), S, S)``, ``completions`` ``(…, n, S, S)``
    and the ``setting`` name of each row."""
    truth, masks, comps, names = [], [], [], []
    size = images.shape[-1]
    for setting in settings:
        m = setting_masks(
            setting, len(images), size, torch.Generator().manual_seed(stream_seed(seed, setting, "grid"))
        )
        gen = torch.Generator().manual_seed(stream_seed(seed, setting, "grid-sample"))
        done = sampler.sample(images * m, m, n, generator=gen).images.detach().cpu()  # (n, R, 1, S, S)
        truth.append(images[:, 0])
        masks.append(m[:, 0])
        comps.append(done[:, :, 0].transpose(0, 1))
        names += [setting] * len(images)
    return {
        "truth": torch.cat(truth),
        "mask": torch.cat(masks),
        "completions": torch.cat(comps),
        "setting": names,
    }
