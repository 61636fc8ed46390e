"""OpenMMLab integration: every config builds, the runner trains, checkpoints resume, DDP launches."""
import glob
import os
import subprocess
import sys

import pytest
import torch
from tool_loader import load_tool

from rv_plugins.openmmlab import runner as mr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MM_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
                    if os.sep + "detectron2" + os.sep not in p)
SYNTHETIC = os.path.join(REPO, "configs", "upernet_visiongru_ti_synthetic.py")


def _registry(cfg):
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == "mmseg":
        from mmseg.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


@pytest.mark.parametrize("path", MM_CONFIGS, ids=[os.path.relpath(p, REPO) for p in MM_CONFIGS])
def test_every_config_builds_its_model(path):
    cfg = mr.load_config(path)
    assert cfg.default_scope in ("mmseg", "mmpretrain")
    model = _registry(cfg).build(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 1000
    if "backbone" in cfg.model:
        assert type(model.backbone).__name__ == cfg.model.backbone.type


def _tiny_synthetic_cfg(work_dir, max_iters, name, **extra):
    """The main-job config shrunk to seconds: 32x32 images, batch 2, no validation."""
    return mr.load_config(SYNTHETIC, {
        "work_dir": str(work_dir), "experiment_name": name,
        "train_cfg.max_iters": max_iters, "train_cfg.val_interval": 10 ** 6,
        "train_dataloader.batch_size": 2, "model.data_preprocessor.size": (32, 32),
        "train_dataloader.dataset.img_size": (32, 32), "model.backbone.img_size": 32,
        "default_hooks.checkpoint.interval": 2, "default_hooks.logger.interval": 1,
        "param_scheduler": [dict(type="ConstantLR", factor=1.0, by_epoch=False)], **extra})


def test_one_upernet_training_iteration_then_tools_test(tmp_path):
    """One iteration through the runner; then tools/test.py evaluates the checkpoint it saved."""
    runner = mr.build_runner(_tiny_synthetic_cfg(tmp_path, 1, "one_iter", **{"default_hooks.checkpoint.interval": 1}))
    before = {k: v.clone() for k, v in runner.model.state_dict().items() if "backbone" in k and v.is_floating_point()}
    runner.train()
    assert runner.iter == 1
    after = runner.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no backbone weight changed"
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert torch.isfinite(torch.tensor(loss))

    metrics = load_tool("test").main([
        SYNTHETIC, str(tmp_path / "iter_1.pth"), "--work-dir", str(tmp_path / "test"), "--cfg-options",
        "test_dataloader.dataset.num_samples=4", "test_dataloader.dataset.img_size=(32,32)",
        "model.data_preprocessor.size=(32,32)", "model.backbone.img_size=32", "experiment_name=one_iter_test"])
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0


def test_save_then_resume_continues_from_the_same_iteration_and_weights(tmp_path):
    first = mr.build_runner(_tiny_synthetic_cfg(tmp_path, 2, "first"))
    first.train()
    saved = {k: v.clone() for k, v in first.model.state_dict().items()}
    assert os.path.isfile(tmp_path / "iter_2.pth")

    second = mr.build_runner(_tiny_synthetic_cfg(tmp_path, 3, "second", resume=True, load_from=None))
    second.load_or_resume()  # what --resume does at the start of train()
    assert second.iter == 2
    for k, v in second.model.state_dict().items():
        torch.testing.assert_close(v, saved[k], msg=f"{k} differs after resume")
    second.train()
    assert second.iter == 3


def test_missing_dataset_names_the_path_and_the_fix(tmp_path):
    cfg = mr.load_config(os.path.join(REPO, "configs", "upernet_visiongru_ti_ade20k.py"),
                         {"train_dataloader.dataset.data_root": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=r"nowhere' does not exist\. ADE20K .*ADEChallengeData2016.zip"):
        mr.check_datasets(cfg)


@pytest.mark.slow
def test_two_process_gloo_launch(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           os.path.join(REPO, "tools", "train.py"), SYNTHETIC, "--launcher", "pytorch", "--work-dir", str(tmp_path),
           "--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=1000000", "train_dataloader.batch_size=2",
           "model.data_preprocessor.size=(32,32)", "train_dataloader.dataset.img_size=(32,32)", "model.backbone.img_size=32",
           "default_hooks.logger.interval=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    logs = glob.glob(str(tmp_path / "*" / "*.log"))
    assert len(logs) == 1, logs  # rank 0 writes the log
    text = open(logs[0]).read()
    assert "Distributed launcher: pytorch" in text and "Distributed training: True" in text
    assert "Iter(train) [2/2]" in text
