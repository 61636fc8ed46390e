"""docs/ keeps tables and figures: trained models and raw timing files are not in the repository, the
benchmark tables are what the report script makes from the committed store, and a missing trained model
comes with the command that re-trains it."""
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest
from tool_loader import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")


def _tracked_docs():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "docs"], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_docs_hold_no_trained_models_or_per_pass_timing_files():
    tracked = _tracked_docs()
    models = [p for p in tracked if p.endswith((".pth", ".pt", ".ckpt", ".safetensors"))]
    assert not models, f"trained models belong in work_dirs/, not docs/ (re-trained by a command): {models}"
    raw = [p for p in tracked if re.fullmatch(r"docs/benchmarks/(timing\d*|eager|issue12)\.json", p)
           or p.startswith("docs/benchmarks/issue12_repeats/")]
    assert not raw, f"per-pass timing files: merge them into docs/benchmarks/results.json instead: {raw}"


def test_benchmark_tables_are_the_reports_of_the_committed_store():
    report = load_tool("benchmark_report")
    records, meta = report.load([os.path.join(DOCS, "benchmarks", "results.json")])
    with open(os.path.join(DOCS, "benchmarks", "README.md")) as handle:
        readme = handle.read()
    assert report.resolution_table(records, meta["models"]) in readme, \
        "docs/benchmarks/README.md differs from its store: run step 9 of docs/benchmarks/run_timing.sh"
    assert report.fidelity_table(records) in readme
    for line in report.targets(records):
        assert f"- {line}" in readme


def _hgru_steps():
    path = os.path.join(REPO, "tools", "analysis", "hgru_steps.py")
    spec = importlib.util.spec_from_file_location("rv_tool_hgru_steps", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_trained_model_names_the_command_that_retrains_it(tmp_path):
    tool = _hgru_steps()
    reports = sorted(glob.glob(os.path.join(DOCS, "pathfinder_results", "**", "*_N*.json"), recursive=True))
    saved = []
    for path in reports:
        with open(path) as handle:
            command = json.load(handle).get("command", "")
        match = re.search(r"--save (\S+)", command)
        if match:
            saved.append((os.path.relpath(path, REPO), match.group(1)))
    assert saved, "the Pathfinder reports record the commands that trained their models"
    cwd = os.getcwd()
    os.chdir(REPO)  # the reports record repository-relative paths
    try:
        for report, model in saved:
            if os.path.exists(model):
                continue
            hint = tool.regenerate_hint(model)
            assert "tools/train_pathfinder.py" in hint and f"--save {model}" in hint, hint
            assert f"--out {report}" not in hint, "the re-run must not overwrite the committed report"
            with open(report) as handle:
                recorded = json.load(handle)
            reduction = recorded.get("lcp_reduction", "sum")  # reports before the setting: summed
            assert f"--lcp-reduction {reduction}" in hint, ("the re-run must use the recorded penalty scale, "
                                                            f"not today's default: {hint}")
            with pytest.raises(SystemExit, match=f"{re.escape(model)} does not exist; re-train it"):
                tool.load_model(model)
    finally:
        os.chdir(cwd)
    with pytest.raises(SystemExit, match="train one with .*--save .*nothing.pth"):
        tool.load_model(str(tmp_path / "nothing.pth"))
