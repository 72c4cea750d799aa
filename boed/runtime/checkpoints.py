"""Checkpoints as safetensors weights plus a JSON sidecar; loading never unpickles.

A checkpoint ``NAME`` is two files: ``NAME.safetensors`` (tensors only) and ``NAME.json``::

    {"format": "boed-checkpoint/1", "kind": "classifier" | "sampler" | ...,
     "sha256": "<hex digest of the safetensors file>", "config": {...}, ...anything else}

The digest is checked on every load, so a truncated or tampered file gives a clear error.
``path`` arguments may name either file or the common stem.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "boed-checkpoint/1"


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (name -> torch.Tensor) and ``meta`` (JSON-able); return the weights path.

    Both files are written atomically (temporary file + rename), weights first, so an
    interrupted save never leaves a sidecar that names weights which are not there.
    """
    from safetensors.torch import save

    weights, sidecar = checkpoint_paths(path)
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    _atomic_write_bytes(weights, blob)
    record = {"format": FORMAT, **meta, "sha256": hashlib.sha256(blob).hexdigest()}
    _atomic_write_bytes(sidecar, (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
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
    """Load and verify a checkpoint; ``kind`` (if given) must match the sidecar's ``kind``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    weights, sidecar = checkpoint_paths(path)
    meta = read_meta(path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{sidecar}: is a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint weights file not found")
    blob = weights.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != meta["sha256"]:
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
