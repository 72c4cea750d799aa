"""Policy ``amortized``: the argmax of the value network's predicted EIG map (one forward pass).

Registered in ``boed.policies.POLICIES``; ``boed simulate --policy amortized`` (option
``--amortized-checkpoint``, default the shipped ``boed/amortized/weights/phantom-cpu``). It
needs neither the sampler nor the exact EIG (``needs_eig = False``), so a session with it draws
no completions; it skips candidates already scanned or revealing nothing new, as every policy.

Its stopping rule is the project's :class:`~boed.policies.StoppingRule` applied to the
*predicted* map: ``--stop-eig X`` ends an amortised session once the best predicted EIG is
below X nats (``boed.acquisition.env.run_episodes`` asks :meth:`AmortizedPolicy.predict_batch`
before the step, as it asks the exact map of ``boed``). In a loop of one's own::

    policy = AmortizedPolicy()
    while not rule.should_stop(controller.entropy, policy.predict(controller.observed, controller.mask)):
        ...

The checkpoint records the classifier and sampler its maps were made with (their sha256);
:func:`checkpoint_warnings` says in one line when a run uses others (the network then imitates
an exact controller that is not the one of the run). Loaded networks are cached by path and
file digest, so building the policy per session (as ``boed.simulate`` does) costs nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from boed.errors import BoedError

if TYPE_CHECKING:
    from boed.amortized.model import EIGMapNet
    from boed.policies import BatchState, DecisionState
    from boed.scanner import CandidateGrid

KIND = "amortized-eig"
WEIGHTS = Path(__file__).resolve().parent / "weights"
log = logging.getLogger("boed.amortized")
_CACHE: dict[tuple[str, str], tuple[EIGMapNet, dict[str, Any]]] = {}


def default_checkpoint() -> Path:
    """The shipped checkpoint of the cpu preset."""
    from boed.amortized import DEFAULT_CHECKPOINT

    return WEIGHTS / DEFAULT_CHECKPOINT


def load_network(path: str | Path | None = None) -> tuple[EIGMapNet, dict[str, Any]]:
    """The value network of checkpoint ``path`` (default: shipped) and its JSON metadata.

    Raises :class:`BoedError` (one line naming the file) for a missing, corrupt or foreign
    checkpoint or weights that do not fit the recorded config.
    """
    from boed.amortized.model import EIGMapNet, EIGNetConfig
    from boed.runtime.checkpoints import CheckpointError, load_checkpoint, read_meta

    path = Path(path) if path is not None else default_checkpoint()
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        hint = " (train one with boed amortized-train)" if path == default_checkpoint() else ""
        raise BoedError(f"--amortized-checkpoint: {exc}{hint}") from None
    key = (str(Path(path).resolve()), str(meta.get("sha256")))
    if key in _CACHE:
        return _CACHE[key]
    try:
        ckpt = load_checkpoint(path, kind=KIND)
    except CheckpointError as exc:
        raise BoedError(f"--amortized-checkpoint: {exc}") from None
    try:
        config = EIGNetConfig(**ckpt.config)
        net = EIGMapNet(config)
        net.load_state_dict(ckpt.tensors)
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0]
        raise BoedError(
            f"--amortized-checkpoint {ckpt.path}: weights do not fit the recorded config ({first})"
        ) from None
    if not all(bool(torch.isfinite(t).all()) for t in ckpt.tensors.values()):
        raise BoedError(f"--amortized-checkpoint {ckpt.path}: the weights hold non-finite values")
    net.eval().to(memory_format=torch.channels_last)
    _CACHE[key] = (net, ckpt.meta)
    return _CACHE[key]


def checkpoint_warnings(meta: dict[str, Any], classifier: Any, sampler: Any = None) -> list[str]:
    """One line per part whose checkpoint differs from the one the network's maps were made with."""
    out = []
    parts = meta.get("parts") or {}
    for name, part in (("classifier", classifier), ("sampler", sampler)):
        want = (parts.get(name) or {}).get("sha256")
        have = getattr(part, "sha256", None) if part is not None else None
        if want and have and want != have:
            out.append(
                f"the amortized policy was trained on EIG maps of another {name} checkpoint "
                f"({want[:12]}…, this run uses {have[:12]}…): it imitates another exact controller; "
                "make maps and train it for these checkpoints (boed amortized-maps / amortized-train)"
            )
    return out


class AmortizedPolicy:
    """Scan where the value network predicts the largest EIG (lowest index on ties)."""

    name = "amortized"
    needs_eig = False
    needs_truth = False
    options = ("amortized_checkpoint",)

    def __init__(self, amortized_checkpoint: str | Path | None = None):
        self.checkpoint = amortized_checkpoint
        self._net: EIGMapNet | None = None
        self._warned = False
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def network(self) -> EIGMapNet:
        if self._net is None:
            self._net, self.meta = load_network(self.checkpoint)
        return self._net

    def check_candidates(self, candidates: CandidateGrid) -> None:
        """Refuse a candidate grid other than the one the network predicts."""
        c = self.network.config
        if (candidates.image_size, candidates.patch_size, candidates.grid) != (
            c.image_size,
            c.patch_size,
            c.grid,
        ):
            raise BoedError(
                f"the amortized checkpoint predicts a {c.grid} x {c.grid} grid of {c.patch_size} px scans on "
                f"{c.image_size} px images; this run has {candidates.grid or len(candidates)} candidates of "
                f"{candidates.patch_size} px on {candidates.image_size} px (train one for this preset/grid)"
            )

    def forget(self) -> None:
        """Drop the kept map: the next :meth:`predict` runs the network (to time a decision)."""
        self._last = None

    def predict(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted EIG ``(B, K)`` float64 (nats) of ``observed``, ``mask`` ``(B, 1, S, S)``.

        The last call's inputs and map are kept: the same observation again (the stopping rule
        asks, then the choice does) costs a comparison, not a second forward pass.
        """
        if self._last is not None:
            last_x, last_m, last_pred = self._last
            if (
                last_x.shape == observed.shape
                and torch.equal(last_x, observed.detach().cpu())
                and torch.equal(last_m, mask.detach().cpu())
            ):
                return last_pred.clone()
        net = self.network
        device = next(net.parameters()).device
        with torch.inference_mode():
            x = observed.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            m = mask.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            pred = net(x, m).double().cpu()
        if not bool(torch.isfinite(pred).all()):
            raise BoedError("the amortized network returned a non-finite EIG map")
        self._last = (observed.detach().cpu().clone(), mask.detach().cpu().clone(), pred.clone())
        return pred

    def predict_batch(self, state: BatchState) -> torch.Tensor:
        """Predicted EIG ``(B, K)`` of the episodes of ``state``."""
        self.check_candidates(state.candidates)
        if not self._warned and state.classifier is not None:
            self._warned = True
            for line in checkpoint_warnings(self.meta, state.classifier):
                log.warning(line)
        return self.predict(state.observed, state.mask)

    def choose(self, state: DecisionState) -> int:
        from boed.policies import BatchState

        return int(self.choose_batch(BatchState.of([state]))[0])

    def choose_batch(self, state: BatchState) -> torch.Tensor:
        pred = self.predict_batch(state)
        pred = pred.masked_fill(~state.revealing().cpu(), -torch.inf)
        return torch.argmax(pred, dim=1)
