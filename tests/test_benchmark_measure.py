"""rv_plugins.utils.measure: the timing, memory and child-process helpers of the benchmark tools."""
import json
import os
import sys
import time

import pytest
import torch

from rv_plugins.utils import measure


def test_time_calls_counts_warmup_and_repeats():
    calls = []
    timing = measure.time_calls(lambda: calls.append(1), warmup=3, repeats=4)
    assert len(calls) == 3 + 4  # the timed first call is warm-up call 1
    assert len(timing.times) == timing.summary()["n_runs"] == 4
    assert timing.best_s <= timing.median_s and timing.first_s >= 0
    summary = timing.summary(per_call=8)
    assert summary["images_per_s"] == pytest.approx(8 / timing.median_s)
    assert summary["cpu_images_per_s"] == pytest.approx(8 / timing.cpu_median_s)
    assert summary["note"] == ""


def test_time_calls_budget_and_slow_first_call():
    timing = measure.time_calls(lambda: time.sleep(0.02), warmup=1, repeats=10, budget_s=0.03)
    assert len(timing.times) == 2, "timed runs stop once their total passes the budget"
    assert min(timing.times) >= 0.015
    # sleeping costs no CPU time: the thread's CPU time per call is far below the wall time
    assert timing.cpu_median_s < timing.median_s / 2
    calls = []
    slow = measure.time_calls(lambda: (calls.append(1), time.sleep(0.03)), warmup=2, repeats=5, max_first_s=0.01)
    assert len(calls) == 1 and slow.times == [slow.first_s] and "first call" in slow.note
    assert "cpu_images_per_s" not in slow.summary()
    with pytest.raises(ValueError, match="repeats"):
        measure.time_calls(lambda: None, repeats=0)


def test_time_call_uses_cuda_events_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.randn(2048, 2048, device="cuda")
    assert measure.time_call(lambda: x @ x, torch.device("cuda")) > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_counts_the_block_only():
    big = bytearray(96 * 2 ** 20)  # touched: resident before the block, freed before the next one
    del big
    with measure.PeakRSS() as quiet:
        pass
    assert quiet.method == "VmHWM after clear_refs"
    assert quiet.mib < 24, "the high-water mark must be reset at entry (an earlier peak leaked in)"
    with measure.PeakRSS() as peak:
        buf = bytearray(64 * 2 ** 20)
        del buf
    assert 56 < peak.mib < 160
    assert measure.rss_mib() > 0


def test_cuda_peak_off_cuda_is_none():
    with measure.CudaPeak(torch.device("cpu")) as peak:
        torch.zeros(10)
    assert peak.mib is None


def test_threads_and_environment():
    before = torch.get_num_threads()
    try:
        assert measure.pin_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match=">= 1"):
        measure.pin_threads(0)
    env = measure.thread_env(3, ["/a"], base={"PYTHONPATH": "/b", "X": "1"})
    assert env == {"PYTHONPATH": "/a" + os.pathsep + "/b", "X": "1", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert measure.thread_env(2, ["/a"], base={})["PYTHONPATH"] == "/a"
    meta = measure.environment("cmd")
    assert meta["command"] == "cmd" and meta["torch"] == torch.__version__ and "UTC" in meta["time"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    line = measure.command_line(["--x", "a b"], root, script=os.path.join(root, "tools", "t.py"))
    assert line.startswith("PYTHONPATH=. ") and line.endswith("tools/t.py --x 'a b'")


def _child(code):
    return [sys.executable, "-c", code]


def test_run_json_child_statuses():
    ok = measure.run_json_child(_child("print('noise'); print('RESULT ' + '{\"a\": 1}'); print('RESULT {\"a\": 2}')"))
    assert ok.status == "ok" and ok.result == {"a": 2} and ok.unwrap() == {"a": 2} and ok.wall_s >= 0
    failed = measure.run_json_child(_child("import sys; print('why it broke', file=sys.stderr); sys.exit(3)"))
    assert failed.status == "failed" and "rc 3" in failed.note and "why it broke" in failed.note
    with pytest.raises(RuntimeError, match="my child failed: rc 3"):
        failed.unwrap("my child")
    silent = measure.run_json_child(_child("print('no marker')"))
    assert silent.status == "failed" and "no 'RESULT' line" in silent.note
    slow = measure.run_json_child(_child("import time; time.sleep(30)"), timeout=0.5)
    assert slow.status == "timeout" and slow.result is None
    env = measure.thread_env(2)
    pinned = measure.run_json_child(_child(
        "import json, os; print('RESULT ' + json.dumps(os.environ['OMP_NUM_THREADS']))"), env=env)
    assert pinned.unwrap() == "2"


def test_emit_result_round_trips(capsys):
    measure.emit_result({"x": [1, 2]})
    line = capsys.readouterr().out.strip()
    assert line.startswith(measure.RESULT_MARKER) and json.loads(line[len(measure.RESULT_MARKER):]) == {"x": [1, 2]}
