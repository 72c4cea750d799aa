"""Test-session set-up: few threads, fixed seeds, fast defaults."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.pg import postgres_server  # noqa: E402, F401 - the throwaway PostgreSQL server, for every folder

torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded torch generator for one test."""
    return torch.Generator().manual_seed(0)
