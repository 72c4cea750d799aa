"""Training of the value network on the EIG-map dataset, on the project's one training loop.

The network ``f(x * m, m)`` (``boed.amortized.model``) is fitted to the exact controller's maps
``e`` (``boed.amortized.dataset``) with two terms, both over the candidates that reveal something
new (the others are never chosen and are exactly 0 in the exact map)::

    L = mean_c ((f_c - e_c) / s)^2                                    (regression, MSE)
      + lambda * CE( softmax(e / tau), softmax(f / tau) )             (listwise ranking)

``s`` is the spread of the training maps (``target_scale``, saved in the checkpoint). The
regression makes the prediction an EIG in nats, which the stopping rule compares with a
threshold. The ranking term is ListNet's top-one cross-entropy (Cao, Qin, Liu, Tsai & Li,
"Learning to Rank: From Pairwise Approach to Listwise Approach", ICML 2007, Eq. 5 with the
top-one probability of their Definition 6): the policy only takes the argmax, and MSE spends as
much of the fit on the many poor candidates as on the few good ones; the softmax puts the weight
where the best candidates are. Its temperature ``tau`` of each map is the median Monte Carlo
standard error of that map's estimates (``stderr`` in the dataset): candidates whose exact EIG
differs by less than its noise share the target's mass, so the network is not asked to rank what
the exact controller could not rank either.

Why a supervised surrogate and not DIME's objective: DIME (Gadgil, Covert & Lee, "Estimating
Conditional Mutual Information for Dynamic Feature Selection", arXiv:2306.03301) regresses the
value network on the *realised* loss improvement of a jointly trained predictor, which converges
to the conditional mutual information without a generative model; here the classifier and the
sampler are fixed and the point is to reproduce what the exact controller would choose, so the
exact controller's estimate (the same quantity, Eq. 17, with less variance) is the target.

Validation: the sessions of every 10th training image (whole sessions), scored each
``val_every`` steps; the weights with the lowest validation loss are kept. Metrics: loss, MSE
(nats^2), top-1 agreement with the exact argmax, mean regret ``e[argmax e] - e[argmax f]`` (nats)
and its share of the random policy's regret, and the share of maps whose pick lies within two
standard errors of the exact best (as good as the exact controller can tell); the checkpoint
keeps them for all validation maps and, under ``by_step``, for the maps of each decision step
(step 2: the choice of the second scan), since a network can be good on average and poor at one
step.

Files for ``--out CKPT``: ``CKPT.safetensors`` + ``CKPT.json`` (kind ``amortized-eig``: config,
the classifier's and sampler's sha256 the maps were made with, the map dataset's description,
metrics) and the resume pair ``CKPT.train.*`` (:mod:`boed.runtime.resume`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812

from boed.amortized.dataset import MapSet, join_maps, load_maps
from boed.amortized.model import EIGMapNet, EIGNetConfig
from boed.errors import BoedError

KIND = "amortized-eig"
TRAINS = "amortized-eig"


@dataclass(frozen=True)
class AmortizedTrainConfig:
    """Optimisation settings (saved with the checkpoint)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 5e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_frac: float = 0.05
    grad_clip: float = 5.0
    skip_threshold: float = 1e3
    ema: float = 0.995
    rank_weight: float = 0.0
    val_every: int = 250
    val_images_every: int = 10
    width: int = 32
    seed: int = 0


def revealing_rows(mask: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` bool: candidates revealing an unseen pixel, from ``mask`` ``(B, 1, S, S)`` and the
    candidates' patch masks ``pool`` ``(K, 1, S, S)`` (every row has at least one True)."""
    reveals = torch.einsum("bchw,kchw->bk", (mask <= 0.5).float(), pool) > 0
    return reveals | ~reveals.any(1, keepdim=True)


def map_loss(
    pred: torch.Tensor,
    eig: torch.Tensor,
    stderr: torch.Tensor,
    reveals: torch.Tensor,
    scale: float,
    rank_weight: float,
) -> dict[str, torch.Tensor]:
    """The loss of the module docstring on a batch: ``pred``, ``eig``, ``stderr`` ``(B, K)``,
    ``reveals`` ``(B, K)`` bool. Returns ``{"loss", "mse", "rank"}`` (scalars)."""
    w = reveals.float()
    n = w.sum(1).clamp_min(1.0)
    mse = ((((pred - eig) / scale) ** 2 * w).sum(1) / n).mean()
    tau = torch.stack(
        [s[r].median() if r.any() else s.new_tensor(1.0) for s, r in zip(stderr, reveals, strict=True)]
    )
    tau = tau.clamp_min(1e-3 * scale)[:, None]
    neg = torch.finfo(pred.dtype).min
    target = F.softmax((eig / tau).masked_fill(~reveals, neg), dim=1)
    logp = F.log_softmax((pred / tau).masked_fill(~reveals, neg), dim=1)
    rank = -(target * logp.masked_fill(~reveals, 0.0)).sum(1).mean()
    return {"loss": mse + rank_weight * rank, "mse": mse, "rank": rank}


def decision_metrics(
    pred: torch.Tensor, eig: torch.Tensor, stderr: torch.Tensor, reveals: torch.Tensor
) -> dict[str, float]:
    """How good the predicted argmax is by the exact map, over maps ``(B, K)``."""
    neg = -torch.inf
    best = eig.masked_fill(~reveals, neg).argmax(1)
    pick = pred.masked_fill(~reveals, neg).argmax(1)
    rows = torch.arange(len(eig))
    e_best, e_pick = eig[rows, best], eig[rows, pick]
    e_mean = (eig * reveals).sum(1) / reveals.sum(1).clamp_min(1)
    regret = e_best - e_pick
    random_regret = (e_best - e_mean).clamp_min(1e-12)
    return {
        "top1": float((best == pick).float().mean()),
        "regret": float(regret.mean()),
        "regret_vs_random": float(regret.sum() / random_regret.sum()),
        "within_2se": float((e_pick >= e_best - 2 * stderr[rows, best]).float().mean()),
        "mse_nats2": float((((pred - eig) ** 2) * reveals).sum() / reveals.sum().clamp_min(1)),
    }


@dataclass
class AmortizedTrainResult:
    checkpoint: Path
    meta: dict[str, Any]
    seconds: float


def _tensors(maps: MapSet, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    t = maps.tensors
    return {
        "observed": t["observed"][rows].float(),
        "mask": t["mask"][rows].float(),
        "eig": t["eig"][rows].float(),
        "stderr": t["stderr"][rows].float(),
    }


def train_amortized(
    maps_folder: str | Path | list[str | Path],
    out: str | Path,
    config: AmortizedTrainConfig | None = None,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> AmortizedTrainResult:
    """Train the value network on the maps in ``maps_folder`` (one folder, or a list of folders
    joined by :func:`boed.amortized.dataset.join_maps`) and write ``out`` (module docstring)."""
    from boed.runtime.checkpoints import CheckpointError, checkpoint_paths, save_checkpoint
    from boed.runtime.data import EpochBatches
    from boed.runtime.resume import load_resume, save_resume
    from boed.runtime.schedule import ema_warmup, warmup_cosine
    from boed.runtime.training import EMA, Every, Phase, TrainState, train

    t_start = time.perf_counter()
    config = config or AmortizedTrainConfig()
    out = checkpoint_paths(out)[0].with_suffix("")
    folders = list(maps_folder) if isinstance(maps_folder, (list, tuple)) else [maps_folder]
    maps = join_maps([load_maps(f) for f in folders], folders)
    maps_folder = ", ".join(str(f) for f in folders)
    mc = maps.manifest["config"]
    train_rows, val_rows = maps.split(config.val_images_every)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise BoedError(
            f"--maps {maps_folder}: {len(maps)} maps of {int(maps.tensors['image'].max()) + 1} images "
            f"are too few to hold out every {config.val_images_every}-th image for validation; make more maps"
        )
    train_t, val_t = _tensors(maps, train_rows), _tensors(maps, val_rows)
    net_cfg = EIGNetConfig(
        image_size=int(mc["image_size"]),
        patch_size=int(mc["patch_size"]),
        grid=int(mc["grid"]),
        width=config.width,
        target=str(mc["target"]),
    )
    from boed.scanner import CandidateGrid

    cand = CandidateGrid.from_grid(net_cfg.image_size, net_cfg.patch_size, net_cfg.grid).masks
    train_rev = revealing_rows(train_t["mask"], cand)
    val_rev = revealing_rows(val_t["mask"], cand)
    scale = float(train_t["eig"][train_rev].std().clamp_min(1e-6))
    net_cfg = replace(net_cfg, target_scale=scale)

    torch.manual_seed(config.seed)
    model = EIGMapNet(net_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # the EMA's warm-up: a short run's average does not hold on to the initial weights
    ema = EMA(model, lambda s: ema_warmup(s, config.ema)) if config.ema > 0 else None
    modules = {"model": model} | ({"ema": ema.module} if ema is not None else {})
    state, best, best_metrics, history = TrainState(), None, {"val_loss": math.inf}, []
    if resume:
        try:
            resumed = load_resume(out, trains=TRAINS)
            resumed.restore(modules, {"adamw": optimizer})
        except CheckpointError as exc:
            raise BoedError(f"--resume: {exc}") from None
        state, best = resumed.state, resumed.best
        best_metrics = resumed.meta.get("best_metrics", best_metrics)
        history = resumed.meta.get("history", [])
        log(f"resumed from step {state.step}")

    sampler = EpochBatches(len(train_rows), config.batch_size, seed=config.seed, start_step=state.step)

    def batches():
        for idx in sampler:
            rows = torch.tensor(idx)
            yield {k: v[rows] for k, v in train_t.items()} | {"reveals": train_rev[rows]}

    def loss_fn(batch):
        pred = model(batch["observed"], batch["mask"])
        return map_loss(pred, batch["eig"], batch["stderr"], batch["reveals"], scale, config.rank_weight)

    eval_model = ema.module if ema is not None else model

    def predict(net) -> torch.Tensor:
        net.eval()
        with torch.inference_mode():
            out_ = torch.cat(
                [
                    net(val_t["observed"][s : s + 256], val_t["mask"][s : s + 256])
                    for s in range(0, len(val_rows), 256)
                ]
            )
        return out_

    def validate(st: TrainState, stats: dict[str, float]) -> None:
        nonlocal best, best_metrics
        pred = predict(eval_model)
        losses = map_loss(pred, val_t["eig"], val_t["stderr"], val_rev, scale, config.rank_weight)
        metrics = {"val_loss": float(losses["loss"])} | decision_metrics(
            pred, val_t["eig"], val_t["stderr"], val_rev
        )
        record = {"step": st.step, "train_loss": stats.get("loss", math.nan)} | metrics
        history.append(record)
        improved = metrics["val_loss"] < best_metrics["val_loss"]
        if improved:
            best = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
            best_metrics = metrics | {"step": st.step}
        save_resume(
            out,
            trains=TRAINS,
            modules=modules,
            optimizers={"adamw": optimizer},
            state=st,
            seed=config.seed,
            best=best,
            meta={"train_config": asdict(config), "best_metrics": best_metrics, "history": history},
        )
        log(
            f"step {st.step}: train loss {record['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
            f"top-1 {metrics['top1']:.2f}, within 2 se {metrics['within_2se']:.2f}, "
            f"regret {metrics['regret_vs_random']:.2f} of random's" + (" *" if improved else "")
        )
        model.train()

    callbacks: list[Any] = [Every(config.val_every, validate, last=config.steps)]
    if progress is not None:
        callbacks.insert(0, lambda st, stats: progress(st.step, config.steps, stats))
    phase = Phase(
        loss_fn,
        optimizer,
        schedule=lambda s: warmup_cosine(
            s, steps=config.steps, warmup_steps=config.warmup_steps, final=config.min_lr_frac
        ),
        grad_clip=config.grad_clip,
        skip_threshold=config.skip_threshold,
        ema=ema,
    )
    log(
        f"maps: {len(train_rows)} train, {len(val_rows)} val (every {config.val_images_every}-th image); "
        f"target scale {scale:.4f} nats; {sum(p.numel() for p in model.parameters())} parameters"
    )
    model.train()
    if state.step < config.steps:
        state = train(phase, batches(), config.steps, state=state, seed=config.seed, callbacks=callbacks)
    final = EIGMapNet(net_cfg)
    final.load_state_dict(best if best is not None else eval_model.state_dict())
    final.eval()
    with torch.inference_mode():
        pred = predict(final)
    val_steps = maps.tensors["step"][val_rows]
    metrics = decision_metrics(pred, val_t["eig"], val_t["stderr"], val_rev) | {
        "by_step": {
            str(int(k)): decision_metrics(pred[r], val_t["eig"][r], val_t["stderr"][r], val_rev[r])
            | {"maps": int(r.sum())}
            for k in val_steps.unique()
            for r in [val_steps == k]
        },
        "val_loss": best_metrics.get("val_loss"),
        "selected_step": best_metrics.get("step"),
        "val_maps": len(val_rows),
        "train_maps": len(train_rows),
    }
    seconds = time.perf_counter() - t_start
    meta = {
        "kind": KIND,
        "config": asdict(net_cfg),
        "parts": maps.manifest["parts"],
        "maps": {
            "config": mc,
            "dataset": maps.manifest.get("dataset"),
            **({"joined": maps.manifest["joined"]} if "joined" in maps.manifest else {}),
            "n_maps": len(maps),
            "generation_seconds": round(maps.seconds, 1),
        },
        "metrics": metrics,
        "training": {
            "train_config": asdict(config),
            "state": state.as_dict(),
            "wall_seconds": round(seconds, 1),
            "history": history,
            "torch": torch.__version__,
        },
    }
    path = save_checkpoint(out, final.state_dict(), meta)
    log(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) in {seconds:.0f} s")
    return AmortizedTrainResult(path, meta, seconds)
