"""The toy world's parts behind ``boed simulate`` (tiny preset), for tests in and out of process.

In a test: ``install(monkeypatch.setattr, monkeypatch.setitem)``. As a script (the SIGTERM test
runs the CLI in a real subprocess)::

    python -m tests.cli.toy_simulate SECONDS_PER_SESSION simulate --preset tiny ...

installs the same parts, slows every scan session down by SECONDS_PER_SESSION and runs ``boed``.
"""

from __future__ import annotations

import sys
import time
import types

from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyDataset, ToyWorld


def install(setattr_, setitem, seconds_per_session: float = 0.0) -> None:
    """Replace the classifier loader, the sampler registry and the dataset opener by toy parts."""
    world = ToyWorld(size=32, patch=8, seed=4)

    def load_classifier(path=None, *, preset="cpu", device="cpu"):
        return BayesClassifier(world)

    def build_sampler(name, checkpoint=None, *, preset="cpu", device="cpu"):
        sampler = PosteriorSampler(world)
        sampler.name, sampler.sha256 = name, "0" * 64
        return sampler

    def open_dataset(images="chestxray", *, split="train", size=64, n=None, data_root=None, seed=0, **kw):
        return ToyDataset(world, n=n or 4, seed=seed + 1)

    import boed.simulate
    import classifiers
    import datasets

    registry = types.ModuleType("generative.registry")
    registry.SAMPLERS = ("aipo", "aipo-r", "vae")
    registry.build_sampler = build_sampler
    setitem(sys.modules, "generative.registry", registry)
    setattr_(classifiers, "load_classifier", load_classifier)
    setattr_(datasets, "open_dataset", open_dataset)
    if seconds_per_session:
        real = boed.simulate.run_session

        def slow(*args, **kwargs):
            time.sleep(seconds_per_session)
            return real(*args, **kwargs)

        setattr_(boed.simulate, "run_session", slow)


if __name__ == "__main__":
    from cli.main import app

    install(setattr, lambda mapping, key, value: mapping.__setitem__(key, value), float(sys.argv[1]))
    app(sys.argv[2:], prog_name="boed")
