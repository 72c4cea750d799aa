"""Did a checkpoint see these images? Is this the kind of data it was trained on?

Both functions compare a checkpoint's record of its training data, ``trained_on`` =
``meta["data"]`` = ``{"train": describe(), "val": describe()}``, with the ``describe()`` of the
data about to be used (see :data:`datasets.base.DESCRIBE_KEYS`). They only read dictionaries, so
they work on old checkpoints too: a record without the keys they need gives ``None`` (nothing can
be said), never an error.

Rules of :func:`training_overlap`, for each trained split (train and val: val images steered early
stopping and calibration) with the same ``fingerprint`` as the data (the same collection):

- the data is the same split as the trained one (same split seed, or phantoms): overlap;
- either side is the whole collection (split ``"all"``): overlap;
- the split seeds differ (a different partition of the same collection): overlap is likely, except
  for the NIH test split when both used the official lists (those do not depend on the seed).

Different fingerprints (another collection, another phantom seed) are never an overlap: phantom
streams of different seeds share no image, and files differ by path, size or labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["check_training_data", "source_mismatch", "training_overlap"]

ALLOW_OPTION = "--allow-training-images"

_TRAINED_SPLITS = ("train", "val")


def _short(fingerprint: Any) -> str:
    return str(fingerprint)[:12]


def _records(trained_on: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if not isinstance(trained_on, Mapping):
        return []
    return [
        (role, trained_on[role])
        for role in _TRAINED_SPLITS
        if isinstance(trained_on.get(role), Mapping) and trained_on[role].get("fingerprint")
    ]


def training_overlap(trained_on: Mapping[str, Any] | None, data: Mapping[str, Any]) -> str | None:
    """A one-line reason when ``data`` may hold images the checkpoint was trained on, else None.

    Args:
        trained_on: a checkpoint's ``meta["data"]``: ``{"train": describe(), "val": describe()}``.
        data: ``describe()`` of the dataset about to be evaluated or simulated on.
    """
    if not isinstance(data, Mapping) or not data.get("fingerprint"):
        return None
    split = data.get("split")
    for role, trained in _records(trained_on):
        if trained["fingerprint"] != data["fingerprint"]:
            continue
        what = f"{data.get('source', '?')} collection {_short(data['fingerprint'])}"
        t_split = trained.get("split")
        if split == "all" or t_split == "all":
            return (
                f"the data ({what}, split {split}) and the checkpoint's {role} data (split {t_split}) "
                "are the same collection and one of them is all of it: it holds images the checkpoint "
                "was trained on"
            )
        if trained.get("split_seed") != data.get("split_seed"):
            official = split == "test" and data.get("split_lists") and trained.get("split_lists")
            if not official:
                return (
                    f"the data ({what}, split {split}, split seed {data.get('split_seed')}) was split "
                    f"with another split seed than the checkpoint's {role} data (split seed "
                    f"{trained.get('split_seed')}): its {split} split may hold images the checkpoint "
                    "was trained on"
                )
        elif t_split == split:
            return (
                f"the data ({what}, split {split}) is the checkpoint's {role} split: "
                "it holds images the checkpoint was trained on"
            )
    return None


def source_mismatch(trained_on: Mapping[str, Any] | None, data: Mapping[str, Any]) -> str | None:
    """A warning when ``data`` is another source or collection than the checkpoint's training data.

    Phantom checkpoints on real radiographs, a DICOM-trained model on a PNG folder...: predictions
    may be meaningless. Another phantom seed is the same distribution (no warning); another file
    collection of the same source gets a milder warning. None when nothing is recorded.
    """
    if not isinstance(data, Mapping) or not data.get("source"):
        return None
    records = _records(trained_on)
    if not records:
        # a record with a source but no fingerprint (checkpoints written before fingerprints):
        # the source alone still tells phantoms from real radiographs
        train = trained_on.get("train") if isinstance(trained_on, Mapping) else None
        if isinstance(train, Mapping) and train.get("source") and train["source"] != data["source"]:
            return (
                f"the checkpoint was trained on {train['source']} images but the data are "
                f"{data['source']} images: its outputs may be meaningless on them"
            )
        return None
    trained = dict(records[0][1])
    t_source, source = trained.get("source"), data.get("source")
    if not t_source:
        return None
    if t_source != source:
        return (
            f"the checkpoint was trained on {t_source} images ({_short(trained['fingerprint'])}) but the "
            f"data are {source} images: its outputs may be meaningless on them"
        )
    if source == "phantoms" and trained.get("generator") and data.get("generator"):
        if trained["generator"] != data["generator"]:
            return (
                f"the checkpoint was trained on {trained['generator']} phantoms but the data are "
                f"{data['generator']} phantoms (another distribution): retrain it on this version"
            )
    if source != "phantoms" and data.get("fingerprint") and trained["fingerprint"] != data["fingerprint"]:
        return (
            f"the checkpoint was trained on another {source} collection ({_short(trained['fingerprint'])}) "
            f"than these data ({_short(data['fingerprint'])}): check that they are alike"
        )
    return None


def check_training_data(
    trained_on: Mapping[str, Any] | None,
    data: Mapping[str, Any],
    *,
    what: str = "the checkpoint",
    allow_overlap: bool = False,
) -> list[str]:
    """The one check every command runs before it evaluates or simulates with a checkpoint.

    Refuses data the checkpoint was trained on (its scores there say nothing about new images)
    unless ``allow_overlap`` (the ``--allow-training-images`` option), and returns the warnings:
    the allowed overlap, and a different source or collection than the training data.

    Args:
        trained_on: the checkpoint's ``meta["data"]`` (``None`` or ``{}``: nothing recorded, no check).
        data: ``describe()`` of the dataset about to be used.
        what: how the messages name the checkpoint, e.g. ``"the classifier checkpoint"``.

    Raises:
        DatasetError: one line naming the checkpoint, the overlap and the option.
    """
    from datasets.errors import DatasetError

    warnings: list[str] = []
    overlap = training_overlap(trained_on, data)
    if overlap is not None:
        if not allow_overlap:
            raise DatasetError(
                f"{what} was trained on images of this dataset ({overlap}); use images it has not seen "
                f"(another split or dataset) or pass {ALLOW_OPTION}"
            )
        warnings.append(f"{what} was trained on these images ({overlap}); allowed by {ALLOW_OPTION}")
    mismatch = source_mismatch(trained_on, data)
    if mismatch is not None:
        warnings.append(f"{what} was trained on other data: {mismatch}")
    return warnings
