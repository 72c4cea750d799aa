"""``boed`` with the toy world's parts (tests/cli/toy_simulate.py), as one rank of a torchrun job::

    python -m torch.distributed.run --nproc-per-node 2 -m tests.cli.toy_ranks simulate --preset tiny ...

Fault hook, for the kill-one-rank test: with ``TOY_KILL_RANK=r`` and ``TOY_KILL_AFTER=k`` rank ``r``
kills itself with SIGKILL (no cleanup, as the OOM killer or a lost node would) in the middle of
its ``k + 1``-th scan session, once that session's steps 0 and 1 are stored: the store keeps the
sessions that rank finished and one half-written one.
"""

from __future__ import annotations

import os
import signal
import sys

from tests.cli.toy_simulate import install


def _kill_hook(setattr_) -> None:
    import boed.simulate

    real = boed.simulate.run_session
    after = int(os.environ["TOY_KILL_AFTER"])
    count = {"sessions": 0}

    def run_session(*args, **kwargs):
        count["sessions"] += 1
        if count["sessions"] <= after:
            return real(*args, **kwargs)
        on_step = kwargs["on_step"]

        def dying(record):
            on_step(record)
            if record.step >= 1:
                os.kill(os.getpid(), signal.SIGKILL)

        return real(*args, **(kwargs | {"on_step": dying}))

    setattr_(boed.simulate, "run_session", run_session)


if __name__ == "__main__":
    from cli.main import app

    install(setattr, lambda mapping, key, value: mapping.__setitem__(key, value))
    if os.environ.get("TOY_KILL_RANK") == os.environ.get("RANK", "0"):
        _kill_hook(setattr)
    app(sys.argv[1:], prog_name="boed")
