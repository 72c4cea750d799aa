"""--device: what a user may type, and one line for what cannot run here."""

import pytest
import torch

from boed.runtime.devices import resolve_device


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_misspelt_device_is_one_line_naming_the_option():
    with pytest.raises(ValueError, match=r"^--device gpu0: not a device; use auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line():
    with pytest.raises(ValueError, match=r"^--device cuda:1: CUDA is not available on this machine$"):
        resolve_device("cuda:1")
