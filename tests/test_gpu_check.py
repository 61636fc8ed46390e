"""tools/gpu_check.py rehearsed on the CPU at tiny sizes (Triton interpreted), with stand-ins for the peers
that are not installed here (same call signatures as fla-core 0.6.0 and accelerated-scan 0.3.1), so the
prepared GPU run cannot fail on a typo."""
import json
import sys
import types

import pytest
import torch
from tool_loader import TOOLS, load_tool

from rv_plugins.ops import linear_scan_reference as _loop   # h_t = a_t h_{t-1} + b_t: what every peer computes

pytest.importorskip("triton")
pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def stand_in_peers(monkeypatch):
    hgrn = types.ModuleType("fla.ops.hgrn")
    hgrn.chunk_hgrn = lambda x, g, initial_state=None, output_final_state=False: (_loop(g.exp(), x), None)
    hgrn.fused_recurrent_hgrn = hgrn.chunk_hgrn
    scalar = types.ModuleType("accelerated_scan.scalar")
    scalar.scan = lambda gates, tokens: _loop(gates.transpose(1, 2), tokens.transpose(1, 2)).transpose(1, 2)
    warp = types.ModuleType("accelerated_scan.warp")
    warp.scan = scalar.scan
    for name, module in (("fla", types.ModuleType("fla")), ("fla.ops", types.ModuleType("fla.ops")),
                         ("fla.ops.hgrn", hgrn), ("accelerated_scan", types.ModuleType("accelerated_scan")),
                         ("accelerated_scan.scalar", scalar), ("accelerated_scan.warp", warp)):
        monkeypatch.setitem(sys.modules, name, module)


def test_gpu_check_runs_every_section_at_tiny_sizes(tmp_path, stand_in_peers, capsys):
    tool = load_tool("gpu_check")
    raw = tool.main(["--tiny", "--out", str(tmp_path)])
    assert raw["failed"] == {}, raw["failed"]
    assert set(raw["sections"]) == set(tool.SECTIONS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("date", "device", "scan_fwd_frac_of_copy", "scan_fwdbwd_frac_of_copy", "fused_vs_unfused_fwdbwd",
                "scan_vs_fla_chunk_hgrn", "visiongru_vs_deit_img_s_1024_bf16", "visiongru_vs_deit_peak_mem_1024_bf16",
                "visiongru_vs_deit_train_512_bf16"):
        assert key in summary, key
    assert summary["scan_fwd_frac_of_copy"]["value"] > 0 and summary["scan_fwd_frac_of_copy"]["dtype"] in (
        "float32", "bfloat16")
    assert summary["scan_vs_fla_chunk_hgrn"]["value"] > 0 and summary["fused_vs_unfused_fwdbwd"]["value"] > 0
    assert summary["visiongru_vs_deit_img_s_1024_bf16"] > 0 and summary["visiongru_vs_deit_train_512_bf16"] > 0
    assert summary["visiongru_vs_deit_peak_mem_1024_bf16"] is None       # no CUDA peak on the CPU
    assert summary["kernels_match_reference"] is True and raw["sections"]["correct"]["rows"]
    assert json.loads((tmp_path / "correctness.json").read_text())["ok"] is True
    peers = raw["sections"]["peers"]["rows"][0]
    assert {"fla_chunk_hgrn", "fla_fused_recurrent_hgrn", "accelerated_scan_triton"} <= set(peers)
    assert raw["sections"]["profile"]["top"], "profiler table empty"
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"].keys() == raw["sections"].keys()


def test_a_failing_section_is_recorded_and_the_rest_runs(tmp_path, monkeypatch):
    tool = load_tool("gpu_check")
    monkeypatch.setattr(tool, "peer_fns", lambda: (_ for _ in ()).throw(RuntimeError("peer exploded")))
    raw = tool.main(["--tiny", "--out", str(tmp_path), "--sections", "copy", "scan", "peers"])
    assert "peer exploded" in raw["failed"]["peers"] and set(raw["sections"]) == {"copy", "scan"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == ["peers"] and summary["scan_vs_fla_chunk_hgrn"] is None
    assert summary["scan_fwdbwd_frac_of_copy"]["value"] > 0


def test_hung_kernels_skip_the_sections_that_run_them(tmp_path, monkeypatch):
    tool = load_tool("gpu_check")
    correctness = load_tool("gpu_correctness")

    def hang(path, tiny, timeout_s):
        raise correctness.KernelsHung("did not finish")
    monkeypatch.setattr(tool, "run_in_child", hang)
    raw = tool.main(["--tiny", "--out", str(tmp_path), "--sections", "copy", "correct", "scan", "fused"])
    assert set(raw["sections"]) == {"copy"}
    assert raw["failed"]["scan"] == raw["failed"]["fused"] == "skipped: our kernels hung in the correctness check"
    assert json.loads((tmp_path / "summary.json").read_text())["kernels_match_reference"] == "hung"


def test_the_child_is_killed_at_its_time_limit(tmp_path):
    correctness = load_tool("gpu_correctness")
    with pytest.raises(correctness.KernelsHung, match="did not finish in 0 s"):
        correctness.run_in_child(str(tmp_path / "c.json"), True, 0.2)   # importing torch alone takes longer


def test_the_correctness_check_reports_a_wrong_kernel(monkeypatch):
    """A Triton scan off by 1e-3 relative is a mismatch (so the GPU verdict can fail)."""
    import rv_plugins.ops as ops
    correctness = load_tool("gpu_correctness")
    real = ops.linear_scan

    def off(a, b, h0=None, reverse=False, backend=None):
        h = real(a, b, h0, reverse, backend=backend)
        return h * (1 + 1e-3) if backend == "triton" else h
    monkeypatch.setattr(ops, "linear_scan", off)
    rows = correctness.linear_checks(torch.device("cpu"), dict(correctness.TINY, linear=[((1, 13, 5), (torch.float32,))]))
    assert rows and not any(r["ok"] for r in rows)
    assert all(1e-4 < r["errors"]["out"] < 2e-3 for r in rows)


def test_the_watchdog_ends_a_run_that_runs_too_long(tmp_path):
    """--hang-s: every thread's stack on stderr, a non-zero exit, and the files of what finished kept."""
    import os
    import subprocess
    tool = os.path.join(TOOLS, "gpu_check.py")
    proc = subprocess.run([sys.executable, tool, "--tiny", "--out", str(tmp_path), "--sections", "copy", "profile",
                           "--hang-s", "0.05"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1"))
    assert proc.returncode != 0 and "Timeout" in proc.stderr, proc.stderr[-2000:]
    if "profile_section" in proc.stderr:   # (on a very slow machine the watchdog may fire before 'copy' ends)
        assert "copy" in json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
