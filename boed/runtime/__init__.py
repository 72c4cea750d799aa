"""Runtime helpers shared by every trainable part: checkpoints, devices, distributed, training loop."""
