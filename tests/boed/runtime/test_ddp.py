"""DDP-safe skipping: a NaN loss on one rank makes every rank skip that step together (gloo, 2 processes)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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
