"""Runtime shared by every trainable part.

- :mod:`~boed.runtime.checkpoints`: safetensors weights + JSON sidecar pairs, sha256-verified,
  replaced atomically;
- :mod:`~boed.runtime.training`: the one training loop (phases, DDP-safe skipping, EMA);
- :mod:`~boed.runtime.schedule`: warm-up + cosine learning rate, EMA warm-up;
- :mod:`~boed.runtime.data`: the streaming data path (seeded epoch order, per-rank shards,
  DataLoader workers);
- :mod:`~boed.runtime.resume`: the one resume format, ``OUT.train.*``;
- :mod:`~boed.runtime.provenance`: the ``data`` / ``trained_on`` records of every checkpoint;
- :mod:`~boed.runtime.devices`: device choice and torch.distributed set-up.
"""
