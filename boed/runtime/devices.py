"""Device selection and torch.distributed set-up (works under ``torchrun``; gloo on CPU, nccl on GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from boed.errors import BoedError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` are taken as given.

    Raises:
        BoedError: (a ``ValueError``) a misspelt device or CUDA on a machine without it, one line
            naming ``--device``, which every CLI command shows as it is.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BoedError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BoedError(f"--device {name}: CUDA is not available on this machine")
    return device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); else a no-op.

    torchrun's variables are read and checked by :func:`boed.runtime.distributed.launch_env` (an
    inconsistent environment is one ``DistributedError`` line naming the variable).
    """
    from boed.runtime.distributed import launch_env

    launch = launch_env()
    if launch.world_size <= 1:
        return DistInfo()
    import torch.distributed as dist

    local_rank = launch.local_rank
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
