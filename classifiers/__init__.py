"""The classifier g of the BOED controller: an AVP-CNN (DenseNet) on partial observations.

``load_classifier(path=None, preset="cpu", device="cpu")`` returns a :class:`PartialClassifier`
(boed's ``Classifier`` protocol: ``labels``, ``image_size``, ``predict(observed, mask) -> (B, L)``,
plus ``features``, ``name``, ``sha256``, ``meta``). ``path=None`` loads the shipped checkpoint
``classifiers/weights/phantom-<preset>``. Training: :mod:`classifiers.train`; evaluation:
:mod:`classifiers.evaluate`; see classifiers/README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from classifiers.errors import ClassifierError

if TYPE_CHECKING:
    from classifiers.partial import PartialClassifier

__all__ = ["ClassifierError", "PartialClassifier", "load_classifier"]


def load_classifier(
    path: Any = None, *, preset: str = "cpu", device: Any = "cpu", **kwargs: Any
) -> PartialClassifier:
    """See :func:`classifiers.partial.load_classifier` (imported lazily)."""
    from classifiers.partial import load_classifier as _load

    return _load(path, preset=preset, device=device, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "PartialClassifier":
        from classifiers.partial import PartialClassifier

        return PartialClassifier
    raise AttributeError(name)
