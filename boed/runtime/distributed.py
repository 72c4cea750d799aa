"""The ranks of a ``torchrun`` job as the sharded commands see them (``boed simulate``, ``boed
evaluate-samplers``): who am I, which share of the work is mine, and a few control messages.

This is the one place that reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``; :func:`launch_env`). Without torchrun
(``WORLD_SIZE`` unset or 1) nothing is initialised and every call of :class:`Group` is a no-op
on the one process, so single-process runs need neither torchrun nor a process group.

Under torchrun, :func:`init_group` joins the default process group (the ``env://`` rendezvous
that torchrun prepares; gloo on CPU, NCCL on CUDA) and a gloo group for control messages, which
are small CPU objects whatever the device. Control messages are JSON sent as byte tensors
(:meth:`Group.broadcast`, :meth:`Group.gather`): nothing is pickled, unlike
``torch.distributed.broadcast_object_list``.

Work is split into contiguous shards (:func:`shard_bounds`: rank ``r`` of ``W`` takes items
``[r n // W, (r + 1) n // W)``), a pure function of ``(n, r, W)``: every rank computes every
shard the same way without talking to the others, and sources that generate images in seeded
blocks (the phantoms) render each block on one rank only.

Timeouts: a collective waits at most :data:`DEFAULT_TIMEOUT_S` (env ``BOED_DIST_TIMEOUT_S``),
long enough for the ranks' shards to finish at different times (the end-of-run gather waits
for the slowest rank). A rank that dies is noticed by torchrun, which stops the others.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from boed.errors import BoedError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 6 * 3600
"""Seconds a collective waits for the other ranks (env ``BOED_DIST_TIMEOUT_S`` overrides)."""


class DistributedError(BoedError):
    """An inconsistent torchrun environment, a store the ranks cannot share, or a failure of
    rank 0 seen by the other ranks (one line, naming the variable or option and the reason)."""


class RanksLost(DistributedError):  # noqa: N818 - reads as what happened
    """A collective failed: another rank stopped (died, or was stopped) before it got there."""


@contextmanager
def _collective(rank: int, what: str) -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:  # DistBackendError and gloo's connection errors are RuntimeErrors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RanksLost(f"rank {rank}: another rank stopped before the {what} ({first})") from None


@dataclass(frozen=True)
class Launch:
    """What torchrun's environment says about this process (all 0 / 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def multi_node(self) -> bool:
        """The job's ranks run on more than one machine."""
        return self.world_size > self.local_world_size


def _int(environ: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def launch_env(environ: Mapping[str, str] | None = None) -> Launch:
    """Read and check torchrun's variables (``os.environ`` by default).

    Raises :class:`DistributedError` (one line naming the variable) for an environment that
    cannot be a torchrun job: ``WORLD_SIZE`` < 1, a rank outside ``[0, WORLD_SIZE)``, a local
    rank outside ``[0, LOCAL_WORLD_SIZE)``, more local ranks than ranks, or ``WORLD_SIZE`` > 1
    without ``RANK``, ``MASTER_ADDR`` or ``MASTER_PORT`` (the ``env://`` rendezvous needs them).
    """
    env = os.environ if environ is None else environ
    world = _int(env, "WORLD_SIZE", 1)
    if world < 1:
        raise DistributedError(f"environment variable WORLD_SIZE={world} must be at least 1")
    if world == 1:
        return Launch()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name, "").strip()]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the job with torchrun "
            "(it sets them), or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT yourself"
        )
    rank = _int(env, "RANK", None)
    if not 0 <= rank < world:
        raise DistributedError(
            f"environment variable RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})"
        )
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    if not 1 <= local_world <= world:
        raise DistributedError(
            f"environment variable LOCAL_WORLD_SIZE={local_world} must be between 1 and WORLD_SIZE={world}"
        )
    local_rank = _int(env, "LOCAL_RANK", rank % local_world)
    if not 0 <= local_rank < local_world:
        raise DistributedError(
            f"environment variable LOCAL_RANK={local_rank} is outside 0..{local_world - 1} "
            f"(LOCAL_WORLD_SIZE={local_world})"
        )
    port = _int(env, "MASTER_PORT", None)
    return Launch(rank, world, local_rank, local_world, env["MASTER_ADDR"], port)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ by <= 1)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return rank * n // world_size, (rank + 1) * n // world_size


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of ``items`` (:func:`shard_bounds`); the shards of all
    ranks, in rank order, are ``items`` exactly (nothing twice, nothing left out)."""
    start, stop = shard_bounds(len(items), rank, world_size)
    return list(items[start:stop])


def _timeout() -> timedelta:
    seconds = _int(os.environ, "BOED_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
    if seconds < 1:
        raise DistributedError(f"environment variable BOED_DIST_TIMEOUT_S={seconds} must be at least 1")
    return timedelta(seconds=seconds)


@dataclass
class Group:
    """The ranks of one job. ``Group()`` is the single process: every call is a no-op on it.

    Control messages go over ``control`` (a gloo process group, ``None`` = the default group);
    they are JSON values (dicts, lists, strings, numbers), sent as bytes.
    """

    launch: Launch = field(default_factory=Launch)
    control: Any = None
    owns: bool = False  # this Group initialised the default process group (and destroys it)

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def local_rank(self) -> int:
        return self.launch.local_rank

    @property
    def enabled(self) -> bool:
        """More than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: it creates the run, writes the run's row and builds the report."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (all of them on one process)."""
        return shard(items, self.rank, self.world_size)

    # ------------------------------------------------------------------ control messages
    def barrier(self) -> None:
        """Wait until every rank has come here."""
        if self.enabled:
            import torch.distributed as dist

            with _collective(self.rank, "barrier"):
                dist.barrier(group=self.control)

    def broadcast(self, value: Any = None) -> Any:
        """Rank 0's ``value`` (JSON) on every rank; the others' ``value`` is ignored."""
        if not self.enabled:
            return value
        import torch
        import torch.distributed as dist

        data = json.dumps(value, allow_nan=False).encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        with _collective(self.rank, "broadcast from rank 0"):
            dist.broadcast(size, src=0, group=self.control)
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main else None
            if buffer is None:
                buffer = torch.empty(int(size.item()), dtype=torch.uint8)
            dist.broadcast(buffer, src=0, group=self.control)
        return json.loads(bytes(buffer.tolist()).decode()) if not self.is_main else value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (JSON), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch
        import torch.distributed as dist

        data = json.dumps(value, allow_nan=False).encode()
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        with _collective(self.rank, "gather of every rank's result"):
            dist.all_gather(sizes, size, group=self.control)
            longest = max(int(s.item()) for s in sizes)
            mine = torch.zeros(longest, dtype=torch.uint8)
            mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            parts = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.world_size)]
            dist.all_gather(parts, mine, group=self.control)
        return [
            json.loads(bytes(p[: int(s.item())].tolist()).decode()) for p, s in zip(parts, sizes, strict=True)
        ]

    def on_main(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0 only and hand its (JSON) result to every rank.

        If ``fn`` raises on rank 0, rank 0 re-raises it and every other rank raises
        :class:`DistributedError` naming ``what`` and rank 0's error, instead of waiting forever.
        """
        if not self.enabled:
            return fn()
        if self.is_main:
            try:
                value = fn()
            except BaseException as exc:
                self.broadcast({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})
                raise
            self.broadcast({"ok": value})
            return value
        message = self.broadcast()
        if "error" in message:
            raise DistributedError(f"rank 0 failed to {what}: {message['error']}")
        return message["ok"]

    def close(self) -> None:
        """Leave the process group if this Group joined it."""
        if self.owns:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns = False


def init_group(device: Any = None, environ: Mapping[str, str] | None = None) -> Group:
    """The job's :class:`Group`: joins torch.distributed under torchrun, else the single process.

    ``device``: the device this rank computes on (a ``torch.device`` or its name); CUDA gets NCCL
    for the default group (and ``torch.cuda.set_device(LOCAL_RANK)``), anything else gloo. The
    control messages always use a gloo group. A process group initialised earlier (a trainer in
    the same process) is reused and left open.
    """
    launch = launch_env(environ)
    if launch.world_size == 1:
        return Group(launch)
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    kind = torch.device(device).type if device is not None else "cpu"
    timeout = _timeout()
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if kind == "cuda" else "gloo"
        if kind == "cuda":
            torch.cuda.set_device(launch.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
        owns = True
    if dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
        raise DistributedError(
            f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, the environment "
            f"says RANK={launch.rank} of WORLD_SIZE={launch.world_size}"
        )
    control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    return Group(launch, control, owns)


def rank_device(name: str, group: Group) -> str:
    """The device of this rank for ``--device name``: ``cuda`` (or ``auto`` resolved to it) becomes
    ``cuda:LOCAL_RANK`` when several ranks run, one GPU each; explicit ``cuda:N`` is kept."""
    if group.enabled and name == "cuda":
        return f"cuda:{group.local_rank}"
    return name


def check_shared_store(url: Any, group: Group, option: str = "--db") -> list[str]:
    """Whether the ranks of ``group`` can share the store at ``url``; returns warnings (one line each).

    Refused (:class:`DistributedError`): an in-memory SQLite database (each process would have its
    own) and an SQLite file used by ranks on several machines (SQLite's locks need one host; on a
    network file system they are not safe). Several ranks on one machine may share an SQLite file
    (the store's ``BEGIN IMMEDIATE`` recipe loses no writes, see ``boed/store/engine.py``) but
    their writes queue on one file lock, so a warning recommends PostgreSQL.
    """
    if not group.enabled:
        return []
    from boed.store.engine import resolve_url

    sa_url = resolve_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return []
    database = sa_url.database or ""
    shown = option if url is None else f"{option} {url}"
    if database in ("", ":memory:") or "mode=memory" in database:
        raise DistributedError(
            f"{shown}: an in-memory SQLite database is private to one process, but the "
            f"{group.world_size} ranks need one shared store; give a PostgreSQL URL (docs/scaling.md)"
        )
    if group.launch.multi_node:
        raise DistributedError(
            f"{shown if url is not None else option + ' (default runs/boed.db)'}: an SQLite file cannot be "
            f"shared by ranks on {math.ceil(group.world_size / group.launch.local_world_size)} machines "
            "(its locks need one host); give a PostgreSQL URL (docs/scaling.md)"
        )
    return [
        f"{group.world_size} ranks share the SQLite file {database}: safe on one machine, but every write "
        "waits for one file lock; use a PostgreSQL URL for many ranks (docs/scaling.md)"
    ]
