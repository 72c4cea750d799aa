"""Tiny AIPO sampler checkpoints written directly (no trainer), for loading and registry tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from boed.config import to_dict
from boed.runtime.checkpoints import checkpoint_paths, save_checkpoint, sha256_file
from generative.aipo import AIPO
from generative.config import get_config

# objective -> the sampler kind the trainer records (generative.aipo.SAMPLER_FOR_OBJECTIVE)
KIND = {"vae": "vae", "aipo": "aipo", "vae+aipo": "aipo", "aipo-r": "aipo-r", "vae+aipo-r": "aipo-r"}


def write_tiny(path: Path, objective: str = "vae+aipo", seed: int = 0, **changes) -> Path:
    """An untrained tiny-preset ``sampler`` checkpoint at ``path`` (stem); returns the stem."""
    torch.manual_seed(seed)
    config = get_config("tiny", objective=objective, **changes)
    model = AIPO(config)
    meta = {
        "kind": "sampler",
        "sampler": KIND[objective],
        "model": "aipo-hvae",
        "config": to_dict(config),
        "image_size": config.image_size,
        "data": {},
    }
    save_checkpoint(path, model.tensors(), meta)
    return path


def edit_json(path: Path, edit) -> None:
    """Apply ``edit(meta)`` to the checkpoint's JSON sidecar (the sha256 covers the weights only)."""
    sidecar = checkpoint_paths(path)[1]
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))


def rewrite_weights(path: Path, edit) -> None:
    """Apply ``edit(tensors)`` to the safetensors file and record its new sha256 in the JSON."""
    from safetensors.torch import load_file, save_file

    weights = checkpoint_paths(path)[0]
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights)
    digest = sha256_file(weights)
    edit_json(path, lambda meta: meta.update(sha256=digest))
