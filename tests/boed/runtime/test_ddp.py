"""The shared trainer under DDP (gloo, 2 processes): a NaN loss on one rank makes every rank skip
that step together; and 2 ranks with the same global batch train the same weights as one process,
resume included (the data path's global batches and global_batch_draw)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from torch import nn
from boed.runtime.data import endless
from boed.runtime.training import Phase, train

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Linear(3, 1)
net = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
g = torch.Generator().manual_seed(rank)
x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
step = {"i": 0}

def loss_fn(_):
    loss = ((net(x) - y) ** 2).mean()
    if rank == 1 and step["i"] == 2:
        loss = loss * float("nan")  # the injected fault: only rank 1, only step 2
    step["i"] += 1
    return {"loss": loss}

weights = []
state = train(
    Phase(loss_fn, opt, skip_threshold=1e6),
    endless([0]),
    5,
    callbacks=[lambda s, _: weights.append(model.weight.detach().flatten().tolist())],
)
with open(os.environ["OUT"] + f".{rank}.json", "w") as fh:
    json.dump({"skipped": state.skipped, "weights": weights}, fh)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nan_on_one_rank_skips_the_step_on_both(tmp_path):
    script = tmp_path / "ddp_nan.py"
    script.write_text(SCRIPT)
    port = _free_port()
    root = Path(__file__).parents[3]
    procs = []
    for rank in range(2):
        env = os.environ | {
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(root),
            "OUT": str(tmp_path / "result"),
        }
        procs.append(
            subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE, text=True)
        )
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errors
    r0, r1 = (json.loads((tmp_path / f"result.{r}.json").read_text()) for r in range(2))
    assert r0["skipped"] == r1["skipped"] == 1
    assert r0["weights"] == r1["weights"]  # the replicas never diverged
    w = r0["weights"]
    assert w[2] == w[1]  # step 3 (index 2) was skipped on both ranks
    assert w[1] != w[0] and w[3] != w[2]  # the other steps were applied


def _launch(script_args: list[str], tmp_path, world: int = 2) -> list[str]:
    """Start ``world`` ranks of ``python script_args`` under torchrun's variables; their stderr."""
    port = _free_port()
    root = Path(__file__).parents[3]
    procs = []
    for rank in range(world):
        env = os.environ | {
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(root),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, *script_args], env=env, cwd=root, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        errors = [p.communicate(timeout=180)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * world, errors
    return errors


@pytest.mark.slow  # two processes that import torch, ~20 s of CPU
def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(tmp_path):
    import numpy as np

    from tests.boed.runtime.ddp_equal import GLOBAL_BATCH, STEPS, run

    one = run(str(tmp_path / "one"), world_size=1, rank=0)
    _launch(["-m", "tests.boed.runtime.ddp_equal", str(tmp_path / "two")], tmp_path)
    r0, r1 = (json.loads((tmp_path / f"two.{r}.json").read_text()) for r in range(2))
    assert r0["step"] == one["step"] == STEPS
    assert r0["images_seen"] == STEPS * GLOBAL_BATCH // 2 and one["images_seen"] == STEPS * GLOBAL_BATCH
    for key in ("weights", "ema"):
        assert r0[key] == r1[key]  # the replicas agree exactly
        for a, b in zip(one[key], r0[key], strict=True):  # and match one process up to rounding
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved = max(
        abs(x - y) for a, b in zip(one["weights"], run_init(), strict=True) for x, y in zip(a, b, strict=True)
    )
    assert moved > 1e-2  # the comparison is not between untrained nets


def run_init() -> list[list[float]]:
    from tests.boed.runtime.ddp_equal import _net

    return [p.detach().flatten().tolist() for p in _net().parameters()]


@pytest.mark.slow  # two processes that import torch and the samplers, ~25 s of CPU
def test_two_ranks_train_the_sampler_of_one_process_with_the_same_global_batch(tmp_path):
    """The sampler trainer (train_generative) with resume: the checkpoint rank 0 writes after 2 + 2
    steps on 2 ranks holds the weights one process writes with the same global batch."""
    import torch
    from safetensors.torch import load_file

    from generative.pixelcnn_local import FAMILY
    from tests.boed.runtime.ddp_equal import SEED, run_sampler

    run_sampler(str(tmp_path / "one"))
    _launch(["-m", "tests.boed.runtime.ddp_equal", str(tmp_path / "two"), "sampler"], tmp_path)
    one, two = (load_file(tmp_path / f"{name}.safetensors") for name in ("one", "two"))
    assert json.loads((tmp_path / "two.json").read_text())["training"]["step"] == 4
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6)
    torch.manual_seed(SEED)  # the trainer's initialisation
    init = FAMILY.build_model(FAMILY.config("tiny")).state_dict()
    assert any(not torch.equal(init[k], one[k]) for k in one if k in init)  # trained, not initial
