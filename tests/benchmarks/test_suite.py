"""The benchmark suite's plumbing on cheap items (the figures themselves are measured by hand)."""

import argparse
import json

import pytest
import torch

from benchmarks import suite


def _args(**kw):
    return argparse.Namespace(
        **{"quick": True, "threads": 1, "device": "cpu", "repeats": 1, "loop_candidates": 2, **kw}
    )


def test_sampler_item_pairs_the_batched_call_with_its_reference():
    result = suite.sampler_item(_args(), torch.device("cpu"), "mean")
    ref, batched = result["rows"]
    assert ref["reference"] is None and batched["reference"] == ref["method"]
    assert batched["unit"] == ref["unit"] == "completions/s" and ref["value"] > 0
    assert batched["ratio"] == pytest.approx(batched["value"] / ref["value"], rel=1e-6)
    assert result["deterministic"] and result["n"] == 2


def test_run_item_records_memory_and_load(tmp_path):
    result = suite.run_item("baseline", _args())
    assert result["peak_rss_mib"] > 10 and len(result["load_average_start"]) == 3
    record = {"quick": True, "machine": suite.machine(_args()), "items": [result], "notes": ["n"]}
    json.dumps(record)  # serialisable
    md = suite.markdown(record)
    assert "| baseline | (imports only) |" in md and "torch " + torch.__version__ in md


def test_markdown_rows_and_errors():
    machine = {
        "threads": 2,
        "device": "cpu",
        "time": "t",
        "commit": "c",
        "cpu": "x",
        "cores": 2,
        "torch": "2",
        "onnxruntime": None,
        "load_average": (1.0, 2.0, 3.0),
    }
    item = {
        "item": "decision-cpu",
        "load_average_start": (4.0, 0, 0),
        "load_average_end": (5.0, 0, 0),
        "peak_rss_mib": 512.0,
        "rows": [suite._row("loop", 6.0, "s"), suite._row("fast", 1.5, "s", reference="loop", ratio=4.0)],
    }
    failed = {"item": "sampler:x", "error": "over the 600 s limit", "rows": []}
    md = suite.markdown({"quick": False, "machine": machine, "items": [item, failed]})
    assert "| decision-cpu | fast | 1.5 | s | 4 | 512 | 4.0 → 5.0 |" in md
    assert "| sampler:x | not measured: over the 600 s limit |" in md


def test_unknown_item_is_refused(capsys):
    with pytest.raises(SystemExit):
        suite.main(["--only", "nonsense", "--out", "unused"])
    assert "unknown item 'nonsense'" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_item(capsys, tmp_path):
    with pytest.raises(SystemExit):
        suite.main(["--device", "cuda", "--only", "decision-paper", "--out", str(tmp_path)])
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started, nothing written
