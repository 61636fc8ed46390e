"""An eager forward imports no compiler stack: not torch._dynamo, sympy, inductor or torch's extension
builder (the cached CPU kernel is imported directly), nor triton on the CPU — with and without autograd,
for every registered model. (The first call's time and memory are a benchmark figure:
tools/benchmark_first_call.py; the README quotes it.)"""
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CHILD = r"""
import json, sys, torch
from rv_plugins.backbones import create_backbone, model_names
from rv_plugins.backbones.registry import get_backbone
seen = {}
for family in ("visiongru", "sequencer2d"):
    entry = get_backbone(family)
    model = create_backbone(family, arch=entry.test_arch, **dict(entry.test_kwargs or {}))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.eval()(x)
    model.train()(x)[-1].sum().backward()
heavy = ("torch._dynamo", "sympy", "torch._inductor", "torch.utils.cpp_extension", "triton")
print("MODULES " + json.dumps([m for m in heavy if m in sys.modules]))
"""


def test_an_eager_forward_and_backward_import_no_compiler_stack():
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("MODULES "))
    assert json.loads(line[len("MODULES "):]) == []


def test_the_first_call_benchmark_runs(tmp_path):
    out = tmp_path / "first.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark_first_call.py"), "--models",
                           "visiongru-ti", "--small", "32", "--large", "64", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| visiongru-ti |" in proc.stdout
    records = json.loads(out.read_text())["records"]
    assert {r["case"] for r in records} == {"first", "peak"} and all(r["imported"] == [] for r in records)
