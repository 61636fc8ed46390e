"""tools/benchmark.py: the FLOP/param path on tiny models and one subprocess measurement."""
import argparse

import pytest
from tool_loader import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("benchmark")


def test_flops_and_params_tiny_models(tool):
    vgru = tool.measure_flops("test-visiongru", 32)
    assert vgru["params"] > 0 and vgru["macs"] > 0
    assert vgru["scan"] > 0, "VisionGRU's linear_scan must be counted"
    seq = tool.measure_flops("test-sequencer", 32)
    assert seq["params"] > 0 and seq["macs"] > 0
    assert seq["rnn"] > 0, "Sequencer's LSTMs must be counted"
    # the tables render from these records
    records = [dict(model="test-visiongru", res=32, mode="flops", status="ok", **vgru)]
    assert "test-visiongru" in tool.resolution_table(records)
    assert "| deit-s | 224 |" in tool.fidelity_table(records)


def test_subprocess_measurement_positive(tool):
    args = argparse.Namespace(threads=1, warmup=1, runs=2, point_budget_s=5.0, max_step_s=30.0, timeout=120.0)
    rec = tool.run_point("test-visiongru", 32, "infer", args)  # one fresh worker process
    assert rec["status"] == "ok", rec
    assert rec["images_per_s"] > 0 and rec["median_s"] > 0
    assert rec["peak_mem_mib"] > 0
    train = tool.measure_speed("test-sequencer", 32, "train", runs=2, warmup=1, point_budget_s=5.0,
                               max_step_s=30.0)  # the training step, in-process to keep the test fast
    assert train["images_per_s"] > 0 and train["peak_mem_mib"] >= 0
