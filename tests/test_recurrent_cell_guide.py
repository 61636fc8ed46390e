"""docs/adding_a_recurrent_cell.md works as written: its template registers a cell with one call, and the
plain head and Detectron2's head then build and train it; the registry's rules hold."""
import os
import re
import types

import pytest
import torch
import yaml

from rv_plugins.heads import HGRUMaskPredictor, cells

pytestmark = pytest.mark.usefixtures("one_thread")

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                     "adding_a_recurrent_cell.md")


def _blocks(language):
    with open(GUIDE, encoding="utf-8") as f:
        return re.findall(rf"```{language}\n(.*?)```", f.read(), flags=re.S)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The shipped cells only, and whatever a test registers is gone afterwards."""
    monkeypatch.setattr(cells.MASK_HEAD_CELLS, "_cells", dict(cells.MASK_HEAD_CELLS._cells))
    return cells.MASK_HEAD_CELLS


def _run_template():
    template, usage = _blocks("python")
    module = types.ModuleType("my_cells")  # the user's own file
    exec(compile(template, "my_cells.py", "exec"), module.__dict__)
    return module, usage


def test_the_guide_template_registers_and_trains_as_written(fresh_registry):
    assert "conv_gru" not in fresh_registry
    module, usage = _run_template()
    assert fresh_registry["conv_gru"].build is module.build_conv_gru
    torch.manual_seed(0)
    exec(compile(usage, "usage.py", "exec"), {})   # builds the head, runs C-RBP forward and backward
    with pytest.raises(KeyError, match="'conv_gru' is registered already"):
        _run_template()


def test_a_registered_cell_is_wired_by_its_flags(fresh_registry):
    module, _ = _run_template()

    @fresh_registry.register("conv_gru_on_features", features_as_drive=True, readout_norm=True)
    def build(settings):
        return module.ConvGRUCell(settings.channels, settings.kernel_size)

    plain = HGRUMaskPredictor(in_channels=16, num_classes=2, channels=8, norm_groups=4, cell="conv_gru", steps=3)
    assert isinstance(plain.input_proj, torch.nn.Conv2d) and plain.readout_norm is None
    direct = HGRUMaskPredictor(in_channels=16, num_classes=2, channels=16, norm_groups=4,
                               cell="conv_gru_on_features", steps=3)
    assert direct.input_proj is None and isinstance(direct.readout_norm, torch.nn.BatchNorm2d)
    logits, _ = direct(torch.randn(0, 16, 7, 7))     # no ROIs
    assert logits.shape == (0, 2, 14, 14)
    with pytest.raises(ValueError, match="channels=8 but the ROI features have 16"):
        HGRUMaskPredictor(in_channels=16, num_classes=2, channels=8, norm_groups=4, cell="conv_gru_on_features")
    with pytest.raises(ValueError, match=r"unknown cell 'gala'; choose one of \('pathfinder', 'coco', 'conv_gru'"):
        HGRUMaskPredictor(cell="gala")
    with pytest.raises(ValueError, match="odd size"):
        HGRUMaskPredictor(in_channels=16, num_classes=2, channels=8, norm_groups=4, cell="conv_gru", kernel_size=4)
    with pytest.raises(TypeError, match="decorate a function"):
        fresh_registry.register("not_callable")(42)
    with pytest.raises(KeyError, match="registered: "):
        fresh_registry["gala"]


def test_shipped_cells_are_registered_with_their_wiring():
    assert {"pathfinder", "coco"} <= set(cells.MASK_HEAD_CELLS)
    assert not cells.MASK_HEAD_CELLS["pathfinder"].features_as_drive
    assert cells.MASK_HEAD_CELLS["coco"].features_as_drive and cells.MASK_HEAD_CELLS["coco"].readout_norm
    with pytest.raises(ValueError, match="share_kernels is a 'pathfinder' option"):
        HGRUMaskPredictor(cell="coco", share_kernels=True)


def test_detectron2_builds_the_guide_cell_from_its_config(fresh_registry):
    pytest.importorskip("detectron2")  # the toolkit, not our adapter: its import errors must fail below
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import build_mask_head

    from rv_plugins.detectron2.config import get_cfg
    from rv_plugins.detectron2.mask_head import HGRUMaskHead

    _run_template()
    node = yaml.safe_load(_blocks("yaml")[0])["MODEL"]["ROI_MASK_HEAD"]
    opts = ["MODEL.ROI_MASK_HEAD.NAME", node["NAME"], "MODEL.ROI_MASK_HEAD.HGRU.STEPS", "3"]
    for key, value in node["HGRU"].items():
        opts += [f"MODEL.ROI_MASK_HEAD.HGRU.{key}", str(value)]
    head = build_mask_head(get_cfg(None, opts), ShapeSpec(channels=256, width=14, height=14))
    assert isinstance(head, HGRUMaskHead) and type(head.predictor.cell).__name__ == "ConvGRUCell"
    assert head.predictor.channels == 64
