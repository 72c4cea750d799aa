"""boed.runtime.distributed: torchrun's environment, the shards, the stores ranks can share, and
the sharded simulation with ranks emulated by threads (fast; the real torchrun + PostgreSQL
runs are in tests/cli/test_simulate_distributed.py)."""

from __future__ import annotations

import threading

import pytest

from boed.runtime.distributed import (
    DistributedError,
    Group,
    Launch,
    RanksLost,
    check_shared_store,
    launch_env,
    rank_device,
    shard,
    shard_bounds,
)
from boed.simulate import SimulationConfig, run_simulation
from tests.boed.toys import BayesClassifier, PosteriorSampler, ToyDataset, ToyWorld

TORCHRUN = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}  # fmt: skip


# ---------------------------------------------------------------- torchrun's environment
def test_no_torchrun_is_one_process():
    assert launch_env({}) == Launch() and launch_env({"WORLD_SIZE": "1", "RANK": "0"}) == Launch()


def test_torchrun_environment_is_read():
    launch = launch_env(TORCHRUN)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.local_world_size) == (3, 4, 1, 2)
    assert launch.multi_node and launch.master_addr == "10.0.0.1" and launch.master_port == 29500
    assert not launch_env(TORCHRUN | {"LOCAL_WORLD_SIZE": "4", "LOCAL_RANK": "3"}).multi_node


@pytest.mark.parametrize(
    "change,message",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"RANK": ""}, "WORLD_SIZE=4 but RANK not set"),
        ({"MASTER_ADDR": "", "MASTER_PORT": ""}, "MASTER_ADDR, MASTER_PORT not set"),
        ({"RANK": "4"}, "RANK=4 is outside 0..3"),
        ({"RANK": "-1"}, "RANK=-1 is outside 0..3"),
        ({"LOCAL_WORLD_SIZE": "5"}, "LOCAL_WORLD_SIZE=5 must be between 1 and WORLD_SIZE=4"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 is outside 0..1"),
    ],
)
def test_inconsistent_environment_is_one_line(change, message):
    with pytest.raises(DistributedError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        launch_env(TORCHRUN | change)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- shards
@pytest.mark.parametrize("n", [0, 1, 5, 7, 16, 25])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_item_once_in_order(n, world):
    items = list(range(100, 100 + n))
    parts = [shard(items, r, world) for r in range(world)]
    assert sum(parts, []) == items  # in rank order: all of them, none twice
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [shard_bounds(n, r, world)[0] for r in range(world)] == [sum(sizes[:r]) for r in range(world)]


def test_shard_of_a_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        shard_bounds(4, 2, 2)


# ---------------------------------------------------------------- the store the ranks share
def _ranks(world=2, local=2):
    return Group(Launch(rank=0, world_size=world, local_rank=0, local_world_size=local))


def test_one_process_may_use_any_store():
    assert check_shared_store("sqlite://", Group()) == [] and check_shared_store(None, Group()) == []


def test_ranks_on_one_machine_share_an_sqlite_file_with_a_warning(tmp_path):
    (line,) = check_shared_store(str(tmp_path / "x.db"), _ranks())
    assert "2 ranks share the SQLite file" in line and "PostgreSQL" in line


@pytest.mark.parametrize(
    "url,ranks,message",
    [
        ("sqlite://", _ranks(), "in-memory SQLite database is private to one process"),
        ("sqlite:///:memory:", _ranks(), "in-memory SQLite"),
        ("runs/x.db", _ranks(4, 2), "cannot be shared by ranks on 2 machines"),
        (None, _ranks(8, 4), "--db (default runs/boed.db): an SQLite file cannot be shared"),
    ],
)
def test_stores_the_ranks_cannot_share_are_refused(url, ranks, message):
    with pytest.raises(DistributedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_shared_store(url, ranks)


def test_postgresql_is_fine_for_any_number_of_machines():
    assert check_shared_store("postgresql+psycopg://u@db.example/boed", _ranks(16, 8)) == []


def test_rank_device_gives_each_local_rank_its_gpu():
    ranks = Group(Launch(rank=5, world_size=8, local_rank=1, local_world_size=4))
    assert rank_device("cuda", ranks) == "cuda:1" and rank_device("cuda:0", ranks) == "cuda:0"
    assert rank_device("cpu", ranks) == "cpu" and rank_device("cuda", Group()) == "cuda"


# ---------------------------------------------------------------- the group, emulated by threads
def test_one_process_group_is_a_no_op():
    group = Group()
    assert not group.enabled and group.is_main and group.broadcast({"a": 1}) == {"a": 1}
    assert group.gather([1]) == [[1]] and group.on_main(lambda: 7, "x") == 7 and group.shard([1, 2]) == [1, 2]
    group.barrier()
    group.close()


class ThreadRanks(Group):
    """Rank ``rank`` of ``world`` threads of one process: the control messages through shared slots
    and a barrier (a broken barrier, e.g. a thread that died, is :class:`RanksLost`, as a lost
    process is for the real group)."""

    def __init__(self, rank: int, shared: dict):
        world = shared["barrier"].parties
        super().__init__(Launch(rank=rank, world_size=world, local_rank=rank, local_world_size=world))
        self.shared = shared

    def barrier(self) -> None:
        try:
            self.shared["barrier"].wait()
        except threading.BrokenBarrierError:
            raise RanksLost(f"rank {self.rank}: another rank stopped before the barrier") from None

    def broadcast(self, value=None):
        if self.is_main:
            self.shared["slot"] = value
        self.barrier()
        value = self.shared["slot"]
        self.barrier()
        return value

    def gather(self, value):
        self.shared.setdefault("slots", {})[self.rank] = value
        self.barrier()
        values = [self.shared["slots"][r] for r in range(self.world_size)]
        self.barrier()
        return values


def _shared(world: int, timeout: float = 30.0) -> dict:
    return {"barrier": threading.Barrier(world, timeout=timeout)}


def test_on_main_hands_rank_0s_failure_to_every_rank():
    shared, seen = _shared(2), {}

    def rank(r):
        try:
            ThreadRanks(r, shared).on_main(lambda: 1 / 0, "start the run")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            seen[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert isinstance(seen[0], ZeroDivisionError)
    assert isinstance(seen[1], DistributedError)
    assert str(seen[1]) == "rank 0 failed to start the run: ZeroDivisionError: division by zero"


# ---------------------------------------------------------------- the sharded simulation
WORLD = ToyWorld(seed=4)
CONFIG = SimulationConfig(images="toy", n_images=5, scans=2, n_samples=4, grid=3, image_size=8,
                          patch_size=4, policies=("boed", "random"), figure_sessions=2,
                          figure_completions=2, seed=7)  # fmt: skip


class Killed(BaseException):  # noqa: N818 - a process that dies: nothing handles it
    pass


class DyingStore:
    """A store whose process dies (:class:`Killed`) at its ``n``-th ``log_step``."""

    def __init__(self, store, n: int):
        self.store, self.n = store, n

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if name != "log_step":
            return attr

        def log_step(*args, **kwargs):
            self.n -= 1
            if self.n == 0:
                raise Killed
            return attr(*args, **kwargs)

        return log_step


def _simulate(db, ranks=None, run_id=None, die_after=None):
    from boed.store import Store

    with Store.open(db) as store:
        used = store if die_after is None else DyingStore(store, die_after)
        data = ToyDataset(WORLD, n=5)
        return run_simulation(
            used, data, PosteriorSampler(WORLD), BayesClassifier(WORLD), CONFIG, run_id=run_id, ranks=ranks
        )


def _in_threads(db, world, die=None, timeout=30.0):
    """Run the simulation as ``world`` thread-ranks; ``die = (rank, n)``: that rank dies at its
    n-th step write. Returns ``{rank: run id or the exception}``."""
    shared, out = _shared(world, timeout), {}

    def rank(r):
        try:
            after = die[1] if die and die[0] == r else None
            out[r] = _simulate(db, ThreadRanks(r, shared), die_after=after)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            out[r] = exc
            shared["barrier"].abort()  # as a dead process breaks its connections

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    return out


def _rows(db):
    from boed.store import Store

    with Store.open(db) as store:
        run_id = store.latest_run_id()
        sessions = store.sessions(run_id).sort_values(["image_id", "policy"])
        steps = store.steps(run_id, status=None, eig_map=True).sort_values(["image_id", "policy", "step"])
        preds = store.predictions(run_id, status=None).sort_values(["image_id", "policy", "step", "label"])
        arrays = {
            (r.image_id, r.policy, k): v.tolist()
            for r in sessions.itertuples()
            for k, v in store.load_arrays(int(r.session_id)).items()
        }
        keys = ["image_id", "policy"]
        step_columns = [*keys, "step", "row", "col", "candidate", "eig", "eig_map", "eig_se", "ess"]
        return {
            "run": store.get_run(run_id),
            "sessions": sessions[[*keys, "image_index", "status", "n_steps"]].values.tolist(),
            "steps": _exact(steps[step_columns]),
            "predictions": _exact(preds[[*keys, "step", "label", "prob", "truth"]]),
            "arrays": arrays,
        }


def _exact(frame) -> list[str]:
    """Rows as the repr of their values: exact floats, and NaN / NA compare equal to themselves."""
    return [repr(row) for row in frame.values.tolist()]


def _same(a, b):
    for key in ("sessions", "steps", "predictions", "arrays"):
        assert a[key] == b[key], key


def test_three_thread_ranks_store_the_rows_of_one_process(tmp_path):
    single, sharded = tmp_path / "one.db", tmp_path / "three.db"
    _simulate(single)
    out = _in_threads(sharded, 3)
    assert len(set(out.values())) == 1 and isinstance(out[0], str)  # one run id on every rank
    a, b = _rows(single), _rows(sharded)
    _same(a, b)
    assert len(b["sessions"]) == 5 * 3 and b["arrays"]
    assert b["run"].status == "done" and b["run"].timings["ranks"] == 3
    assert "ranks" not in a["run"].timings


def test_a_dead_rank_leaves_a_run_that_one_process_completes(tmp_path):
    single, sharded = tmp_path / "one.db", tmp_path / "two.db"
    _simulate(single)
    out = _in_threads(sharded, 2, die=(1, 4))  # rank 1 (images 2..4) dies at its 4th step write
    assert isinstance(out[1], Killed) and isinstance(out[0], RanksLost)
    before = _rows(sharded)
    assert before["run"].status == "interrupted" and "another rank stopped" in before["run"].error
    statuses = [s[3] for s in before["sessions"]]
    assert "running" in statuses and len(statuses) < 5 * 3
    _simulate(sharded, run_id=before["run"].run_id)  # one process, the same run
    after = _rows(sharded)
    _same(a := _rows(single), after)
    pairs = [tuple(s[:2]) for s in after["sessions"]]
    assert len(pairs) == len(set(pairs)) == 5 * 3 and after["run"].status == "done"
    assert a["run"].status == "done"


def test_resume_shares_only_the_images_still_to_do(tmp_path):
    """A resumed run with 2 ranks: rank 0 hands out only the images that miss a session."""
    db = tmp_path / "r.db"
    out = _in_threads(db, 2, die=(1, 2))
    run_id = _rows(db)["run"].run_id
    assert isinstance(out[1], Killed)
    from boed.store import Store

    with Store.open(db) as store:
        kept = store.sessions(run_id).query("status != 'running'")  # resume_plan drops the others
        complete = {int(i) for i, n in kept.groupby("image_index").size().items() if n == 3}
    todo = [i for i in range(5) if i not in complete]
    seen = {}

    class Watching(ThreadRanks):
        def shard(self, items):
            seen[self.rank] = list(items)
            return super().shard(items)

    shared = _shared(2)
    threads = [
        threading.Thread(target=lambda r=r: _simulate(db, Watching(r, shared), run_id=run_id))
        for r in range(2)
    ]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert seen[0] == seen[1] == todo and todo != list(range(5))
    assert _rows(db)["run"].status == "done" and len(_rows(db)["sessions"]) == 15
