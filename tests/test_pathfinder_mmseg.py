"""mmseg glue of the Pathfinder experiment: configs build, the dataset / transform render correct
samples, one runner iteration trains (with ``loss_lcp`` in the LCP modes) and evaluates."""
import glob
import os

import numpy as np
import pytest
import torch

from rv_plugins.openmmlab import runner as mr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs", "pathfinder")
MODE_CONFIGS = {mode: os.path.join(CONFIG_DIR, f"hgru_{mode}_pathfinder32.py")
                for mode in ("bptt", "cbptt", "rbp", "crbp")}


pytestmark = pytest.mark.usefixtures("one_thread")


def _registries():
    from mmengine.registry import init_default_scope
    init_default_scope("mmseg")
    import rv_plugins.mmseg  # noqa: F401  (registers the Pathfinder modules)
    from mmseg.registry import DATASETS, MODELS, TRANSFORMS
    return DATASETS, MODELS, TRANSFORMS


def test_pathfinder_configs_exist_and_differ_only_in_mode():
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))
    expected = ["hgru_pathfinder32_base.py"] + [os.path.basename(p) for p in MODE_CONFIGS.values()]
    assert found == sorted(expected)
    base = mr.load_config(os.path.join(CONFIG_DIR, "hgru_pathfinder32_base.py")).to_dict()
    for mode, path in MODE_CONFIGS.items():
        cfg = mr.load_config(path).to_dict()
        assert cfg["model"]["backbone"]["mode"] == mode
        cfg["model"]["backbone"]["mode"] = base["model"]["backbone"]["mode"]
        assert cfg == base, f"{path} changes more than model.backbone.mode"


@pytest.mark.parametrize("mode", sorted(MODE_CONFIGS))
def test_every_pathfinder_config_builds(mode):
    cfg = mr.load_config(MODE_CONFIGS[mode])
    assert cfg.default_scope == "mmseg"
    assert "rv_plugins.mmseg" in cfg.custom_imports["imports"]
    assert cfg.custom_imports["allow_failed_imports"] is False
    _, MODELS, _ = _registries()
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "RecurrentSegmentor"
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    assert model.backbone.solver.mode == mode
    # the authors' Pathfinder penalty scale (mainclean.py: penalty.mean() * 10)
    solver = model.backbone.solver
    assert (solver.lcp_reduction, solver.lcp_weight, solver.lcp_lambda) == ("mean", 10.0, 0.9)


def test_dataset_and_transform_yield_images_with_their_target_masks():
    DATASETS, _, TRANSFORMS = _registries()
    from rv_plugins.datasets.pathfinder import PathfinderConfig, pathfinder_sample
    pipeline = [dict(type="LoadPathfinderSample"), dict(type="PackSegInputs")]
    data = DATASETS.build(dict(type="PathfinderSegDataset", num_samples=3, image_size=32, length=3,
                               num_distractors=1, seed=7, pipeline=pipeline))
    assert len(data) == 3 and data.metainfo["classes"] == ("background", "contour")
    item = data[1]
    img, label = item["inputs"], item["data_samples"].gt_sem_seg.data
    assert img.shape == (1, 32, 32) and img.dtype == torch.uint8
    assert label.shape == (1, 32, 32)
    assert set(np.unique(label.numpy())) == {0, 1}
    assert bool((img[label == 1] == 255).all()), "a target pixel is not bright"
    assert bool((img == 255).sum() > (label == 1).sum()), "the distractor is missing from the image"
    reference = pathfinder_sample(PathfinderConfig(image_size=32, length=3, num_distractors=1), 7, 1)
    assert np.array_equal(img[0].numpy(), reference.img)
    assert np.array_equal(label[0].numpy(), reference.mask)
    rgb = TRANSFORMS.build(dict(type="LoadPathfinderSample"))(
        dict(pathfinder=dict(data.get_data_info(0)["pathfinder"], channels=3)))
    assert rgb["img"].shape == (32, 32, 3) and rgb["gt_seg_map"].shape == (32, 32)
    with pytest.raises(KeyError, match="PathfinderSegDataset"):
        TRANSFORMS.build(dict(type="LoadPathfinderSample"))(dict(img_path="x.png"))
    with pytest.raises(ValueError, match="pathfinder_cfg"):
        DATASETS.build(dict(type="PathfinderSegDataset", pathfinder_cfg=dict(dash_len=2)))


def _tiny_cfg(mode, work_dir):
    """32 px images, batch 2, 2 recurrent steps, one iteration, a 2-image validation."""
    return mr.load_config(MODE_CONFIGS[mode], {
        "work_dir": str(work_dir), "experiment_name": f"tiny_{mode}",
        "train_cfg.max_iters": 1, "train_cfg.val_interval": 1,
        "train_dataloader.batch_size": 2, "val_dataloader.batch_size": 2,
        "train_dataloader.dataset.image_size": 32, "train_dataloader.dataset.length": 3,
        "val_dataloader.dataset.image_size": 32, "val_dataloader.dataset.length": 3,
        "val_dataloader.dataset.num_samples": 2, "model.backbone.steps": 2,
        "model.backbone.kernel_size": 3, "default_hooks.logger.interval": 1,
        "default_hooks.checkpoint.interval": 10 ** 6})


@pytest.mark.parametrize("mode", sorted(MODE_CONFIGS))
def test_one_runner_iteration_trains_and_logs_the_solver(mode, tmp_path):
    runner = mr.build_runner(_tiny_cfg(mode, tmp_path))
    cell = runner.model.backbone.cell
    before = {name: p.detach().clone() for name, p in cell.named_parameters()}
    runner.train()
    assert runner.iter == 1
    changed = [name for name, p in cell.named_parameters() if not torch.equal(before[name], p)]
    assert changed, "no hGRU parameter changed: the loss did not back-propagate into the cell"
    scalars = runner.message_hub.log_scalars
    assert "train/loss_ce" in scalars and "train/fixed_point_residual" in scalars
    assert ("train/loss_lcp" in scalars) == (mode in ("cbptt", "crbp"))
    assert ("train/lcp" in scalars) == (mode in ("cbptt", "crbp"))
    assert ("train/neumann_terms" in scalars) == (mode in ("rbp", "crbp"))
    assert ("train/rbp_unreliable" in scalars) == (mode in ("rbp", "crbp"))
    total = scalars["train/loss"].current()
    parts = scalars["train/loss_ce"].current() + (
        scalars["train/loss_lcp"].current() if "train/loss_lcp" in scalars else 0.0)
    assert total == pytest.approx(parts, rel=1e-5), "diagnostics leaked into the optimised loss"
    assert 0.0 <= scalars["val/mIoU"].current() <= 100.0


def test_lcp_term_is_part_of_the_backward(tmp_path):
    """With a tiny lambda the LCP is positive, and its gradient alone moves the cell."""
    _, MODELS, _ = _registries()
    cfg = _tiny_cfg("cbptt", tmp_path)
    cfg.model.backbone.lcp_lambda = 0.0
    model = MODELS.build(cfg.model)
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    imgs = (torch.rand(2, 1, 16, 16) > 0.8).float() * 255
    samples = [SegDataSample(gt_sem_seg=PixelData(data=torch.zeros(1, 16, 16, dtype=torch.long)))
               for _ in range(2)]
    losses = model.loss(model.data_preprocessor({"inputs": list(imgs), "data_samples": samples},
                                                True)["inputs"], samples)
    assert float(losses["loss_lcp"].detach()) > 0
    assert not losses["lcp"].requires_grad and not losses["fixed_point_residual"].requires_grad
    losses["loss_lcp"].backward()
    grad = model.backbone.cell.w_inh.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_readout_prior_and_input_scale_of_the_plain_model():
    from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
    torch.manual_seed(0)
    model = PathfinderHGRU(channels=4, kernel_size=3, steps=2, mode="bptt", target_prior=0.02)
    img = (torch.rand(2, 1, 12, 12) > 0.7).float()
    logits, _ = model(img)
    # the read-out BatchNorm centres the features, so the mean target probability is the prior
    assert float(logits.softmax(1)[:, 1].mean()) == pytest.approx(0.02, abs=0.01)
    scaled = PathfinderHGRU(channels=4, kernel_size=3, steps=2, mode="bptt", input_scale=3.0)
    plain = PathfinderHGRU(channels=4, kernel_size=3, steps=2, mode="bptt")
    with pytest.raises(ValueError, match="input_scale 3.0 vs 1.0"):  # the weights record says they differ
        plain.load_state_dict(scaled.state_dict())
    plain.load_state_dict(dict(scaled.state_dict()))  # the same tensors without the record
    with torch.no_grad():
        assert not torch.allclose(scaled(img)[0], plain(img)[0])
        assert torch.allclose(scaled(img)[0], plain(img * 3.0)[0], atol=1e-5)
    with pytest.raises(ValueError, match="target_prior"):
        PathfinderHGRU(channels=4, kernel_size=3, num_classes=3, target_prior=0.1)


def test_unreliable_rbp_is_flagged_in_the_run_log(tmp_path):
    """An RBP step from a state far from its fixed point (1 step without a graph) is flagged: the
    scalar is 1 and the solver's warning is in the run's log file."""
    cfg = _tiny_cfg("rbp", tmp_path)
    cfg.model.backbone.steps = 2  # the residual after 2 steps from h0 = 0 is far above 0.05
    # mmengine names a run's logger by its start second and reuses an existing logger of that name
    # (with its log file): an earlier runner of this process started in the same second would get
    # this run's log lines. A name of its own gives this run its own log file.
    cfg.experiment_name = f"rbp_unreliable_{os.getpid()}_{tmp_path.name}"
    runner = mr.build_runner(cfg)
    runner.train()
    assert runner.message_hub.log_scalars["train/rbp_unreliable"].current() == 1.0
    logs = glob.glob(os.path.join(str(tmp_path), "**", "*.log"), recursive=True)
    text = "".join(open(path).read() for path in logs)
    assert "RBP gradient unreliable: fixed-point residual" in text
