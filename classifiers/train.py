"""Training of the AVP-CNN g on partial observations (appendix B.4 of 001_acb47c175b470c6b.txt).

Each training example is an image with a mask from ``datasets.masks.classifier_masks`` (0-5
squares of 25% width, count uniform), or fully observed (``p_full``) or fully hidden
(``p_empty``); the loss is binary cross-entropy over the 15 outputs, ignoring NaN labels. AdamW
with linear warm-up then cosine decay, optional EMA, gradient clipping and skipping of exploding
updates (:func:`boed.runtime.training.train`). Every ``val_every`` steps the model (EMA weights
when on) is validated on fixed masks of the validation split; the weights with the lowest
validation loss are kept. At the end a temperature is fitted on the validation logits and the
expected calibration error is reported before and after.

Files written for ``--out CKPT``:

- ``CKPT.safetensors`` + ``CKPT.json``: the best model, its temperature, config, data description,
  metrics (the deliverable, loaded by :func:`classifiers.load_classifier`).
- ``CKPT.state.safetensors`` + ``CKPT.state.json``: everything ``--resume`` needs (last weights,
  AdamW moments, EMA, RNG states, progress, best weights so far) as tensors + JSON; never pickled.

Runs under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU): every process draws
its own batches (seed + rank), rank 0 validates and writes files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from boed.config import override, to_dict
from boed.runtime.checkpoints import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint
from boed.runtime.devices import init_distributed, resolve_device
from boed.runtime.training import EMA, TrainState, train
from classifiers.avp_cnn import AVPCNN, init_from_imagenet
from classifiers.config import ClassifierConfig, TrainConfig, classifier_preset, train_preset
from classifiers.errors import ClassifierError
from classifiers.metrics import auroc, expected_calibration_error, fit_temperature, masked_bce
from classifiers.partial import PartialClassifier, config_from_dict, save_classifier

STATE_KIND = "classifier-train-state"
VAL_SEED_OFFSET = 7919  # validation masks never share a stream with training masks


@dataclass
class TrainResult:
    """What a run produced: the checkpoint, its metadata, timings."""

    checkpoint: Path
    meta: dict[str, Any]
    seconds: float
    state: TrainState
    history: list[dict[str, float]] = field(default_factory=list)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up for ``warmup_steps``, then cosine from 1 to ``min_lr_frac``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_frac + (1 - config.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def training_masks(n: int, size: int, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, S, S)``: classifier masks, with a ``p_full`` share all-observed and ``p_empty`` all-hidden."""
    from datasets.masks import classifier_masks

    masks = classifier_masks(n, size, generator)
    u = torch.rand(n, generator=generator)
    masks[u < config.p_full] = 1.0
    masks[(u >= config.p_full) & (u < config.p_full + config.p_empty)] = 0.0
    return masks


def batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    *,
    start_step: int = 0,
    rank: int = 0,
):
    """Endless ``(x, m, y)`` batches from step ``start_step`` on.

    Epoch ``e`` visits the images in a permutation seeded by ``(seed, rank, e)``, so a resumed run
    picks up in the middle of an epoch exactly; the masks are drawn from ``generator`` (whose state
    the resume file holds).
    """
    n, size = images.shape[0], images.shape[-1]
    if n < 1:
        raise ClassifierError("the training split is empty")
    bs = min(config.batch_size, n)
    per_epoch = n // bs
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + rank * 7_919 + epoch)
        )
        idx = order[k * bs : (k + 1) * bs]
        yield images[idx], training_masks(len(idx), size, config, generator), labels[idx]
        step += 1


class Validator:
    """Validation on fixed masks: classifier masks (as in training) and the full image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig):
        generator = torch.Generator().manual_seed(config.seed + VAL_SEED_OFFSET)
        from datasets.masks import classifier_masks

        n, size = images.shape[0], images.shape[-1]
        self.images = torch.cat([images, images])
        self.masks = torch.cat([classifier_masks(n, size, generator), torch.ones(n, 1, size, size)])
        self.labels = torch.cat([labels, labels]).float()
        self.n = n

    def logits(self, model: AVPCNN) -> torch.Tensor:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for s in range(0, len(self.images), 256):
                out.append(
                    model(self.images[s : s + 256].to(device), self.masks[s : s + 256].to(device)).cpu()
                )
        model.train(was_training)
        return torch.cat(out)

    def metrics(self, logits: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
        z = logits / temperature
        probs = torch.sigmoid(z).numpy()
        lab = self.labels.numpy()
        n = self.n
        return {
            "val_loss": float(masked_bce(z, self.labels)),
            "val_auroc_any_masked": auroc(probs[:n, -1], lab[:n, -1]),
            "val_auroc_any_full": auroc(probs[n:, -1], lab[n:, -1]),
            "val_ece": expected_calibration_error(probs, lab),
        }


# -- resume state as tensors + JSON ------------------------------------------------------------------
def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


def _pack_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, slots in sd["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _unpack_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(
    out: Path,
    *,
    model: AVPCNN,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    best: dict[str, torch.Tensor] | None,
    generator: torch.Generator,
    state: TrainState,
    extra: dict[str, Any],
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _pack_optimizer(optimizer)
    tensors |= opt_tensors
    if ema is not None:
        tensors |= {f"ema.{k}": v for k, v in ema.module.state_dict().items()}
    if best is not None:
        tensors |= {f"best.{k}": v for k, v in best.items()}
    tensors["rng.data"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"kind": STATE_KIND, "optimizer": opt_meta, "train_state": state.as_dict(), **extra}
    save_checkpoint(_state_path(out), tensors, meta)


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# -- the run -------------------------------------------------------------------------------------------
def _open_split(images: str, split: str, size: int, n: int | None, data_root, seed: int):
    from datasets import open_dataset

    return open_dataset(images, split=split, size=size, n=n or None, data_root=data_root, seed=seed)


def train_classifier(
    out: str | Path,
    *,
    preset: str = "cpu",
    images: str = "chestxray",
    data_root: str | None = None,
    device: str = "auto",
    resume: bool = False,
    imagenet_weights: str | Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    train_set: Any = None,
    val_set: Any = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult | None:
    """Train g and write ``out`` (see the module docstring); returns ``None`` on non-zero ranks.

    Args:
        preset: model and training preset (``cpu``, ``paper``, ``tiny``).
        images, data_root: the data source, as for ``datasets.open_dataset``.
        resume: continue from ``out``.state (config and data from there; ``steps`` may be raised).
        imagenet_weights: optional local ImageNet DenseNet-121 weights (see :func:`init_from_imagenet`).
        model_overrides, train_overrides: field overrides of the presets (unknown keys are errors).
        train_set, val_set: ready datasets (anything with ``labels``, ``tensors()``, ``describe()``)
            instead of opening ``images``.
        progress: show a rich progress bar (loss, img/s) on rank 0.
    """
    t_start = time.perf_counter()
    out = Path(out)
    if out.suffix in (".safetensors", ".json"):
        out = out.with_suffix("")
    mcfg = override(classifier_preset(preset), **(model_overrides or {}))
    tcfg = override(train_preset(preset), **(train_overrides or {}))
    resumed = None
    if resume:
        try:
            resumed = load_checkpoint(_state_path(out), kind=STATE_KIND)
        except CheckpointError as exc:
            raise ClassifierError(f"--resume: {exc}") from exc
        mcfg = config_from_dict(resumed.meta["model_config"])
        saved = dict(resumed.meta["train_config"])
        saved.update({k: v for k, v in (train_overrides or {}).items() if k == "steps" and v is not None})
        tcfg = override(TrainConfig(), **{k: v for k, v in saved.items() if v is not None})
        images = resumed.meta.get("images", images)

    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise ClassifierError(str(exc)) from exc
    if dev.type == "cpu" and tcfg.num_threads > 0:
        torch.set_num_threads(tcfg.num_threads)
    dist = init_distributed(dev)
    if dev.type == "cuda" and dist.enabled:
        dev = torch.device("cuda", dist.local_rank)
    say = log if dist.is_main else (lambda *_: None)

    # data
    if train_set is None:
        train_set = _open_split(images, "train", mcfg.image_size, tcfg.n_train, data_root, tcfg.seed)
    if val_set is None:
        val_set = _open_split(images, "val", mcfg.image_size, tcfg.n_val, data_root, tcfg.seed)
    for split, ds in (("train", train_set), ("val", val_set)):
        if tuple(ds.labels) != tuple(mcfg.labels):
            raise ClassifierError(
                f"{split} data labels {list(ds.labels)} do not match the classifier's {list(mcfg.labels)}"
            )
    x_train, y_train = train_set.tensors()
    x_val, y_val = val_set.tensors()
    for split, x in (("train", x_train), ("val", x_val)):
        if (
            x.dim() != 4
            or x.shape[1] != 1
            or x.shape[-1] != mcfg.image_size
            or x.shape[-2] != mcfg.image_size
        ):
            raise ClassifierError(
                f"{split} images are {tuple(x.shape)}; the {preset} classifier needs "
                f"(n, 1, {mcfg.image_size}, {mcfg.image_size})"
            )
    say(
        f"data: {len(x_train)} train, {len(x_val)} val images of {mcfg.image_size}px; device {dev}, "
        f"world size {dist.world_size}"
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
    model.to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ema = EMA(model, tcfg.ema) if tcfg.ema > 0 else None
    generator = torch.Generator().manual_seed(tcfg.seed * 1000 + dist.rank)
    state = TrainState()
    best: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {"val_loss": math.inf}
    history: list[dict[str, float]] = []
    if resumed is not None:
        t = {k: v.to(dev) for k, v in resumed.tensors.items()}
        model.load_state_dict(_prefixed(t, "model."))
        _unpack_optimizer(optimizer, t, resumed.meta["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(_prefixed(t, "ema."))
        best = _prefixed(resumed.tensors, "best.") or None
        generator.set_state(resumed.tensors["rng.data"])
        torch.set_rng_state(resumed.tensors["rng.torch"])
        ts = resumed.meta["train_state"]
        state = TrainState(
            step=ts["step"], skipped=ts["skipped"], images_seen=ts["images_seen"], seconds=ts["seconds"]
        )
        best_metrics = resumed.meta.get("best_metrics", best_metrics)
        history = resumed.meta.get("history", [])
        say(f"resumed from {_state_path(out)} at step {state.step}")
        if state.step >= tcfg.steps:
            say(f"already at step {state.step} >= steps {tcfg.steps}; finishing")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, tcfg),
        last_epoch=state.step - state.skipped - 1 if resumed is not None else -1,
    )
    net: torch.nn.Module = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )

    def loss_fn(batch):
        x, m, y = (t.to(dev, non_blocking=True) for t in batch)
        logits = net(x, m)
        return {"loss": masked_bce(logits, y)}

    validator = Validator(x_val, y_val, tcfg) if dist.is_main else None
    eval_model = ema.module if ema is not None else model
    run_meta = {
        "model_config": to_dict(mcfg),
        "train_config": to_dict(tcfg),
        "images": images,
        "preset": preset,
        "world_size": dist.world_size,
    }

    def validate(st: TrainState, stats: dict[str, float]) -> None:
        nonlocal best, best_metrics
        last = st.step >= tcfg.steps
        if not dist.is_main or (st.step % tcfg.val_every and not last):
            return
        metrics = validator.metrics(validator.logits(eval_model))
        record = {"step": st.step, "train_loss": stats.get("loss", math.nan), **metrics}
        history.append(record)
        improved = metrics["val_loss"] < best_metrics["val_loss"]
        if improved:
            best = {k: v.detach().cpu().clone() for k, v in eval_model.state_dict().items()}
            best_metrics = {**metrics, "step": st.step}
        save_train_state(
            out,
            model=model,
            optimizer=optimizer,
            ema=ema,
            best=best,
            generator=generator,
            state=st,
            extra=run_meta | {"best_metrics": best_metrics, "history": history},
        )
        say(
            f"step {st.step}: train loss {record['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
            f"AUROC(Any) masked {metrics['val_auroc_any_masked']:.3f} "
            f"full {metrics['val_auroc_any_full']:.3f}" + (" *" if improved else "")
        )

    callbacks = [validate]
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

    model.train()
    try:
        if bar is not None:
            bar.start()
        state = train(
            loss_fn,
            model.parameters(),
            optimizer,
            batches(x_train, y_train, tcfg, generator, start_step=state.step, rank=dist.rank),
            tcfg.steps,
            state=state,
            scheduler=scheduler,
            grad_clip=tcfg.grad_clip,
            skip_threshold=tcfg.skip_threshold,
            ema=ema,
            ema_model=model,
            callbacks=callbacks,
        )
    finally:
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
    val_eval = evaluate_classifier(clf, x_val, y_val, label_names=mcfg.labels, seed=tcfg.seed)
    final = final.to(memory_format=torch.contiguous_format)
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
        "history": history,
        "torch": torch.__version__,
    }
    data = {"train": _describe(train_set), "val": _describe(val_set), "images": images}
    path = save_classifier(out, final, temperature=temperature, data=data, metrics=metrics, training=training)
    meta = __import__("json").loads(checkpoint_paths(out)[1].read_text())
    say(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {seconds:.0f} s")
    return TrainResult(checkpoint=path, meta=meta, seconds=seconds, state=state, history=history)


def _describe(ds: Any) -> dict[str, Any]:
    try:
        return ds.describe()
    except Exception:  # noqa: BLE001 - a description is informational
        return {"type": type(ds).__name__, "n": len(ds) if hasattr(ds, "__len__") else None}


def build_model(preset: str = "cpu", **overrides: Any) -> AVPCNN:
    """An untrained AVP-CNN of ``preset`` (fields overridable)."""
    config: ClassifierConfig = override(classifier_preset(preset), **overrides)
    return AVPCNN(config)
