"""Detectron2's ``--resume`` with the guarantees of ``tools/train.py``: atomic saves, the newest usable checkpoint.

Fast tests run ``rv_plugins.detectron2.checkpointer.AtomicDetectionCheckpointer`` on a small model; the slow
test trains a shrunk synthetic panoptic config with ``tools/train_net.py --resume``, SIGKILLs it at random
instants (some while a checkpoint exists only as its temporary file), and checks after each kill that no
completed checkpoint is lost and the next run resumes from the newest one, until the run ends.
"""
import logging
import os
import random
import re
import subprocess
import sys

import pytest
import torch
from run_helpers import sigkill_after_progress

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2")
from rv_plugins.detectron2.checkpointer import AtomicDetectionCheckpointer  # noqa: E402
from rv_plugins.engine import NoCompleteCheckpoint, checkpoint_problem, is_temporary  # noqa: E402
from rv_plugins.engine.atomic import SAVE_DELAY_ENV  # noqa: E402
from rv_plugins.engine.resume import DETECTRON2_RESUME_KEYS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Trainer:
    """The part of Detectron2's trainer its checkpointer saves: the iteration."""

    def __init__(self):
        self.iter = 0

    def state_dict(self):
        return {"iteration": self.iter}

    def load_state_dict(self, state):
        self.iter = state["iteration"]


def _checkpointer(folder):
    trainer = _Trainer()
    return AtomicDetectionCheckpointer(torch.nn.Linear(3, 2), str(folder), trainer=trainer), trainer


def _save(folder, iteration, name=None):
    ckpt, trainer = _checkpointer(folder)
    trainer.iter = iteration
    with torch.no_grad():
        ckpt.model.weight.fill_(float(iteration))
    ckpt.save(name or f"model_{iteration:07d}", iteration=iteration)


def _resume(folder, caplog, weights=""):
    ckpt, trainer = _checkpointer(folder)
    with caplog.at_level(logging.INFO):
        ckpt.resume_or_load(weights, resume=True)
    return ckpt, trainer, caplog.text


def test_save_is_atomic_and_a_failed_save_keeps_the_previous_one(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert checkpoint_problem(str(tmp_path / "model_0000001.pth"), DETECTRON2_RESUME_KEYS) is None
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        _save(tmp_path, 3)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]  # no temporary left
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_resume_skips_a_truncated_newest_named_in_last_checkpoint(tmp_path, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 3)
    data = (tmp_path / "model_0000003.pth").read_bytes()
    (tmp_path / "model_0000003.pth").write_bytes(data[:len(data) // 2])  # a non-atomic writer killed
    ckpt, trainer, log = _resume(tmp_path, caplog)
    assert trainer.iter == 1 and float(ckpt.model.weight[0, 0].detach()) == 1.0 and ckpt.has_checkpoint()
    assert re.search(r"skipped \S*model_0000003\.pth: truncated", log), log


def test_resume_with_an_empty_last_checkpoint_takes_the_newest_usable(tmp_path, caplog):
    _save(tmp_path, 1)
    _save(tmp_path, 3)
    torch.save({"model": {}}, tmp_path / "model_0000005.pth")  # weights only: no trainer iteration
    (tmp_path / "last_checkpoint").write_text("")
    ckpt, trainer, log = _resume(tmp_path, caplog)
    assert trainer.iter == 3
    assert "last_checkpoint is empty" in log and re.search(r"skipped \S*model_0000005\.pth: not a training "
                                                           r"checkpoint: it has no 'trainer'", log), log
    _save(tmp_path, 7, name="model_final")  # the final save comes after every numbered one
    assert _resume(tmp_path, caplog)[1].iter == 7


def test_nothing_to_resume_loads_the_weights_and_all_unusable_stops(tmp_path, caplog):
    ckpt, trainer, log = _resume(tmp_path, caplog)
    assert not ckpt.has_checkpoint() and trainer.iter == 0 and "nothing to resume" in log
    (tmp_path / "model_0000001.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(NoCompleteCheckpoint, match=r"model_0000001\.pth: not loadable.*MODEL.WEIGHTS PATH"):
        _resume(tmp_path, caplog)



def test_train_net_output_dir_that_is_a_file_is_named(tmp_path):
    from tool_loader import load_tool
    train_net = load_tool("train_net")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    args = train_net.default_argument_parser().parse_args([
        "--config-file", os.path.join(REPO, "configs", "detectron2", "panoptic_fpn_R_50_synthetic_hgru_crbp.yaml"),
        "OUTPUT_DIR", str(a_file), "DATASETS.SYNTHETIC_PANOPTIC_ROOT", ""])
    with pytest.raises(SystemExit, match=rf"error: OUTPUT_DIR {re.escape(str(a_file))}: the path is a file, not a folder"):
        train_net.setup(args)

# ------------------------------------------------------------------------ tools/train_net.py, SIGKILLed
TINY = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "MODEL.ROI_MASK_HEAD.HGRU.STEPS", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1000,)"]


def _complete(out_dir):
    if not os.path.isdir(out_dir):
        return {}
    return {int(m.group(1)): n for n in os.listdir(out_dir) for m in [re.match(r"^model_(\d+)\.pth$", n)]
            if m and checkpoint_problem(os.path.join(out_dir, n), DETECTRON2_RESUME_KEYS) is None}


@pytest.mark.slow
def test_sigkill_during_detectron2_training_loses_no_checkpoint(tmp_path):
    """3 SIGKILLs of ``tools/train_net.py --resume`` (two while a checkpoint exists only as its temporary
    file, one at a random instant), each followed by a resume; the 4th run must end at MAX_ITER."""
    gen = subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic_coco_panoptic.py"), "--out",
                          str(tmp_path / "data"), "--num-train", "8", "--num-val", "2", "--size", "64"],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]
    out_dir, log_path, max_iter = tmp_path / "out", tmp_path / "train.log", 10
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           os.path.join(REPO, "configs", "detectron2", "panoptic_fpn_R_50_synthetic_hgru_crbp.yaml"), "--resume",
           "OUTPUT_DIR", str(out_dir), "DATASETS.SYNTHETIC_PANOPTIC_ROOT", str(tmp_path / "data"),
           "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{SAVE_DELAY_ENV: "0.4"})
    rng = random.Random(int(os.environ.get("RV_FAULT_SEED", "15")))
    kills, saved, resumed = ["save", "random", "save"], -1, []
    for run in range(len(kills) + 1):
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
        start = saved
        text = lambda: log_path.read_text(errors="replace")  # noqa: E731
        if run < len(kills):
            # kill after this run has completed a save of its own, so every run makes progress
            sigkill_after_progress(proc, lambda: max(_complete(out_dir) or [-1]) > start, kills[run], out_dir, rng,
                                   text, progress_s=600, save_s=300, max_sleep_s=1.0)
        else:
            assert proc.wait(timeout=900) == 0, text()[-5000:]
        out = text()
        if run > 0:
            m = re.search(r"resume: resuming from \S*model_(\d+)\.pth", out)
            assert m, f"run {run} did not resume:\n{out[-3000:]}"
            resumed.append(int(m.group(1)))
            assert resumed[-1] >= start, (resumed, start)          # no completed save lost
            assert "took over" in out                             # the killed run's lock
        saved = max([saved] + list(_complete(out_dir)))
        marker = out_dir / "last_checkpoint"
        if marker.exists():  # names a complete file whenever it exists
            assert checkpoint_problem(str(out_dir / marker.read_text().strip()), DETECTRON2_RESUME_KEYS) is None
    final = torch.load(out_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["trainer"]["iteration"] == max_iter - 1
    assert (out_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert not [n for n in os.listdir(out_dir) if is_temporary(n) or n == "train.lock"]
    print(f"\n{len(kills)} kills ({kills}), resumed from iterations {resumed}")
