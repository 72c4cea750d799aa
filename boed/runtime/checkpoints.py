"""Checkpoints as safetensors weights plus a JSON sidecar; loading never unpickles.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` (tensors only) and ``NAME.json``::

    {"format": "boed-checkpoint/1", "kind": "classifier" | "sampler" | "train-state" | ...,
     "sha256": "<hex digest of the safetensors file>", "config": {...}, ...anything else}

The digest is checked on every load, so a truncated or tampered file gives a clear error.
``path`` arguments may name either file or the common stem.

Saving a pair atomically
------------------------
Two files cannot be renamed in one atomic step, so :func:`save_checkpoint` keeps the previous
good pair reachable until the new one is complete:

1. the new weights and the new JSON are written to temporary files in the same folder (fsync'd);
2. if ``NAME`` already holds a pair whose digest verifies, it is hard-linked (copied where links
   are not supported) to ``NAME.prev.safetensors`` + ``NAME.prev.json`` — the JSON first;
3. the new weights are renamed onto ``NAME.safetensors``, then the new JSON onto ``NAME.json``;
4. the ``NAME.prev.*`` pair is removed (and so are temporary files left by a killed save, at the
   start of the next save).

Whatever the point at which the process dies, one verifying pair remains: before step 3 the old
``NAME`` pair is untouched; between the two renames of step 3 ``NAME.json`` still describes the old
weights while ``NAME.safetensors`` is new, and :func:`load_checkpoint` then falls back to the
verifying ``NAME.prev`` pair (with a warning); after step 3 ``NAME`` is the new pair. A save that
finds ``NAME`` inconsistent keeps the existing ``NAME.prev`` pair (it is the good one). Pairs
written before this scheme (e.g. the shipped weights) are plain ``NAME`` pairs and load as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "boed-checkpoint/1"
log = logging.getLogger("boed.runtime.checkpoints")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, corrupt or does not fit what loads it."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: tensors and the JSON metadata (``meta['config']`` etc.)."""

    path: Path
    tensors: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.meta["sha256"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, sidecar)`` paths for a checkpoint named by either file or by its stem."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def previous_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, sidecar)`` of the previous pair kept while a save of ``path`` is under way."""
    weights, _ = checkpoint_paths(path)
    return checkpoint_paths(weights.with_name(weights.with_suffix("").name + ".prev"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file next to ``path`` (flushed to disk, ordinary permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pair_verifies(weights: Path, sidecar: Path) -> bool:
    try:
        meta = json.loads(sidecar.read_text())
        return isinstance(meta, dict) and weights.is_file() and sha256_file(weights) == meta.get("sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (name -> torch.Tensor) and ``meta`` (JSON-able); return the weights path.

    The pair is replaced atomically in the sense of the module docstring: a process killed at
    any point leaves either the previous or the new pair loadable.
    """
    from safetensors.torch import save

    weights, sidecar = checkpoint_paths(path)
    prev_weights, prev_sidecar = previous_paths(path)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    record = {"format": FORMAT, **meta, "sha256": hashlib.sha256(blob).hexdigest()}
    text = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()
    for stale in [*weights.parent.glob(f".{weights.name}.*"), *weights.parent.glob(f".{sidecar.name}.*")]:
        stale.unlink(missing_ok=True)  # temporary files of a save that was killed
    tmp_weights = _write_temp(weights, blob)
    tmp_sidecar = None
    try:
        tmp_sidecar = _write_temp(sidecar, text)
        if sidecar.is_file() and _pair_verifies(weights, sidecar):
            _link_or_copy(sidecar, prev_sidecar)
            _link_or_copy(weights, prev_weights)
            _fsync_dir(weights.parent)
        os.replace(tmp_weights, weights)
        os.replace(tmp_sidecar, sidecar)
    except BaseException:
        tmp_weights.unlink(missing_ok=True)
        if tmp_sidecar is not None:
            tmp_sidecar.unlink(missing_ok=True)
        raise
    _fsync_dir(weights.parent)
    prev_weights.unlink(missing_ok=True)
    prev_sidecar.unlink(missing_ok=True)
    return weights


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON sidecar alone (cheap: does not read the weights)."""
    _, sidecar = checkpoint_paths(path)
    if not sidecar.is_file():
        raise CheckpointError(f"{sidecar}: checkpoint metadata file not found")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{sidecar}: not a readable checkpoint metadata file ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "sha256" not in meta:
        raise CheckpointError(f"{sidecar}: not a {FORMAT} metadata file")
    return meta


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, device: str = "cpu") -> Checkpoint:
    """Load and verify a checkpoint; ``kind`` (if given) must match the sidecar's ``kind``.

    When the ``NAME`` pair does not verify but a ``NAME.prev`` pair left by an interrupted save
    does, that previous pair is loaded (and a warning logged).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights, sidecar = checkpoint_paths(path)
    meta = read_meta(path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{sidecar}: is a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    blob = weights.read_bytes() if weights.is_file() else None
    actual = hashlib.sha256(blob).hexdigest() if blob is not None else None
    if actual != meta["sha256"]:
        prev_weights, prev_sidecar = previous_paths(path)
        if prev_sidecar.is_file() and _pair_verifies(prev_weights, prev_sidecar):
            log.warning(
                "%s: does not match %s (a save was interrupted); loading the previous pair %s",
                weights,
                sidecar.name,
                prev_weights.name,
            )
            return load_checkpoint(prev_weights, kind=kind, device=device)
        if blob is None:
            raise CheckpointError(f"{weights}: checkpoint weights file not found")
        raise CheckpointError(
            f"{weights}: sha256 mismatch (file {actual[:12]}…, metadata {meta['sha256'][:12]}…): "
            "the weights are truncated, corrupt or were changed after saving"
        )
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from exc
    if device != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return Checkpoint(path=weights, tensors=tensors, meta=meta)
