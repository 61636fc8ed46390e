"""Pathfinder generator, dataset and the hGRU Pathfinder model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rv_plugins.datasets.pathfinder import (PathfinderConfig, PathfinderDataset, pathfinder_sample,
                                            save_sample_grid)
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
from rv_plugins.solvers.fixed_point import MODES


pytestmark = pytest.mark.usefixtures("one_thread")


def test_deterministic_by_seed_and_index():
    cfg = PathfinderConfig(image_size=64, length=14)
    first, again = pathfinder_sample(cfg, 3, 7), pathfinder_sample(cfg, 3, 7)
    np.testing.assert_array_equal(first.img, again.img)
    np.testing.assert_array_equal(first.mask, again.mask)
    for other in (pathfinder_sample(cfg, 3, 8), pathfinder_sample(cfg, 4, 7)):
        assert not np.array_equal(first.img, other.img)


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("length", [14, 20, 25])
def test_every_paper_length_renders_at_every_size(size, length):
    sample = pathfinder_sample(PathfinderConfig(image_size=size, length=length), 0, length)
    assert sample.img.shape == sample.mask.shape == (size, size)
    assert sample.img.dtype == sample.mask.dtype == np.uint8
    assert set(np.unique(sample.mask)) == {0, 1}
    assert 0 < sample.mask.sum() < (sample.img > 0).sum()  # distractors add pixels
    assert bool((sample.img[sample.mask == 1] > 0).all())  # the target is drawn where labelled


def test_mask_touches_the_marker_and_grows_with_length():
    for index in range(5):
        short = pathfinder_sample(PathfinderConfig(image_size=64, length=6), 1, index)
        long = pathfinder_sample(PathfinderConfig(image_size=64, length=18), 1, index)
        for sample in (short, long):
            row, col = sample.marker
            assert sample.mask[row, col] == 1 and sample.img[row, col] == 255
            # the marker disk (radius 1.5) is all target
            assert sample.mask[row - 1:row + 2, col - 1:col + 2].all()
        assert long.mask.sum() > short.mask.sum()


def test_dataset_items_and_channels():
    cfg = PathfinderConfig(image_size=32, length=6, num_distractors=1, clutter_dashes=3)
    grey, rgb = PathfinderDataset(4, cfg, seed=5), PathfinderDataset(4, cfg, seed=5, channels=3)
    item, item_rgb = grey[2], rgb[2]
    assert item["img"].shape == (1, 32, 32) and item["img"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.long
    assert 0.0 <= float(item["img"].min()) and float(item["img"].max()) == 1.0
    assert item_rgb["img"].shape == (3, 32, 32)
    torch.testing.assert_close(item_rgb["img"][1], item["img"][0])
    assert len(grey) == 4
    with pytest.raises(IndexError):
        grey[4]
    with pytest.raises(ValueError, match="channels"):
        PathfinderDataset(4, cfg, channels=2)


def test_save_sample_grid(tmp_path):
    path = tmp_path / "grid.png"
    save_sample_grid(str(path), sizes=(32,), lengths=(6,))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", MODES)
def test_model_training_step_every_mode(mode):
    torch.manual_seed(0)
    data = PathfinderDataset(2, PathfinderConfig(image_size=16, length=4, num_distractors=1))
    img = torch.stack([data[i]["img"] for i in range(2)])
    mask = torch.stack([data[i]["mask"] for i in range(2)])
    model = PathfinderHGRU(channels=9, kernel_size=5, mode=mode, steps=3, lcp_lambda=0.1)
    logits, info = model(img)
    assert logits.shape == (2, 2, 16, 16)
    loss = F.cross_entropy(logits, mask)
    if mode in ("cbptt", "crbp"):
        assert info.lcp is not None and info.lcp > 0
        loss = loss + info.weighted_lcp
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.cell.w_inh.grad.abs().sum() > 0 and model.input_layer.conv.weight.grad.abs().sum() > 0
    if mode in ("rbp", "crbp"):
        assert info.neumann_terms is not None
    model.eval()
    with torch.no_grad():
        logits, info = model(img, steps=6)
    assert info.steps == 6 and torch.isfinite(logits).all()
