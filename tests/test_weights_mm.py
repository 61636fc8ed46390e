"""Weights in the toolkits (issue 13): the mm adapters load ``init_cfg`` through the one loader, our
checkpoints load in mmsegmentation's OWN tools and APIs under torch >= 2.6, and fine-tuning from an
ImageNet-style checkpoint saved at 224 loads every backbone tensor (positional embedding resized).

The slow tests run mmseg's scripts shipped in its package (``mmseg/.mim/tools/{train,test}.py``) and our
``tools/train.py`` as separate processes, so that nothing this test process registered helps them.
"""
import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch



REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "upernet_visiongru_ti_synthetic.py")
SMALL = dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 2, 1])
# the main-job config shrunk to seconds: 32x32 images, batch 2, no validation, checkpoint every iteration
TINY_OPTIONS = ["train_dataloader.batch_size=2", "train_dataloader.dataset.img_size=(32,32)",
                "model.data_preprocessor.size=(32,32)", "train_cfg.val_interval=1000000",
                "val_dataloader.dataset.num_samples=4", "val_dataloader.dataset.img_size=(32,32)",
                "default_hooks.checkpoint.interval=1", "default_hooks.logger.interval=1",
                "test_dataloader.dataset.num_samples=4", "test_dataloader.dataset.img_size=(32,32)"]


def _mmseg_tool(name):
    import mmseg
    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", f"{name}.py")
    if not os.path.isfile(path):
        pytest.skip(f"mmseg's {name}.py is not shipped in this install ({path})")
    return path


def _run(cmd, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def _derived_config(tmp_path, name, backbone: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""\
        _base_ = [{SYNTHETIC!r}]
        model = dict(backbone=dict({backbone}))
        """))
    return str(path)


def _backbone(state):
    sd = state.get("state_dict", state)
    return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}


def _history_meta():
    """An mmengine message hub's state, as every mmengine checkpoint carries it (HistoryBuffer etc.)."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance("weights_mm_test")
    hub.update_scalar("train/loss", 1.5)
    hub.update_info("iter", 7)
    return dict(message_hub=hub.state_dict(), epoch=300, iter=7)


# --------------------------------------------------------------------------- adapters (fast)
@pytest.mark.parametrize("toolkit", ["mmseg", "mmpretrain"])
def test_adapter_loads_init_cfg_when_the_runner_initialises(tmp_path, toolkit):
    pytest.importorskip("mmseg")
    from mmengine.registry import init_default_scope
    if toolkit == "mmseg":
        import rv_plugins.mmseg  # noqa: F401
        from mmseg.registry import MODELS
    else:
        pytest.importorskip("mmpretrain")
        import rv_plugins.mmpretrain  # noqa: F401
        from mmpretrain.registry import MODELS
    init_default_scope(toolkit)
    from rv_plugins.backbones.visiongru import VisionGRU
    src = VisionGRU(SMALL, preset="paper", img_size=32)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = str(tmp_path / "ckpt.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()},
                "meta": _history_meta()}, path)
    model = MODELS.build(dict(type="VisionGRU", arch=SMALL, preset="paper", img_size=64,
                              init_cfg=dict(type="Pretrained", checkpoint=path, prefix="backbone.")))
    assert not torch.equal(model.stem.conv1.conv.weight, src.stem.conv1.conv.weight)  # lazy, as mmengine
    assert not model.is_init  # so that mmengine's BaseModule.init_weights calls ours
    model.init_weights()
    assert model.is_init
    for k, v in src.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(model.state_dict()[k], v), k
    assert model.pos_embed.shape[2:] == (16, 16)  # resized from 8x8

    bad = MODELS.build(dict(type="VisionGRU", arch=dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
                            init_cfg=dict(type="Pretrained", checkpoint=path)))
    with pytest.raises(ValueError, match="none of its"):
        bad.init_weights()
    other = MODELS.build(dict(type="VisionGRU", arch=SMALL,
                              init_cfg=dict(type="Constant", layer="Linear", val=0.25, bias=0.0)))
    other.init_weights()  # mmengine's initialisers still work through the adapter
    assert torch.all(other.stages[0].blocks[0].mlp.fc1.weight == 0.25)


@pytest.mark.parametrize("adapter", ["rv_plugins.mmseg", "rv_plugins.mmpretrain"])
def test_importing_an_adapter_makes_mmengine_checkpoints_loadable(tmp_path, adapter):
    """In a fresh process: torch >= 2.6 refuses an mmengine checkpoint; after importing the adapter it
    loads, and a checkpoint asking for any other getattr is still refused."""
    pytest.importorskip("mmpretrain" if adapter.endswith("mmpretrain") else "mmseg")
    script = textwrap.dedent(f"""
        import torch
        from mmengine.logging import MessageHub
        hub = MessageHub.get_instance('t'); hub.update_scalar('train/loss', 1.0)
        torch.save({{'state_dict': {{'w': torch.ones(2)}}, 'meta': {{'message_hub': hub.state_dict()}}}}, 'c.pth')
        class Sneaky:
            def __reduce__(self):
                return (getattr, (torch.Tensor, 'add_'))
        torch.save({{'x': Sneaky()}}, 'sneaky.pth')
        try:
            torch.load('c.pth'); print('BEFORE: loaded')
        except Exception as e:
            print('BEFORE: refused', type(e).__name__)
        import {adapter}
        ckpt = torch.load('c.pth')
        print('AFTER: loaded', ckpt['meta']['message_hub']['log_scalars']['train/loss'].mean())
        try:
            torch.load('sneaky.pth'); print('SNEAKY: loaded')
        except Exception as e:
            print('SNEAKY: refused', type(e).__name__)
    """)
    out = _run([sys.executable, "-c", script], cwd=str(tmp_path))
    assert "BEFORE: refused UnpicklingError" in out and "AFTER: loaded 1.0" in out
    assert "SNEAKY: refused UnpicklingError" in out


# --------------------------------------------------------------------------- toolkits' own tools (slow)
@pytest.mark.slow
def test_finetuning_from_an_in1k_checkpoint_at_224_loads_every_backbone_tensor(tmp_path):
    """An mmpretrain-style VisionGRU-Ti checkpoint (paper preset, 56x56 positional embedding, message hub)
    -> 2 iterations of the synthetic UperNet at 32x32 with our tools/train.py, lr 0 so that the weights
    stay as loaded: every backbone tensor equals the checkpoint's, pos_embed its bicubic resize."""
    pytest.importorskip("mmseg")
    from rv_plugins.backbones.visiongru import VisionGRU
    from rv_plugins.utils.checkpoint import read_checkpoint, resize_pos_embed
    src = VisionGRU("tiny", preset="paper", img_size=224)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {"backbone." + k: v for k, v in src.state_dict().items()}
    state.update({"head.fc.weight": torch.randn(1000, 576), "head.fc.bias": torch.zeros(1000)})
    in1k = str(tmp_path / "visiongru_ti_in1k_epoch_300.pth")
    torch.save({"state_dict": state, "meta": _history_meta()}, in1k)

    config = _derived_config(tmp_path, "finetune.py", f"preset='paper', init_cfg=dict(_delete_=True, "
                                                      f"type='Pretrained', checkpoint={in1k!r}, prefix='backbone.')")
    work = tmp_path / "work"
    log = _run([sys.executable, os.path.join(REPO, "tools", "train.py"), config, "--work-dir", str(work),
                "--cfg-options", "train_cfg.max_iters=2", "optim_wrapper.optimizer.lr=0.0",
                "model.backbone.img_size=32", *TINY_OPTIONS], cwd=str(tmp_path))
    total = len(src.state_dict())
    assert re.search(rf"VisionGRU: loaded {total}/{total} tensors from .*, prefix 'backbone.': resized 1 "
                     r"\(pos_embed\), missing 0, unexpected 0, shape-mismatched 0", log), log[-3000:]
    trained = _backbone(read_checkpoint(str(work / "iter_2.pth")))
    assert set(trained) == set(src.state_dict())
    for k, v in src.state_dict().items():
        expected = resize_pos_embed(v, (8, 8)) if k == "pos_embed" else v
        assert torch.equal(trained[k], expected), f"{k} did not come from the checkpoint"


@pytest.mark.slow
def test_our_checkpoints_in_mmsegs_own_train_resume_test_and_init_model(tmp_path):
    """Our tools/train.py writes a checkpoint; it is init_cfg=Pretrained for mmseg's OWN train.py; that
    run is resumed with mmseg's train.py --resume, evaluated with mmseg's test.py and loaded with
    mmseg.apis.init_model, each in its own process under torch >= 2.6's weights-only loading."""
    pytest.importorskip("mmseg")
    ours = tmp_path / "ours"
    _run([sys.executable, os.path.join(REPO, "tools", "train.py"), SYNTHETIC, "--work-dir", str(ours),
          "--cfg-options", "train_cfg.max_iters=1", "model.backbone.img_size=32", *TINY_OPTIONS], cwd=str(tmp_path))
    our_ckpt = str(ours / "iter_1.pth")
    assert "HistoryBuffer" in repr(torch.load(our_ckpt, weights_only=False)["message_hub"])  # what torch refuses

    config = _derived_config(tmp_path, "from_ours.py",
                             f"init_cfg=dict(_delete_=True, type='Pretrained', checkpoint={our_ckpt!r}, "
                             "prefix='backbone.')")
    work = tmp_path / "mmseg"
    train, test = _mmseg_tool("train"), _mmseg_tool("test")
    log = _run([sys.executable, train, config, "--work-dir", str(work), "--cfg-options", "train_cfg.max_iters=2",
                "model.backbone.img_size=32", *TINY_OPTIONS], cwd=str(tmp_path))
    assert re.search(r"VisionGRU: loaded (\d+)/\1 tensors from", log), log[-3000:]
    assert os.path.isfile(work / "iter_2.pth")

    log = _run([sys.executable, train, config, "--work-dir", str(work), "--resume", "--cfg-options",
                "train_cfg.max_iters=3", "model.backbone.img_size=32", *TINY_OPTIONS], cwd=str(tmp_path))
    assert re.search(r"resumed epoch: \d+, iter: 2", log), log[-3000:]
    from rv_plugins.utils.checkpoint import read_checkpoint
    assert read_checkpoint(str(work / "iter_3.pth"))["meta"]["iter"] == 3

    log = _run([sys.executable, test, config, str(work / "iter_3.pth"), "--work-dir", str(tmp_path / "test"),
                "--cfg-options", "model.backbone.img_size=32", *TINY_OPTIONS], cwd=str(tmp_path))
    assert re.search(r"mIoU: [\d.]+", log), log[-3000:]

    script = textwrap.dedent(f"""
        import torch
        from mmseg.apis import init_model, inference_model
        model = init_model({config!r}, {str(work / 'iter_3.pth')!r}, device='cpu')
        saved = torch.load({str(work / 'iter_3.pth')!r})['state_dict']
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k in saved)
        import numpy as np
        result = inference_model(model, np.zeros((32, 32, 3), dtype=np.uint8))
        print('INIT_MODEL OK', tuple(result.pred_sem_seg.data.shape))
    """)
    assert "INIT_MODEL OK (1, 32, 32)" in _run([sys.executable, "-c", script], cwd=str(tmp_path))


# --------------------------------------------------------------------------- Detectron2 (fast)
def test_detectron2_backbones_load_pretrained_through_the_loader(tmp_path):
    pytest.importorskip("detectron2")
    import rv_plugins.detectron2  # noqa: F401  (first: installs the stand-in for detectron2._C if needed)
    from detectron2.modeling import build_backbone

    from rv_plugins.backbones.visiongru import VisionGRU
    from rv_plugins.detectron2.config import get_cfg
    synthetic = os.path.join(REPO, "configs", "detectron2", "panoptic_fpn_R_50_synthetic_hgru_crbp.yaml")
    src = VisionGRU("tiny", preset="paper", img_size=224)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    path = str(tmp_path / "in1k.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    opts = ["MODEL.BACKBONE.NAME", "build_visiongru_fpn_backbone", "MODEL.VISIONGRU.PRETRAINED", path,
            "MODEL.VISIONGRU.PRESET", "paper", "MODEL.VISIONGRU.IMG_SIZE", "64"]
    body = build_backbone(get_cfg(synthetic, opts)).bottom_up.body
    for k, v in src.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(body.state_dict()[k], v), k
    assert body.pos_embed.shape[2:] == (16, 16)
    torch.save({"state_dict": {"teacher." + k: v for k, v in src.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="none of its"):
        build_backbone(get_cfg(synthetic, opts))
