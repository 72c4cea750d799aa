"""Training of the AVP-CNN g on partial observations (appendix B.4 of Harvey et al., "Image Completion via
Inference in Deep Generative Models" (2021)).

The model-specific layer on :mod:`boed.runtime.training` (the loop: clipping, DDP-safe skipping
of exploding updates, EMA, warm-up + cosine schedule) and :mod:`boed.runtime.data` (the
streaming data path). Each training example is an image with a mask from
``datasets.masks.classifier_masks`` (0-5 squares of 25% width, count uniform), or fully observed
(``p_full``) or fully hidden (``p_empty``); the loss is binary cross-entropy over the labels,
ignoring NaN labels. The labels are the training data's own label columns, or a chosen subset
(``labels=``), stored in the checkpoint's config. Every ``val_every`` steps the model (EMA weights
when on) is validated on fixed masks of an in-memory validation subset (``n_val`` images); the
weights with the lowest validation loss are kept. At the end a temperature is fitted on the
validation logits and the expected calibration error is reported before and after.

Files written for ``--out CKPT``:

- ``CKPT.safetensors`` + ``CKPT.json``: the best model, its temperature, config (with the labels),
  data description and provenance (``data``, ``trained_on``), metrics (the deliverable, loaded by
  :func:`classifiers.load_classifier`).
- ``CKPT.train.safetensors`` + ``CKPT.train.json``: the resume state (:mod:`boed.runtime.resume`):
  last weights, AdamW moments, EMA, progress, best weights so far; never pickled.

Runs under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU): every process reads
its own shard of each epoch, rank 0 validates and writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boed.config import override, to_dict
from boed.runtime.checkpoints import CheckpointError, checkpoint_paths
from boed.runtime.data import default_workers, global_batch_draw, image_loader, memory_subset
from boed.runtime.devices import init_distributed, resolve_device
from boed.runtime.provenance import data_record, resume_data_mismatch, trained_on
from boed.runtime.resume import load_resume, resume_path, save_resume
from boed.runtime.schedule import warmup_cosine
from boed.runtime.training import EMA, Every, Phase, TrainState, train
from classifiers.avp_cnn import AVPCNN, init_from_imagenet
from classifiers.config import ClassifierConfig, TrainConfig, classifier_preset, train_preset
from classifiers.errors import ClassifierError
from classifiers.metrics import auroc, expected_calibration_error, fit_temperature, masked_bce
from classifiers.partial import PartialClassifier, config_from_dict, save_classifier, weights_mismatch

TRAINS = "classifier"
VAL_SEED_OFFSET = 7919  # validation masks never share a stream with training masks
MASK_STREAM = 1


@dataclass
class TrainResult:
    """What a run produced: the checkpoint, its metadata, timings."""

    checkpoint: Path
    meta: dict[str, Any]
    seconds: float
    state: TrainState
    history: list[dict[str, float]] = field(default_factory=list)


def lr_schedule(config: TrainConfig) -> Callable[[int], float]:
    """Learning-rate factor of step ``s``: warm-up for ``warmup_steps``, cosine to ``min_lr_frac``."""
    return lambda s: warmup_cosine(
        s, steps=config.steps, warmup_steps=config.warmup_steps, final=config.min_lr_frac
    )


def training_masks(n: int, size: int, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, S, S)``: classifier masks, with a ``p_full`` share all-observed and ``p_empty`` all-hidden."""
    from datasets.masks import classifier_masks

    masks = classifier_masks(n, size, generator)
    u = torch.rand(n, generator=generator)
    masks[u < config.p_full] = 1.0
    masks[(u >= config.p_full) & (u < config.p_full + config.p_empty)] = 0.0
    return masks


def select_labels(
    data_labels: Sequence[str], wanted: Sequence[str] | None, what: str, prefix: str = "--labels"
) -> list[int]:
    """Column indices of ``wanted`` in ``data_labels`` (all columns when ``wanted`` is None).

    Errors start with ``prefix`` (what named the labels: the option, or the training data).
    """
    data_labels = list(data_labels)
    if wanted is None:
        return list(range(len(data_labels)))
    wanted = list(wanted)
    if not wanted:
        raise ClassifierError("--labels: give at least one label")
    if len(set(wanted)) != len(wanted):
        raise ClassifierError(f"--labels: a label is named twice in {', '.join(wanted)}")
    missing = [x for x in wanted if x not in data_labels]
    if missing:
        raise ClassifierError(
            f"{prefix}: {', '.join(missing)} not among the {what} data's labels ({', '.join(data_labels)})"
        )
    return [data_labels.index(x) for x in wanted]


def check_binary(labels: torch.Tensor, names: Sequence[str], what: str) -> None:
    """Raise :class:`ClassifierError` unless every known entry of ``labels`` ``(B, L)`` is 0 or 1."""
    bad = ~torch.isnan(labels) & (labels != 0) & (labels != 1)
    if bad.any():
        row, col = (int(v) for v in bad.nonzero()[0])
        raise ClassifierError(
            f"{what} label {names[col]!r} has the value {float(labels[row, col]):g}: a classifier "
            "label must be 0, 1 or unknown (make one binary column per class)"
        )


def batches(
    loader: Any,
    columns: list[int],
    config: TrainConfig,
    *,
    rank: int,
    start_step: int,
    names=None,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless ``(x, m, y)`` batches from step ``start_step`` on.

    ``loader`` yields ``{"img", "lab"}`` batches in the seeded epoch order of
    :class:`boed.runtime.data.EpochBatches`; the masks of step ``s`` are this rank's slice of the
    masks drawn for the whole global batch from a generator seeded by ``(seed, s)``
    (:func:`boed.runtime.data.global_batch_draw`), so a resumed run sees exactly what the
    uninterrupted run saw, whatever the number of ranks.
    """
    step = start_step
    cols = torch.tensor(columns)
    for batch in loader:
        x = batch["img"]
        y = batch["lab"].index_select(1, cols)
        if names is not None:
            check_binary(y, names, "training")

        def draw(n: int, g: torch.Generator, size: int = x.shape[-1]) -> torch.Tensor:
            return training_masks(n, size, config, g)

        # this rank's slice of the masks of the whole global batch
        masks = global_batch_draw(draw, len(x), config.seed, step, MASK_STREAM, rank, world_size)
        yield x, masks, y
        step += 1


class Validator:
    """Validation on fixed masks: classifier masks (as in training) and the full image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: Sequence[str], config: TrainConfig):
        generator = torch.Generator().manual_seed(config.seed + VAL_SEED_OFFSET)
        from datasets.masks import classifier_masks

        n, size = images.shape[0], images.shape[-1]
        self.images = images  # each image twice: under the classifier masks, then fully observed
        self.masks = torch.cat([classifier_masks(n, size, generator), torch.ones(n, 1, size, size)])
        self.labels = torch.cat([labels, labels]).float()
        self.names = list(names)
        self.n = n

    def logits(self, model: AVPCNN) -> torch.Tensor:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for s in range(0, 2 * self.n, 256):
                rows = torch.arange(s, min(s + 256, 2 * self.n))
                x = self.images[rows % self.n].to(device)
                out.append(model(x, self.masks[rows].to(device)).cpu())
        model.train(was_training)
        return torch.cat(out)

    def metrics(self, logits: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
        """Loss, mean AUROC over the labels (masked / full halves) and ECE over all labels."""
        z = logits / temperature
        probs = torch.sigmoid(z).numpy()
        lab = self.labels.numpy()
        n = self.n

        def mean_auroc(rows: slice) -> float:
            values = [auroc(probs[rows, j], lab[rows, j]) for j in range(len(self.names))]
            values = [v for v in values if not math.isnan(v)]
            return float(np.mean(values)) if values else math.nan

        return {
            "val_loss": float(masked_bce(z, self.labels)),
            "val_auroc_masked": mean_auroc(slice(0, n)),
            "val_auroc_full": mean_auroc(slice(n, 2 * n)),
            "val_ece": expected_calibration_error(probs, lab),
        }


# -- the run -------------------------------------------------------------------------------------------
def _open_split(images: str, split: str, size: int, n: int | None, data_root, seed: int, options: dict):
    from datasets import open_dataset

    return open_dataset(
        images, split=split, size=size, n=n or None, data_root=data_root, seed=seed, **options
    )


def _check_images(split: str, x: torch.Tensor, size: int, preset: str) -> None:
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[-1] != size or x.shape[-2] != size:
        raise ClassifierError(
            f"{split} images are {tuple(x.shape)}; the {preset} classifier needs (n, 1, {size}, {size})"
        )


def train_classifier(
    out: str | Path,
    *,
    preset: str = "cpu",
    images: str = "chestxray",
    data_root: str | None = None,
    device: str = "auto",
    resume: bool = False,
    imagenet_weights: str | Path | None = None,
    init: str | Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    train_set: Any = None,
    val_set: Any = None,
    labels: Sequence[str] | None = None,
    split_seed: int | None = None,
    data_options: dict[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult | None:
    """Train g and write ``out`` (see the module docstring); returns ``None`` on non-zero ranks.

    Args:
        preset: model and training preset (``cpu``, ``paper``, ``tiny``).
        images, data_root, split_seed: the data source, as for ``datasets.open_dataset``.
        data_options: further keyword arguments of ``datasets.open_dataset`` (``split_seed``,
            ``max_pixels``, ``allow_symlinks``, ``allow_modalities``, ``skip_bad``); stored with
            the resume state, so ``--resume`` reopens the same data.
        resume: continue from ``out``.train (config, labels and data from there; ``steps`` may
            be raised).
        imagenet_weights: optional local ImageNet DenseNet-121 weights (see :func:`init_from_imagenet`).
        init: warm start: a classifier checkpoint whose weights (same architecture and labels) the
            run starts from instead of a random initialisation; recorded as ``training.init`` (path
            and sha256) in the written checkpoint. Ignored when resuming (the resume state holds
            the weights).
        model_overrides, train_overrides: field overrides of the presets (unknown keys are errors).
        train_set, val_set: ready map-style datasets (``labels``, ``ds[i]``, ``describe()``)
            instead of opening ``images``.
        labels: the classifier's outputs: a subset (any order) of the training data's label
            columns; default: all of them.
        workers: DataLoader worker processes (default: one per spare core, at most 4; 0: load
            in this process).
        progress: show a rich progress bar (loss, img/s) on rank 0.
    """
    t_start = time.perf_counter()
    out = checkpoint_paths(out)[0].with_suffix("")
    mcfg = override(classifier_preset(preset), **(model_overrides or {}))
    tcfg = override(train_preset(preset), **(train_overrides or {}))
    if labels is None and (model_overrides or {}).get("labels") is not None:
        labels = list(model_overrides["labels"])
    resumed = None
    if resume:
        try:
            resumed = load_resume(out, trains=TRAINS)
        except CheckpointError as exc:
            old = checkpoint_paths(out.with_name(out.name + ".state"))[1]
            hint = f" ({old.name} is an older resume format: start the run again)" if old.is_file() else ""
            raise ClassifierError(f"--resume: {exc}{hint}") from exc
        mcfg = config_from_dict(resumed.meta["model_config"])
        saved = dict(resumed.meta["train_config"])
        saved.update({k: v for k, v in (train_overrides or {}).items() if k == "steps" and v is not None})
        tcfg = override(TrainConfig(), **{k: v for k, v in saved.items() if v is not None})
        images = resumed.meta.get("images", images)
        split_seed = resumed.meta.get("split_seed") if split_seed is None else split_seed
        data_options = resumed.meta.get("data_options") if data_options is None else data_options
        labels = list(mcfg.labels)

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise ClassifierError(str(exc)) from exc
    if dev.type == "cpu" and tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    dist = init_distributed(dev)
    if dev.type == "cuda" and dist.enabled:
        dev = torch.device("cuda", dist.local_rank)
    say = log if dist.is_main else (lambda *_: None)

    # data: the label set comes from the training data (or is a chosen subset of it)
    data_options = dict(data_options or {})
    if split_seed is not None:
        data_options["split_seed"] = split_seed
    split_seed = data_options.get("split_seed")
    if train_set is None:
        train_set = _open_split(
            images, "train", mcfg.image_size, tcfg.n_train, data_root, tcfg.seed, data_options
        )
    if val_set is None:
        val_set = _open_split(images, "val", mcfg.image_size, tcfg.n_val, data_root, tcfg.seed, data_options)
    train_cols = select_labels(train_set.labels, labels, "training")
    names = [list(train_set.labels)[j] for j in train_cols]
    val_cols = select_labels(val_set.labels, names, "validation", "the classifier's labels")
    mcfg = override(mcfg, labels=tuple(names))
    if len(train_set) < 1:
        raise ClassifierError("the training split is empty")
    if len(val_set) < 1:
        raise ClassifierError("the validation split is empty")
    _check_images("train", train_set[0]["img"][None], mcfg.image_size, preset)
    provenance = trained_on(train_set, mcfg.image_size, names)
    if resumed is not None and (why := resume_data_mismatch(resumed.meta.get("trained_on"), provenance)):
        raise ClassifierError(why)
    x_val, y_val = memory_subset(val_set, tcfg.n_val or None)
    _check_images("val", x_val, mcfg.image_size, preset)
    y_val = y_val[:, val_cols]
    check_binary(y_val, names, "validation")
    workers = default_workers() if workers is None else int(workers)
    say(
        f"data: {len(train_set)} train, {len(x_val)} val images of {mcfg.image_size}px, labels "
        f"{', '.join(names)}; device {dev}, world size {dist.world_size}, {workers} loader workers"
    )

    # model, optimiser, schedule
    torch.manual_seed(tcfg.seed)
    model = AVPCNN(mcfg)
    if imagenet_weights is not None and resumed is None:
        counts = init_from_imagenet(model, imagenet_weights)
        say(
            f"ImageNet init from {imagenet_weights}: {counts['loaded']} tensors loaded, "
            f"{counts['skipped']} not"
        )
    init_record = resumed.meta.get("init") if resumed is not None else None
    if init is not None and resumed is None:
        init_record = warm_start(model, init)
        say(f"warm start from {init_record['path']} (sha256 {init_record['sha256'][:12]}…)")
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ema = EMA(model, tcfg.ema) if tcfg.ema > 0 else None
    modules = {"model": model} | ({"ema": ema.module} if ema is not None else {})
    state = TrainState()
    best: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {"val_loss": math.inf}
    history: list[dict[str, float]] = []
    if resumed is not None:
        try:
            resumed.restore(modules, {"adamw": optimizer})
        except CheckpointError as exc:
            raise ClassifierError(f"--resume: {exc}") from exc
        best = resumed.best
        state = resumed.state
        best_metrics = resumed.meta.get("best_metrics", best_metrics)
        history = resumed.meta.get("history", [])
        say(f"resumed from {resume_path(out)} at step {state.step}")
        if state.step >= tcfg.steps:
            say(f"already at step {state.step} >= steps {tcfg.steps}; finishing")
    net: torch.nn.Module = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )

    def loss_fn(batch):
        x, m, y = (t.to(dev, non_blocking=True) for t in batch)
        return {"loss": masked_bce(net(x, m), y)}

    validator = Validator(x_val, y_val, names, tcfg) if dist.is_main else None
    eval_model = ema.module if ema is not None else model
    run_meta = {
        "model_config": to_dict(mcfg),
        "train_config": to_dict(tcfg),
        "images": images,
        "split_seed": split_seed,
        "data_options": {k: list(v) if isinstance(v, tuple) else v for k, v in data_options.items()},
        "preset": preset,
        "world_size": dist.world_size,
        "trained_on": provenance,
        "init": init_record,
    }

    def validate(st: TrainState, stats: dict[str, float]) -> None:
        nonlocal best, best_metrics
        if not dist.is_main:
            return
        metrics = validator.metrics(validator.logits(eval_model))
        record = {"step": st.step, "train_loss": stats.get("loss", math.nan), **metrics}
        history.append(record)
        improved = metrics["val_loss"] < best_metrics["val_loss"]
        if improved:
            best = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}
            best_metrics = {**metrics, "step": st.step}
        save_resume(
            out,
            trains=TRAINS,
            modules=modules,
            optimizers={"adamw": optimizer},
            state=st,
            seed=tcfg.seed,
            best=best,
            meta=run_meta | {"best_metrics": best_metrics, "history": history},
        )
        say(
            f"step {st.step}: train loss {record['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
            f"mean AUROC masked {metrics['val_auroc_masked']:.3f} "
            f"full {metrics['val_auroc_full']:.3f}" + (" *" if improved else "")
        )

    callbacks: list[Any] = [Every(tcfg.val_every, validate, last=tcfg.steps)]
    bar = None
    if progress and dist.is_main:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        task = bar.add_task("train", total=tcfg.steps, completed=state.step, info="")

        def show(st: TrainState, stats: dict[str, float]) -> None:
            bar.update(
                task,
                completed=st.step,
                info=f"loss {stats['loss']:.4f} {stats['img_per_s'] * dist.world_size:.0f} img/s",
            )

        callbacks.insert(0, show)

    phase = Phase(
        loss_fn,
        optimizer,
        schedule=lr_schedule(tcfg),
        grad_clip=tcfg.grad_clip,
        skip_threshold=tcfg.skip_threshold,
        ema=ema,
    )
    loader = image_loader(
        train_set,
        batch_size=tcfg.batch_size,
        seed=tcfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        start_step=state.step,
        workers=workers,
        pin_memory=dev.type == "cuda",
    )
    model.train()
    stream = batches(
        loader,
        train_cols,
        tcfg,
        rank=dist.rank,
        start_step=state.step,
        names=names,
        world_size=dist.world_size,
    )
    try:
        if bar is not None:
            bar.start()
        state = train(phase, stream, tcfg.steps, state=state, seed=tcfg.seed, callbacks=callbacks)
    finally:
        stream.close()  # stops the loader's workers
        if bar is not None:
            bar.stop()
    if not dist.is_main:
        return None

    # final: best weights, temperature, calibration, evaluation on the validation split
    final = AVPCNN(mcfg)
    final.load_state_dict(best if best is not None else eval_model.state_dict())
    logits = validator.logits(final)
    temperature = fit_temperature(logits, validator.labels)
    before, after = validator.metrics(logits), validator.metrics(logits, temperature)
    say(f"temperature {temperature:.3f}: val ECE {before['val_ece']:.4f} -> {after['val_ece']:.4f}")
    from classifiers.evaluate import evaluate_classifier

    clf = PartialClassifier(final, temperature=temperature)
    val_eval = evaluate_classifier(clf, x_val, y_val, label_names=names, seed=tcfg.seed)
    seconds = time.perf_counter() - t_start
    metrics = {
        "selected_step": best_metrics.get("step"),
        "val_before_temperature": before,
        "val_after_temperature": after,
        "ece_before": before["val_ece"],
        "ece_after": after["val_ece"],
        "val_evaluation": val_eval,
    }
    training = {
        "train_config": to_dict(tcfg),
        "preset": preset,
        "state": state.as_dict(),
        "world_size": dist.world_size,
        "device": str(dev),
        "wall_seconds": round(seconds, 1),
        "imagenet_weights": str(imagenet_weights) if imagenet_weights else None,
        "init": init_record,
        "history": history,
        "torch": torch.__version__,
        "loader_workers": workers,
        "images": images,
    }
    data = data_record(train_set, val_set)
    path = save_classifier(
        out,
        final,
        temperature=temperature,
        data=data,
        metrics=metrics,
        training=training,
        extra={"trained_on": provenance},
    )
    meta = json.loads(checkpoint_paths(out)[1].read_text())
    say(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {seconds:.0f} s")
    return TrainResult(checkpoint=path, meta=meta, seconds=seconds, state=state, history=history)


def warm_start(model: AVPCNN, init: str | Path) -> dict[str, Any]:
    """Load the weights of classifier checkpoint ``init`` into ``model`` (same config and labels).

    Returns ``{"path", "sha256", "trained_on"}`` of ``init`` for the new checkpoint's metadata.
    Raises one :class:`ClassifierError` line when the file does not load or does not fit.
    """
    from classifiers.partial import load_classifier

    source = load_classifier(init)
    if list(source.labels) != list(model.config.labels):
        raise ClassifierError(
            f"--init {init}: labels {', '.join(source.labels)} differ from the run's "
            f"{', '.join(model.config.labels)}"
        )
    problem = weights_mismatch(model.state_dict(), source.model.state_dict())
    if problem is not None:
        raise ClassifierError(f"--init {init}: weights do not fit the run's preset: {problem}")
    model.load_state_dict(source.model.state_dict())
    return {
        "path": str(init),
        "sha256": source.sha256,
        "trained_on": (source.meta or {}).get("trained_on"),
    }


def build_model(preset: str = "cpu", **overrides: Any) -> AVPCNN:
    """An untrained AVP-CNN of ``preset`` (fields overridable)."""
    config: ClassifierConfig = override(classifier_preset(preset), **overrides)
    return AVPCNN(config)
