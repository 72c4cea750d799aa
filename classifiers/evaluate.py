"""Evaluation of g on held-out images at 0, 1, ..., 5 observed squares and on the full image.

The squares have 25% of the image width (the scans of the BOED experiments, appendix B.4 of
Harvey, Naderiparizi & Wood, "Image Completion via Inference in Deep Generative Models", 2021)
and come from ``datasets.masks.squares_masks`` with a fixed seed, so the table is reproducible.

Every metric is reported per label, under the label's own name: AUROC, accuracy (``p >= 0.5`` is
positive) and ECE (15 bins) from :mod:`classifiers.metrics`. The labels evaluated are those the
classifier and the data share (in the classifier's order); the others are listed as left out, and
no label in common is an error. A label the data has no positive or no negative for gets AUROC
``None`` ("n/a"), never an error.
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
ECE_BINS = 15


def condition_masks(n: int, size: int, squares: int | None, generator: torch.Generator) -> torch.Tensor:
    """``(n, 1, S, S)``: ``squares`` observed squares of side 25%, or all observed when ``None``."""
    if squares is None:
        return torch.ones(n, 1, size, size)
    from datasets.masks import squares_masks

    return squares_masks(n, size, squares, SIDE_FRAC, generator)


def shared_labels(
    classifier_labels: Sequence[str], data_labels: Sequence[str], only: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """The labels to evaluate and those left out.

    Returns ``{"labels": shared labels in the classifier's order (or ``only``'s order), "data_only":
    data labels the classifier has no output for, "classifier_only": outputs the data has no
    column for}``.

    Raises:
        ClassifierError: no label in common, or a name in ``only`` that is not shared.
    """
    clf, data = list(classifier_labels), list(data_labels)
    common = [x for x in clf if x in data]
    if not common:
        raise ClassifierError(
            f"the classifier and the data have no label in common (classifier: {', '.join(clf)}; "
            f"data: {', '.join(data) or 'no labels'})"
        )
    if only is not None:
        unknown = [x for x in only if x not in common]
        if unknown or not only:
            raise ClassifierError(
                f"--label {', '.join(unknown) or '(none)'}: not a label of both the classifier and the "
                f"data; choose from {', '.join(common)}"
            )
        common = list(dict.fromkeys(only))
    return {
        "labels": common,
        "data_only": [x for x in data if x not in clf],
        "classifier_only": [x for x in clf if x not in data],
    }


def evaluate_predictions(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-label AUROC, accuracy and ECE, and ECE of all labels pooled, of ``probs`` vs ``labels`` ``(n, L)``.

    Column ``j`` of both arrays belongs to ``names[j]``.
    """
    columns = list(enumerate(names))
    return {
        "auroc": {name: nan_to_none(auroc(probs[:, j], labels[:, j])) for j, name in columns},
        "accuracy": {name: nan_to_none(accuracy(probs[:, j], labels[:, j])) for j, name in columns},
        "ece": {
            name: nan_to_none(expected_calibration_error(probs[:, j], labels[:, j], ECE_BINS))
            for j, name in columns
        },
        "ece_all": nan_to_none(expected_calibration_error(probs, labels, ECE_BINS)),
    }


def evaluate_classifier(
    classifier: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    label_names: Sequence[str] | None = None,
    only: Sequence[str] | None = None,
    squares: Sequence[int] = SQUARES,
    full: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``classifier`` (a ``PartialClassifier``) on ``images`` ``(n, 1, S, S)``.

    Args:
        labels: ``(n, L)`` 0/1 with NaN = unknown; column ``j`` is ``label_names[j]`` (default:
            the classifier's labels).
        only: evaluate just these labels (each must be shared by classifier and data).

    Returns a JSON-able dict: ``n_images``, ``labels`` (those evaluated), ``left_out``
    (``data_only``, ``classifier_only``), ``positives``/``negatives`` per label, ``undefined``
    (labels whose AUROC is n/a) and ``conditions``: one entry per number of squares (then
    ``"full"``) with ``auroc``, ``accuracy``, ``ece`` per label, ``ece_all`` (evaluated labels
    pooled), ``loss`` (BCE over the evaluated labels) and ``observed_fraction``.
    """
    clf_labels = tuple(classifier.labels)
    names = tuple(label_names) if label_names is not None else clf_labels
    if labels.dim() != 2 or labels.shape[1] != len(names) or labels.shape[0] != images.shape[0]:
        raise ClassifierError(f"labels must be ({images.shape[0]}, {len(names)}), got {tuple(labels.shape)}")
    chosen = shared_labels(clf_labels, names, only)
    evaluated = chosen["labels"]
    out_cols = [clf_labels.index(x) for x in evaluated]
    data_cols = [names.index(x) for x in evaluated]
    if hasattr(classifier, "check_inputs"):
        classifier.check_inputs(images, images)
    n, size = images.shape[0], images.shape[-1]
    target = labels[:, data_cols].float()
    lab = target.numpy()
    known = ~np.isnan(lab)
    positives = {name: int(((lab[:, j] == 1) & known[:, j]).sum()) for j, name in enumerate(evaluated)}
    negatives = {name: int(((lab[:, j] == 0) & known[:, j]).sum()) for j, name in enumerate(evaluated)}
    undefined = [name for name in evaluated if positives[name] == 0 or negatives[name] == 0]
    temperature = getattr(classifier, "temperature", 1.0)
    conditions = []
    for k in [*squares, *([None] if full else [])]:
        name = "full" if k is None else f"{k} squares"
        generator = torch.Generator().manual_seed(seed * 100 + (99 if k is None else k))
        masks = condition_masks(n, size, k, generator)
        if hasattr(classifier, "logits"):
            z = classifier.logits(images, masks)[:, out_cols] / temperature
            probs = torch.sigmoid(z)
        else:
            probs = classifier.predict(images, masks)[:, out_cols]
            z = torch.logit(probs.clamp(1e-6, 1 - 1e-6))
        if not torch.isfinite(probs).all():
            raise ClassifierError(
                f"classifier {getattr(classifier, 'name', '')!r} returned non-finite probabilities "
                f"at {name} ({int((~torch.isfinite(probs)).sum())} values)"
            )
        entry = {"name": name, "squares": k, "loss": float(masked_bce(z, target))}
        entry |= evaluate_predictions(probs.numpy(), lab, evaluated)
        entry["observed_fraction"] = float(masks.mean())
        conditions.append(entry)
    return {
        "n_images": n,
        "image_size": size,
        "labels": evaluated,
        "left_out": {"data_only": chosen["data_only"], "classifier_only": chosen["classifier_only"]},
        "positives": positives,
        "negatives": negatives,
        "undefined": undefined,
        "side_frac": SIDE_FRAC,
        "ece_bins": ECE_BINS,
        "threshold": 0.5,
        "seed": seed,
        "conditions": conditions,
    }


def check_training_images(classifier: Any, dataset: Any, allow: bool = False) -> str | None:
    """Refuse data the checkpoint was trained on (``datasets.provenance.check_training_data``).

    Returns the warnings as one line (the overlap when ``allow``, another source), or ``None``. A
    classifier whose metadata records no training data cannot be checked (``None``).

    Raises:
        ClassifierError: the data overlaps the training images and ``allow`` is false.
    """
    trained_on = (getattr(classifier, "meta", None) or {}).get("data")
    if not trained_on or not hasattr(dataset, "describe"):
        return None
    from datasets.errors import DatasetError
    from datasets.provenance import check_training_data

    name = getattr(classifier, "name", "") or "classifier"
    try:
        warnings = check_training_data(
            trained_on, dataset.describe(), what=f"the classifier {name!r}", allow_overlap=allow
        )
    except DatasetError as exc:
        raise ClassifierError(str(exc)) from None
    return "; ".join(warnings) or None


def evaluate_dataset(
    classifier: Any,
    dataset: Any,
    *,
    only: Sequence[str] | None = None,
    allow_training_images: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`evaluate_classifier` on a ``datasets.open_dataset`` result.

    Checks the labels, the image size and the overlap with the classifier's training images
    (:func:`check_training_images`) before loading every image.
    """
    shared_labels(classifier.labels, dataset.labels, only)
    if len(dataset) == 0:
        raise ClassifierError("the dataset is empty")
    first = dataset[0]["img"][None]
    classifier.check_inputs(first, first)  # size and channels before loading everything
    overlap = check_training_images(classifier, dataset, allow_training_images)
    images, labels = dataset.tensors()
    result = evaluate_classifier(
        classifier, images, labels, label_names=tuple(dataset.labels), only=only, **kwargs
    )
    result["dataset"] = dataset.describe() if hasattr(dataset, "describe") else {}
    result["training_overlap"] = overlap
    return result
