"""docs/adding_a_scan_backend.md runs as written: its backend file registers a backend that the public ops
run forward and backward, equal to the reference (in a child process: the registration stays there)."""
import os
import re
import subprocess
import sys

GUIDE = os.path.join(os.path.dirname(__file__), "..", "docs", "adding_a_scan_backend.md")


def test_the_guide_template_runs_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", open(GUIDE).read(), re.S)
    backend_file, usage = blocks[0], blocks[1]
    assert backend_file.startswith("# my_scan_backend.py")
    (tmp_path / "my_scan_backend.py").write_text(backend_file)
    check = ("import my_scan_backend\n" + usage +
             "h.sum().backward() if h.requires_grad else None\n"
             "a.requires_grad_(True); b.requires_grad_(True)\n"
             "from rv_plugins.ops import linear_scan_reference\n"
             "torch.testing.assert_close(linear_scan(a, b, backend='my-loop'), linear_scan_reference(a, b))\n"
             "y.sum().backward(); g = proj.grad.clone(); proj.grad = None\n"
             "mingru_scan_reference(proj, bidirectional=True, candidate_act='g').sum().backward()\n"
             "torch.testing.assert_close(g, proj.grad)\n"
             "print('GUIDE-OK')\n")
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "GUIDE-OK" in proc.stdout, proc.stderr[-3000:]
