"""Every code block of docs/tooling.md runs, in order, as written: image sizes made small, and the files a block
names (a checkpoint, an image) made first, randomly initialised."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmpretrain")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "tooling.md")
# the page's image sizes -> test sizes (whole assignments and flags only, so nothing else can change)
SMALL = [(r"^size = 224$", "size = 64"), (r"^height, width = \d+, \d+$", "height, width = 64, 96"),
         (r"--shape 224\b", "--shape 64")]


def blocks():
    """``(language, code)`` of each fenced python / bash block of the page, in order."""
    text = open(DOC).read()
    return [(lang, code) for lang, code in re.findall(r"```(python|bash)\n(.*?)```", text, re.S)]


def small(code: str) -> str:
    for pattern, repl in SMALL:
        code = re.sub(pattern, repl, code, flags=re.M)
    return code


def _prepare_files(folder):
    """The files the page's blocks read: an mmpretrain VisionGRU-Ti checkpoint, an mmseg checkpoint of the
    synthetic config (as the runner writes: weights + dataset metainfo), a demo image."""
    script = f"""
import os, cv2, numpy as np, torch
os.chdir({folder!r})
import rv_plugins.mmpretrain, rv_plugins.mmseg
from mmengine.registry import DefaultScope
from mmpretrain import get_model
from mmseg.apis import init_model
from mmseg.registry import DATASETS
with DefaultScope.overwrite_default_scope('mmpretrain'):
    clf = get_model('visiongru-ti_8xb128_in1k')
os.makedirs('checkpoints', exist_ok=True)
torch.save(dict(state_dict=clf.state_dict()), 'checkpoints/visiongru_ti_released_mmpretrain.pth')
seg = init_model('configs/upernet_visiongru_ti_synthetic.py', device='cpu')
meta = DATASETS.build(dict(seg.cfg.test_dataloader.dataset, num_samples=1)).metainfo
os.makedirs('work_dirs/upernet_visiongru_ti_synthetic', exist_ok=True)
torch.save(dict(state_dict=seg.state_dict(), meta=dict(dataset_meta=dict(meta))),
           'work_dirs/upernet_visiongru_ti_synthetic/iter_800.pth')
cv2.imwrite('demo.jpg', (np.random.RandomState(0).rand(72, 96, 3) * 255).astype(np.uint8))
"""
    _run("python", script, folder)


def _run(lang, code, folder):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    res = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{lang} block failed:\n{code}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n" \
                                f"{res.stderr[-5000:]}"
    return res.stdout


def test_the_page_has_the_blocks_this_test_expects():
    found = blocks()
    assert len(found) >= 8 and sum(lang == "bash" for lang, _ in found) == 1
    changed = [code for _, code in found if small(code) != code]
    assert len(changed) == 5  # each size of the page is reduced (a missed one would run at full size)


@pytest.mark.slow
def test_every_block_of_docs_tooling_runs(tmp_path):
    for name in ("configs", ".venv"):
        os.symlink(os.path.join(REPO, name), tmp_path / name)
    _prepare_files(str(tmp_path))
    outputs = [_run(lang, small(code), str(tmp_path)) for lang, code in blocks()]
    joined = "\n".join(outputs)
    assert "GMACs" in joined and "visiongru-ti_8xb128_in1k" in joined
    assert (tmp_path / "outputs" / "vis" / "scene.png").exists() and (tmp_path / "outputs" / "pred").is_dir()
    assert "torch.Size([1, 64, 64])" in outputs[-1]
