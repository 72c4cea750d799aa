"""What the controller needs from its parts, as ``typing.Protocol`` classes.

boed never imports an implementation: samplers (generative/) and classifiers (classifiers/) meet
the controller here, so tests can plug in an exact toy sampler and a Bayes classifier.

Conventions (see docs/ARCHITECTURE.md): images and masks are float32 ``(B, 1, H, W)``; masks are
1 where observed; ``observed = image * mask``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:  # keep `import boed` free of torch
    import torch


class Completions(NamedTuple):
    """N completions per image.

    Attributes:
        images: ``(N, B, 1, H, W)`` completed images; observed pixels equal the input exactly.
        log_weights: optional ``(N, B)`` unnormalised importance log-weights (retrieval or
            importance-sampling samplers); ``None`` means equally weighted.
        info: optional per-draw diagnostics a sampler reports beside the images, each a tensor
            whose leading dims are ``(N, B)`` or ``(B,)``, e.g. ``"log_likelihood"`` ``(N, B)``
            (autoregressive samplers: the exact log-probability of each completion's sampled
            pixels, nats) or ``"ess"`` ``(B,)`` (weighted samplers: the effective sample size).
            Diagnostics only: the EIG estimator reads ``log_weights``, never ``info``.
    """

    images: torch.Tensor
    log_weights: torch.Tensor | None = None
    info: dict[str, torch.Tensor] | None = None


@runtime_checkable
class Sampler(Protocol):
    """A generative inpainting model: draws completions of partially observed images."""

    name: str
    image_size: int

    def sample(
        self,
        observed: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        generator: torch.Generator | None = None,
    ) -> Completions:
        """Draw ``n`` completions of each of the ``B`` images ``observed`` ``(B, 1, H, W)``."""
        ...


@runtime_checkable
class Classifier(Protocol):
    """g(v | x*m, m): probabilities of each label from a partial observation."""

    labels: Sequence[str]
    image_size: int

    def predict(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return probabilities ``(B, L)`` for ``observed`` and ``mask`` ``(B, 1, H, W)``."""
        ...


@runtime_checkable
class Policy(Protocol):
    """Chooses the next scan location from the state of a session (see ``boed.policies``).

    ``needs_eig``: whether the session must estimate the EIG map (Eq. 17) before ``choose``;
    ``needs_truth``: whether the policy may read the hidden image and labels (the oracles only:
    an upper bound, not a usable policy); every other policy gets a state without them.
    ``state`` is a ``boed.policies.DecisionState``.
    """

    name: str
    needs_eig: bool
    needs_truth: bool

    def choose(self, state: Any) -> int:
        """Return the index of the chosen candidate location (into the candidate grid)."""
        ...
