"""Evaluation of g on held-out images at 0, 1, ..., 5 observed squares and on the full image.

The squares have 25% of the image width (the scans of the BOED experiments, appendix B.4 of
001_acb47c175b470c6b.txt) and come from ``datasets.masks.squares_masks`` with a fixed seed, so the
table is reproducible. A label the data has no positive or no negative for gets AUROC ``None``
("n/a"), never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from classifiers.errors import ClassifierError
from classifiers.metrics import accuracy, auroc, expected_calibration_error, masked_bce, nan_to_none

SQUARES = (0, 1, 2, 3, 4, 5)
SIDE_FRAC = 0.25


def condition_masks(n: int, size: int, squares: int | None, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, S, S)``: ``squares`` observed squares of side 25%, or all observed when ``None``."""
    if squares is None:
        return torch.ones(n, 1, size, size)
    from datasets.masks import squares_masks

    return squares_masks(n, size, squares, SIDE_FRAC, generator)


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-label AUROC, Any accuracy, ECE (Any; all pooled) of ``probs`` vs ``labels`` ``(n, L)``."""
    any_idx = list(names).index("Any") if "Any" in names else len(names) - 1
    return {
        "auroc": {name: nan_to_none(auroc(probs[:, j], labels[:, j])) for j, name in enumerate(names)},
        "accuracy_any": nan_to_none(accuracy(probs[:, any_idx], labels[:, any_idx])),
        "ece_any": nan_to_none(expected_calibration_error(probs[:, any_idx], labels[:, any_idx])),
        "ece_all": nan_to_none(expected_calibration_error(probs, labels)),
    }


def evaluate_classifier(
    classifier: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_names: Sequence[str] | None = None,
    squares: Sequence[int] = SQUARES,
    full: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``classifier`` (a ``PartialClassifier``) on ``images`` ``(n, 1, S, S)``.

    Returns a JSON-able dict: ``n_images``, ``labels``, ``positives``/``negatives`` per label,
    ``undefined`` (labels whose AUROC is n/a) and ``conditions``: one entry per number of squares
    (then ``"full"``) with ``auroc`` per label, ``accuracy_any``, ``ece_any``, ``ece_all``, ``loss``.
    """
    names = tuple(label_names) if label_names is not None else tuple(classifier.labels)
    if hasattr(classifier, "check_labels"):
        classifier.check_labels(names)
    if labels.dim() != 2 or labels.shape[1] != len(names) or labels.shape[0] != images.shape[0]:
        raise ClassifierError(f"labels must be ({images.shape[0]}, {len(names)}), got {tuple(labels.shape)}")
    if hasattr(classifier, "check_inputs"):
        classifier.check_inputs(images, images)
    n, size = images.shape[0], images.shape[-1]
    lab = labels.float().numpy()
    known = ~np.isnan(lab)
    positives = {name: int(((lab[:, j] == 1) & known[:, j]).sum()) for j, name in enumerate(names)}
    negatives = {name: int(((lab[:, j] == 0) & known[:, j]).sum()) for j, name in enumerate(names)}
    undefined = [name for name in names if positives[name] == 0 or negatives[name] == 0]
    conditions = []
    for k in [*squares, *([None] if full else [])]:
        generator = torch.Generator().manual_seed(seed * 100 + (99 if k is None else k))
        masks = condition_masks(n, size, k, generator)
        logits = classifier.logits(images, masks) if hasattr(classifier, "logits") else None
        temperature = getattr(classifier, "temperature", 1.0)
        if logits is not None:
            probs = torch.sigmoid(logits / temperature)
            loss = float(masked_bce(logits / temperature, labels.float()))
        else:
            probs = classifier.predict(images, masks)
            loss = float(masked_bce(torch.logit(probs.clamp(1e-6, 1 - 1e-6)), labels.float()))
        entry = {"name": "full" if k is None else f"{k} squares", "squares": k, "loss": loss}
        entry |= evaluate_predictions(probs.numpy(), lab, names)
        entry["observed_fraction"] = float(masks.mean())
        conditions.append(entry)
    return {
        "n_images": n,
        "image_size": size,
        "labels": list(names),
        "positives": positives,
        "negatives": negatives,
        "undefined": undefined,
        "side_frac": SIDE_FRAC,
        "seed": seed,
        "conditions": conditions,
    }


def evaluate_dataset(classifier: Any, dataset: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_classifier` on a ``datasets.open_dataset`` result (checks labels and size first)."""
    classifier.check_labels(tuple(dataset.labels))
    if len(dataset) == 0:
        raise ClassifierError("the dataset is empty")
    first = dataset[0]["img"][None]
    classifier.check_inputs(first, first)  # size and channels before loading everything
    images, labels = dataset.tensors()
    result = evaluate_classifier(classifier, images, labels, label_names=tuple(dataset.labels), **kwargs)
    result["dataset"] = dataset.describe() if hasattr(dataset, "describe") else {}
    return result
