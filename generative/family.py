"""The plug-in interface of a trainable sampler, and what every sampler shares.

A *family* is one model (AIPO, the Pixel Constrained CNN, a GAN, ...) described by one object,
``FAMILY`` at the bottom of its module, an instance of a :class:`SamplerFamily` subclass. From it

* the shared trainer (:func:`generative.training.train_generative`, on :mod:`boed.runtime.training`)
  builds the model, its phases (one per optimiser), its masks and its validation;
* the checkpoint loader (:func:`load_family_model`) rebuilds the model from a ``sampler`` checkpoint;
* the registry (:mod:`generative.registry`) turns the model into a :class:`boed.protocols.Sampler`
  under each name the family serves.

A new model therefore brings no training loop, checkpoint format or loader of its own: it writes
the network, ``forward(x, mask, phase) -> stats`` (the losses of one phase, ``stats["loss"]``
differentiable), and a family with :meth:`~SamplerFamily.build_model`,
:meth:`~SamplerFamily.phases` and :meth:`~SamplerFamily.make_sampler`.

Checkpoints (kind ``sampler``) record ``meta["model"] = family.model_id`` (which family can load
it), ``meta["sampler"]`` (the registry name it was trained as: a ``gan-yeh`` checkpoint is not run as
``wgan-vitoria``) and the family's resolved config, so a checkpoint rebuilds its model exactly.

:class:`SamplerBase` is the common half of every sampler adapter: the input checks of the
contract (shapes, binary masks, ``n``), device moves and the exact paste of the observed pixels.

Conventions: images and masks ``(B, 1, H, W)`` float32, images in [0, 1], masks in {0, 1} with 1 =
observed; completions ``(n, B, 1, H, W)``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from generative.errors import SamplerError

if TYPE_CHECKING:
    from boed.protocols import Completions
    from boed.runtime.training import EMA, Phase

MaskFn = Callable[[int, int, torch.Generator], torch.Tensor]


class SamplerFamily(abc.ABC):
    """What the trainer, the loader and the registry need from one model family.

    Subclasses set the class attributes and implement the three abstract methods; the rest has
    defaults that fit most models.

    Attributes:
        model_id: ``meta["model"]`` of this family's checkpoints.
        title: the model's name for people (error messages, tables).
        config_cls: its frozen config dataclass; fields ``preset``, ``image_size``, ``steps`` and
            ``batch_size`` are required (the trainer reads them), ``ema_rate`` optional.
        presets: named configs (``tiny`` at 32×32 for tests, ``cpu`` at 64×64, ``paper`` at 256×256
            where the family has one).
        names: the registry names this family serves (each checkpoint records the one it was
            trained as, see :meth:`kind`).
        progress_keys: stats shown in the training progress line.
    """

    model_id: str = ""
    title: str = ""
    config_cls: type = object
    presets: Mapping[str, Any] = {}
    names: tuple[str, ...] = ()
    progress_keys: tuple[str, ...] = ("loss",)

    # -- configs -------------------------------------------------------------------------------
    def config(self, preset: str = "cpu", **changes: Any) -> Any:
        """The preset's config with ``changes`` applied (``None`` keeps the preset's value)."""
        from boed.config import get_preset, override

        return override(get_preset(preset, dict(self.presets)), **changes)

    def for_name(self, config: Any, name: str) -> Any:
        """The config to train ``name`` with (e.g. a family whose names differ by a loss)."""
        return config

    # -- the model -----------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, config: Any, options: Any = None) -> nn.Module:
        """A freshly initialised model for ``config`` (``options``: the trainer's TrainOptions)."""

    @abc.abstractmethod
    def phases(self, model: nn.Module, net: nn.Module, config: Any, ema: EMA | None) -> list[Phase]:
        """The training phases, one per optimiser, run in order every step.

        ``net`` is ``model`` or its DistributedDataParallel wrapper: loss functions must call
        ``net(x, mask, phase_name)`` (``forward``), so that DDP synchronises the gradients. Each
        phase's loss function gets the step's batch ``(x, mask)``. Attach ``ema`` to the phase
        whose update should advance it (it averages the whole model).
        """

    @abc.abstractmethod
    def make_sampler(self, model: nn.Module, *, name: str, sha256: str | None, meta: dict, **options: Any):
        """The :class:`boed.protocols.Sampler` called ``name`` over a trained ``model``.

        ``options`` are sampling options of this family (a ``SamplerError`` for unknown ones).
        """

    # -- defaults ------------------------------------------------------------------------------
    def ema_decay(self, config: Any) -> Callable[[int], float] | None:
        """The EMA decay of step ``s`` (warm-up to ``config.ema_rate``), or None for no EMA."""
        rate = getattr(config, "ema_rate", None)
        if not rate:
            return None
        from boed.runtime.schedule import ema_warmup

        return lambda s: ema_warmup(s, rate)

    def masks(self, config: Any) -> MaskFn:
        """The training mask distribution ``(n, size, generator) -> (n, 1, size, size)``."""
        from datasets.masks import aipo_masks

        return aipo_masks

    def validate(self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """Validation metrics of one batch (means over it), under ``torch.no_grad`` and eval mode.

        Default: ``module.validate(x, mask)``. Keys are logged with a ``val_`` prefix.
        """
        return {k: float(v) for k, v in module.validate(x, mask).items()}

    def on_validate(
        self, module: nn.Module, x: torch.Tensor, mask: torch.Tensor, out: Path, step: int
    ) -> None:
        """Hook after each validation on rank 0 (e.g. write a sample grid next to ``out``)."""
        return None  # a hook: most families write nothing

    def kind(self, config: Any, name: str) -> str:
        """The registry name a checkpoint trained as ``name`` with ``config`` records."""
        return name

    def accepts(self, name: str, kind: str | None) -> bool:
        """Whether a checkpoint recorded as ``kind`` may be run as sampler ``name``."""
        return kind == name

    def meta(self, config: Any) -> dict[str, Any]:
        """Extra fields of this family for the checkpoint JSON."""
        return {}


# -- checkpoints --------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _shape(t: Any) -> str:
    return "(" + ", ".join(str(d) for d in getattr(t, "shape", ())) + ")"


def architecture_mismatch(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str | None:
    """One sentence describing how ``found`` tensors differ from ``expected`` (a state dict), or None."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of {len(expected)} tensors have other shapes (first: {k} is "
            f"{_shape(found[k])} in the file, {_shape(expected[k])} for the config)"
        )
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts)


def first_non_finite(tensors: dict[str, Any]) -> str | None:
    """``"name (k of n values)"`` of the first floating tensor holding NaN or ±inf, or None."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"{name} ({bad} of {t.numel()} values)"
    return None


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` as detached tensors (what a ``sampler`` checkpoint stores)."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def checkpoint_meta(family: SamplerFamily, config: Any, name: str, **fields: Any) -> dict[str, Any]:
    """The JSON of a ``sampler`` checkpoint of ``family`` trained as ``name`` (plus ``fields``)."""
    from boed.config import to_dict

    return {
        "kind": "sampler",
        "sampler": family.kind(config, name),
        "model": family.model_id,
        "config": to_dict(config),
        "image_size": config.image_size,
        **family.meta(config),
        **fields,
    }


def load_family_model(path: Path | str, family: SamplerFamily, device: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild ``family``'s model from a ``sampler`` checkpoint; every misfit is one line naming the file.

    * not this family's checkpoint (``meta["model"]`` differs);
    * a config field of the wrong type or unknown / missing (``boed.config.from_dict``), or values
      that do not build a model;
    * weights that do not fit the config's architecture (how many tensors differ and the first);
    * non-finite weights (the first bad tensor).

    A missing, unreadable or corrupt pair is ``CheckpointError`` (:mod:`boed.runtime.checkpoints`).
    Returns the model in eval mode on ``device`` and the checkpoint's JSON metadata.
    """
    from boed.config import ConfigError, from_dict
    from boed.runtime.checkpoints import checkpoint_paths, load_checkpoint

    ckpt = load_checkpoint(path, kind="sampler", device=device)
    sidecar = checkpoint_paths(ckpt.path)[1]
    if ckpt.meta.get("model") != family.model_id:
        raise SamplerError(
            f"{sidecar}: not a checkpoint of the {family.title or family.model_id} "
            f"(model={ckpt.meta.get('model')!r}, expected {family.model_id!r})"
        )
    try:
        config = from_dict(family.config_cls, ckpt.config)
    except ConfigError as exc:
        raise SamplerError(f"{sidecar}: bad config in the metadata: {_one_line(exc)}") from exc
    try:
        model = family.build_model(config)
    except (SamplerError, ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        raise SamplerError(f"{sidecar}: its config does not build a model ({_one_line(exc)})") from exc
    mismatch = architecture_mismatch(model.state_dict(), ckpt.tensors)
    if mismatch:
        raise SamplerError(f"{ckpt.path}: weights do not fit the architecture in {sidecar.name}: {mismatch}")
    bad = first_non_finite(ckpt.tensors)
    if bad:
        raise SamplerError(f"{ckpt.path}: non-finite weights (NaN or inf) in {bad}")
    model.load_state_dict(ckpt.tensors)
    return model.to(device).eval(), ckpt.meta


# -- the common half of every sampler adapter --------------------------------------------------------------
def check_inputs(name: str, image_size: int, observed: torch.Tensor, mask: torch.Tensor, n: Any) -> None:
    """The contract's input checks; a ``SamplerError`` naming the sampler otherwise."""
    s = image_size
    if observed.ndim != 4 or tuple(observed.shape[1:]) != (1, s, s):
        raise SamplerError(f"{name}: observed must be (B, 1, {s}, {s}), got {tuple(observed.shape)}")
    if mask.shape != observed.shape:
        raise SamplerError(
            f"{name}: mask shape {tuple(mask.shape)} differs from observed {tuple(observed.shape)}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SamplerError(f"{name}: n must be a positive integer, got {n!r}")
    if not torch.all((mask == 0) | (mask == 1)):
        raise SamplerError(f"{name}: mask values must be 0 or 1")


def paste_observed(images: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images`` ``(n, B, 1, H, W)`` with the observed pixels replaced by ``observed``'s, bit for bit."""
    return torch.where(mask.bool().unsqueeze(0), observed.unsqueeze(0), images)


def reject_options(name: str, options: Mapping[str, Any], valid: tuple[str, ...] = ()) -> None:
    """A ``SamplerError`` for sampling options ``name`` does not have."""
    unknown = sorted(k for k, v in options.items() if v is not None and k not in valid)
    if unknown:
        have = ", ".join(valid) if valid else "none"
        raise SamplerError(f"sampler {name!r} has no option {', '.join(unknown)} (its options: {have})")


class SamplerBase(abc.ABC):
    """Shared half of a :class:`boed.protocols.Sampler`: subclasses implement :meth:`complete`.

    :meth:`sample` checks the inputs, moves them to the model's device, calls
    ``complete(observed * mask, mask, n, generator)`` under ``torch.inference_mode`` (unless
    ``needs_grad``: a latent search differentiates through its generator), pastes the caller's
    observed values back bit for bit, clamps to [0, 1] and returns :class:`Completions` on the
    caller's device. All randomness must come from ``generator`` so that a seeded generator
    reproduces the draws.

    Attributes:
        deterministic: ``True`` when the n completions of one input are identical (a point
            estimate: then the EIG estimate degenerates to the information gain of that one
            completion; see :mod:`boed.eig`).
    """

    deterministic: bool = False
    needs_grad: bool = False

    def __init__(
        self, *, name: str, image_size: int, sha256: str | None, meta: dict | None, device: Any = "cpu"
    ):
        self.name = name
        self.image_size = int(image_size)
        self.sha256 = sha256
        self.meta = meta or {}
        self.device = torch.device(device)

    @abc.abstractmethod
    def complete(
        self, observed: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator | None
    ) -> torch.Tensor | Completions:
        """``(n, B, 1, H, W)`` completions (or a full :class:`Completions`), inputs on ``self.device``."""

    def sample(
        self, observed: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator | None = None
    ) -> Completions:
        from boed.protocols import Completions

        check_inputs(self.name, self.image_size, observed, mask, n)
        out_device = observed.device
        observed = observed.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        if self.needs_grad:
            with torch.enable_grad():
                out = self.complete(observed * mask, mask, n, generator)
        else:
            with torch.inference_mode():
                out = self.complete(observed * mask, mask, n, generator)
        result = out if isinstance(out, Completions) else Completions(images=out)
        images = paste_observed(result.images.detach().float().clamp(0, 1), observed, mask)
        move = lambda t: None if t is None else t.detach().to(out_device)  # noqa: E731
        info = None if result.info is None else {k: move(v) for k, v in result.info.items()}
        return Completions(images=images.to(out_device), log_weights=move(result.log_weights), info=info)


class ModelSampler(SamplerBase):
    """A :class:`SamplerBase` over one trained network ``model`` (in eval mode, as ``self.model``):
    its ``config.image_size`` and the device of its parameters are the sampler's."""

    def __init__(self, model: nn.Module, *, name: str, sha256: str | None = None, meta: dict | None = None):
        super().__init__(
            name=name,
            image_size=model.config.image_size,
            sha256=sha256,
            meta=meta,
            device=next(model.parameters()).device,
        )
        self.model = model.eval()
